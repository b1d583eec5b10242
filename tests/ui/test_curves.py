"""A job's curves: from its result file (read through the hook, bounded, cached), else from its metrics events."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.plugins import curves
from airflow_provider_finetune.plugins.curves import ResultFiles, from_events, parse_results, thin

CSV = b"step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,2.5,0.5,,\n2,2.0,0.6,2.2,0.55\n"


def test_a_result_csv_becomes_one_point_per_row_named_as_the_events_name_them() -> None:
    assert parse_results(CSV) == [
        {"step": 1.0, "train_loss": 2.5, "train_mean_token_accuracy": 0.5},
        {"step": 2.0, "train_loss": 2.0, "train_mean_token_accuracy": 0.6, "valid_loss": 2.2,
         "valid_mean_token_accuracy": 0.55},
    ]  # fmt: skip


def test_rows_are_ordered_by_step_the_last_of_a_step_wins_and_no_number_draws_nothing() -> None:
    text = b"\xef\xbb\xbfstep,train_loss\n3,1.0\n1,nan\n3,0.5\nx,1\n2,inf\n"
    assert parse_results(text) == [{"step": 1.0}, {"step": 2.0}, {"step": 3.0, "train_loss": 0.5}]


@pytest.mark.parametrize("content", [b"loss,accuracy\n1,2\n", b"", b"\xff\xfe"])
def test_a_file_that_is_not_a_result_csv_is_refused(content: bytes) -> None:
    with pytest.raises((ValueError, UnicodeDecodeError)):
        parse_results(content)


def test_a_long_run_is_thinned_evenly_keeping_its_ends() -> None:
    points = [{"step": float(i)} for i in range(1, 12_001)]
    kept = thin(points, most=100)
    assert len(kept) == 100
    assert (kept[0]["step"], kept[-1]["step"]) == (1.0, 12_000.0)


def test_events_give_one_point_per_metrics_step() -> None:
    events = [
        SimpleNamespace(type="metrics", data={"step": 2, "train_loss": 1.0, "flag": True}),
        SimpleNamespace(type="message", data={"step": 9}),
        SimpleNamespace(type="metrics", data={"step": 1, "train_loss": 2.0}),
        SimpleNamespace(type="metrics", data={"step": 2, "train_loss": 0.9}),
    ]
    assert from_events(events) == [{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 0.9}]


class _Hook:
    """A hook whose files are given: counts the content downloads, fails where told."""

    def __init__(self, files: dict[str, bytes], *, size: int | None = None, fail: bool = False) -> None:
        self.files = files
        self.size = size
        self.fail = fail
        self.downloads = 0

    def get_file(self, file_id: str) -> Any:
        if self.fail:
            raise FineTuningError("the service did not answer")
        return SimpleNamespace(id=file_id, bytes=len(self.files[file_id]) if self.size is None else self.size)

    def get_file_content(self, file_id: str) -> bytes:
        self.downloads += 1
        return self.files[file_id]


def _job(*files: str) -> Any:
    return SimpleNamespace(id="ftjob-1", result_files=list(files))


METRICS = [SimpleNamespace(type="metrics", data={"step": 1, "train_loss": 3.0})]


def test_the_result_file_wins_and_is_downloaded_once() -> None:
    hook, cache = _Hook({"file-r": CSV}), ResultFiles()
    first = cache.curves("c", hook, _job("file-r"), METRICS)  # type: ignore[arg-type]
    assert (first.source, first.file_id, len(first.points)) == ("result_file", "file-r", 2)
    again = cache.curves("c", hook, _job("file-r"), METRICS)  # type: ignore[arg-type]
    assert again == first
    assert hook.downloads == 1


def test_a_file_too_large_is_not_downloaded_and_the_events_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _Hook({"file-r": CSV}, size=curves.MAX_RESULT_BYTES + 1)
    drawn = ResultFiles().curves("c", hook, _job("file-r"), METRICS)  # type: ignore[arg-type]
    assert (drawn.source, drawn.points) == ("events", [{"step": 1, "train_loss": 3.0}])
    assert hook.downloads == 0
    # A service that does not say the size: the content is measured once downloaded.
    monkeypatch.setattr(curves, "MAX_RESULT_BYTES", len(CSV) - 1)
    unsized = _Hook({"file-r": CSV})
    unsized.size = None
    assert ResultFiles().curves("c", unsized, _job("file-r"), METRICS).source == "events"  # type: ignore[arg-type]


def test_an_unreadable_file_falls_back_and_is_asked_for_again() -> None:
    hook, cache = _Hook({"file-r": CSV}, fail=True), ResultFiles()
    assert cache.curves("c", hook, _job("file-r"), METRICS).source == "events"  # type: ignore[arg-type]
    hook.fail = False
    assert cache.curves("c", hook, _job("file-r"), METRICS).source == "result_file"  # type: ignore[arg-type]
    bad = _Hook({"file-x": b"not,a,result\n1,2,3\n"})
    assert cache.curves("c", bad, _job("file-x"), []).source == "none"  # type: ignore[arg-type]
    cache.curves("c", bad, _job("file-x"), [])  # type: ignore[arg-type]
    assert bad.downloads == 1  # a file that is not a result CSV is not read again


def test_the_cache_keeps_its_size() -> None:
    hook, cache = _Hook({f"file-{i}": CSV for i in range(5)}), ResultFiles(size=3)
    for i in range(5):
        cache.points("c", hook, f"file-{i}")  # type: ignore[arg-type]
    cache.points("c", hook, "file-4")  # type: ignore[arg-type]
    cache.points("c", hook, "file-0")  # type: ignore[arg-type]
    assert hook.downloads == 6  # file-4 still kept, file-0 forgotten and read again


@pytest.mark.integration
def test_a_succeeded_jobs_curves_come_from_its_result_file_on_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook

    with EmulatorServer(EmulatorConfig(api_key="sk-curves", speed=200, seed=5)) as server:
        conn = {"conn_type": "finetune", "host": server.base_url, "password": "sk-curves"}
        monkeypatch.setenv("AIRFLOW_CONN_CURVES", json.dumps(conn))
        hook = FineTuningHook("curves")
        lines = "\n".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]})
            for i in range(12)
        )
        file_id = hook.upload_file(lines.encode(), filename="t.jsonl").id
        job = hook.create_job({"model": "gpt-4o-mini-2024-07-18", "training_file": file_id,
                               "hyperparameters": {"n_epochs": 10}})  # fmt: skip
        deadline = time.monotonic() + 30
        while not job.result_files:
            assert time.monotonic() < deadline, job.status
            time.sleep(0.1)
            job = hook.get_job(job.id)
        events = list(hook.iter_events(job.id, limit=100))
        drawn = ResultFiles().curves("curves", hook, job, events)
        rows = hook.get_file_content(job.result_files[0]).decode().splitlines()[1:]
        assert (drawn.source, drawn.file_id) == ("result_file", job.result_files[0])
        assert [p["step"] for p in drawn.points] == [float(r.split(",")[0]) for r in rows]
        assert len(drawn.points) > len(from_events(events))  # the events report every other step of 120
