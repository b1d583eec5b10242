"""A job's training curves: from its result file where the service gave one, from its metrics events otherwise.

Which source: a succeeded job's result file (OpenAI's ``result_files``: a CSV of ``step, train_loss,
train_accuracy, valid_loss, valid_mean_token_accuracy``) has one row for every step, written once the job
ended; metrics events may be sampled (a long job reports every few steps) and are read up to a cap. So the file
wins wherever a job has one that can be read within :data:`MAX_RESULT_BYTES`; a job still on its way, a
service that gives no file, a file that is too large or cannot be read or parsed, all draw from the events.

The file is read through the hook (the files content call), only after its size is known to be within bounds,
parsed here, and kept per connection and file id (a result file never changes): the browser gets the points,
never the file.
"""

from __future__ import annotations

import csv
import io
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import FineTuningJob

__all__ = ["MAX_POINTS", "MAX_RESULT_BYTES", "Curves", "ResultFiles", "from_events", "parse_results"]

#: The largest result file read (a row is about 60 bytes: some 140,000 steps).
MAX_RESULT_BYTES = 8 * 1024 * 1024
#: Most points of a curve sent to the browser; a longer run is thinned evenly, its first and last steps kept.
MAX_POINTS = 5000
#: Result files whose points are kept in memory.
CACHE_SIZE = 64
#: The result file's column names where they differ from the metrics events' (so both draw the same series).
_COLUMNS = {"train_accuracy": "train_mean_token_accuracy"}


@dataclass(frozen=True)
class Curves:
    """The points of a job's curves (one mapping per step, ascending) and where they came from.

    :param source: ``result_file``, ``events`` (or ``none`` when there are no points).
    :param file_id: the result file drawn, when ``source`` is ``result_file``.
    """

    points: list[dict[str, float]]
    source: str
    file_id: str | None = None


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None  # NaN and infinities draw nothing


def parse_results(content: bytes) -> list[dict[str, float]]:
    """The points of a result CSV, one per row with a numeric ``step``, ascending (a repeated step: the last row).

    :raises ValueError: when the file is not a CSV with a ``step`` column.
    """
    reader = csv.DictReader(io.StringIO(content.decode("utf-8-sig")))
    if not reader.fieldnames or "step" not in [name.strip() for name in reader.fieldnames]:
        raise ValueError("the result file has no step column")
    by_step: dict[float, dict[str, float]] = {}
    for row in reader:
        point: dict[str, float] = {}
        for name, text in row.items():
            if name is None or text is None:  # cells beyond the header, or missing ones
                continue
            value = _number(text.strip())
            if value is not None:
                point[_COLUMNS.get(name.strip(), name.strip())] = value
        step = point.get("step")
        if step is not None:
            by_step[step] = point
    return thin([by_step[step] for step in sorted(by_step)])


def from_events(events: Iterable[Any]) -> list[dict[str, float]]:
    """The points of a job's ``metrics`` events, one per step, ascending (the latest event of a step wins)."""
    by_step: dict[float, dict[str, float]] = {}
    for event in events:
        data = event.data or {}
        if event.type != "metrics" or not isinstance(data.get("step"), (int, float)):
            continue
        by_step[data["step"]] = {
            k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    return thin([by_step[step] for step in sorted(by_step)])


def thin(points: list[dict[str, float]], most: int = MAX_POINTS) -> list[dict[str, float]]:
    """At most ``most`` of ``points``, evenly spaced, the first and the last kept."""
    if len(points) <= most:
        return points
    last = len(points) - 1
    picked = sorted({round(i * last / (most - 1)) for i in range(most)})
    return [points[i] for i in picked]


@dataclass
class ResultFiles:
    """The parsed result files of the process, shared by every request (a file never changes once written)."""

    size: int = CACHE_SIZE
    _points: OrderedDict[tuple[str, str], list[dict[str, float]] | None] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Files downloaded so far (the tests read it).
    downloads: int = 0

    def points(self, conn_id: str, hook: FineTuningHook, file_id: str) -> list[dict[str, float]] | None:
        """The file's points, or ``None`` when it is too large, unreadable or not a result CSV.

        A file refused for its size or content is remembered as such; one the service did not answer for is
        asked for again next time.
        """
        from airflow_provider_finetune.exceptions import FineTuningError

        key = (conn_id, file_id)
        with self._lock:
            if key in self._points:
                self._points.move_to_end(key)
                return self._points[key]
        try:
            described = hook.get_file(file_id)
            if described.bytes is not None and described.bytes > MAX_RESULT_BYTES:
                found = None
            else:
                content = hook.get_file_content(file_id)
                self.downloads += 1
                found = parse_results(content) if len(content) <= MAX_RESULT_BYTES else None
        except FineTuningError:
            return None
        except (ValueError, UnicodeDecodeError, csv.Error):
            found = None
        with self._lock:
            self._points[key] = found
            while len(self._points) > self.size:
                self._points.popitem(last=False)
        return found

    def curves(self, conn_id: str, hook: FineTuningHook, job: FineTuningJob, events: Iterable[Any]) -> Curves:
        """The job's curves: its first readable result file's points, else its metrics events'."""
        for file_id in job.result_files or []:
            points = self.points(conn_id, hook, file_id)
            if points:
                return Curves(points, "result_file", file_id)
        points = from_events(events)
        return Curves(points, "events" if points else "none")
