"""Where the UI's jobs come from: the create operator's XComs, and the services' job lists.

A job belongs to this deployment when a :class:`~airflow_provider_finetune.operators.finetune.FineTuningJobOperator`
task pushed its ``job_id`` XCom. Its connection is not recorded by the operator, so it is found by listing the
jobs of every ``finetune`` connection this process can enumerate (the metadata database's and ``AIRFLOW_CONN_*``
variables), one page at a time, until every wanted job is seen: opening the page costs a few list calls per
connection, never one request per job. A job that ended keeps the status its task recorded; only jobs still
on their way are read from the services, and the answer is kept a few seconds for every user of the process.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.core import statuses

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import FineTuningJob

__all__ = ["CREATE_OPERATORS", "Directory", "JobRecord", "load_records", "newest_first", "rendered_request"]

#: The operator classes whose ``job_id`` XCom is a job they created (the job-action operators push one too).
CREATE_OPERATORS: frozenset[str] = frozenset({"FineTuningJobOperator"})
#: XComs a create task may push with the job's cost: the reported price first, then an estimate. The provider
#: ships no price table, so the list shows a cost only where the deployment pushed one.
COST_KEYS = ("total_price", "estimated_cost")
#: The XComs of a create task that the list shows (``checkpoints`` is left out: it can be large).
RECORDED_KEYS = ("job_id", "finetune_conn_id", "status", "fine_tuned_model", "trained_tokens", *COST_KEYS)
#: Page size of a job list call.
PAGE = 100
#: Pages of one connection's job list read at most while looking for jobs.
MAX_PAGES = 50
#: Seconds a live status read from a service is reused.
LIVE_TTL = 5.0
#: Seconds a job that no connection's list showed (deleted, or on a connection gone or refused) is not looked for.
ABSENT_TTL = 60.0
#: Seconds a connection's hook (and so its settings) is reused before the connection is looked up again.
HOOK_TTL = 60.0


@dataclass(frozen=True)
class JobRecord:
    """What the deployment recorded of one job: the task that created it and the XComs it pushed."""

    job_id: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    pushed_at: datetime | None
    recorded_status: str | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    ended_at: datetime | None = None
    #: The connection the task made the job through, as it recorded it (tasks of older versions did not).
    conn_id: str | None = None
    #: The job's reported or estimated cost, in the service's currency, where the create task pushed one.
    estimated_cost: float | None = None


@dataclass
class JobView:
    """One row of the list: the record, and what the service says of the job where it was asked."""

    record: JobRecord
    conn_id: str | None = None
    service: str | None = None
    status: str | None = None
    model: str | None = None
    fine_tuned_model: str | None = None
    created_at: float | None = None
    finished_at: float | None = None
    trained_tokens: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as the browser gets it (no connection settings: the connection's id and service only)."""
        r = self.record
        return {
            "job_id": r.job_id,
            "dag_id": r.dag_id,
            "run_id": r.run_id,
            "task_id": r.task_id,
            "map_index": r.map_index,
            "conn_id": self.conn_id,
            "service": self.service,
            "status": self.status,
            "model": self.model,
            "fine_tuned_model": self.fine_tuned_model or r.fine_tuned_model,
            "created_at": self.created_at if self.created_at is not None else _epoch(r.pushed_at),
            "finished_at": self.finished_at if self.finished_at is not None else _epoch(r.ended_at),
            "trained_tokens": self.trained_tokens if self.trained_tokens is not None else r.trained_tokens,
            "estimated_cost": r.estimated_cost,
        }


def newest_first(views: list[JobView]) -> list[dict[str, Any]]:
    """The rows of ``views``, newest first by the service's creation time where known.

    Services give creation times in whole seconds, so jobs made in one second (a mapped task's) tie: the one its
    task recorded later (the XCom's own time, to the microsecond) comes first, then the higher map index.
    """

    def newness(view: JobView) -> tuple[float, float, int, str]:
        r = view.record
        pushed = _epoch(r.pushed_at) or 0.0
        created = view.created_at if view.created_at is not None else pushed
        return (created, pushed, r.map_index, r.job_id)

    return [view.to_json() for view in sorted(views, key=newness, reverse=True)]


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _xcom_value(value: Any) -> Any:
    # Airflow 3 stores an XCom as JSON text in a JSON column: a string comes back JSON-encoded once more.
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _cost(values: Mapping[str, tuple[Any, Any]]) -> float | None:
    """The first of :data:`COST_KEYS` that holds a number (a bool or text is not a cost)."""
    for key in COST_KEYS:
        value = values.get(key, (None, None))[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def load_records(
    session: Session, *, readable_dags: Iterable[str] | None, dag_id: str | None = None
) -> list[JobRecord]:
    """Every job the create tasks of the readable DAGs recorded, newest first.

    :param readable_dags: the DAGs the user may read (``None``: every DAG).
    :param dag_id: only this DAG's jobs.
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from sqlalchemy import and_, select

    query = (
        select(
            XComModel.dag_id,
            XComModel.run_id,
            XComModel.task_id,
            XComModel.map_index,
            XComModel.key,
            XComModel.value,
            XComModel.timestamp,
        )
        .join(
            TaskInstance,
            and_(
                TaskInstance.dag_id == XComModel.dag_id,
                TaskInstance.run_id == XComModel.run_id,
                TaskInstance.task_id == XComModel.task_id,
                TaskInstance.map_index == XComModel.map_index,
            ),
        )
        .where(XComModel.key.in_(RECORDED_KEYS), TaskInstance.operator.in_(CREATE_OPERATORS))
    )
    if readable_dags is not None:
        query = query.where(XComModel.dag_id.in_(set(readable_dags)))
    if dag_id:
        query = query.where(XComModel.dag_id == dag_id)
    found: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for row in session.execute(query):
        entry = found.setdefault((row.dag_id, row.run_id, row.task_id, row.map_index), {})
        entry[row.key] = (_xcom_value(row.value), row.timestamp)
    records = []
    for (dag, run, task, index), values in found.items():
        job_id, pushed_at = values.get("job_id", (None, None))
        if not isinstance(job_id, str) or not job_id:
            continue
        status, ended_at = values.get("status", (None, None))
        tokens = values.get("trained_tokens", (None, None))[0]
        model = values.get("fine_tuned_model", (None, None))[0]
        conn_id = values.get("finetune_conn_id", (None, None))[0]
        records.append(
            JobRecord(
                job_id=job_id,
                dag_id=dag,
                run_id=run,
                task_id=task,
                map_index=index,
                pushed_at=pushed_at,
                recorded_status=status if isinstance(status, str) else None,
                fine_tuned_model=model if isinstance(model, str) else None,
                trained_tokens=tokens if isinstance(tokens, int) else None,
                ended_at=ended_at if isinstance(status, str) and status in statuses.TERMINAL else None,
                conn_id=conn_id if isinstance(conn_id, str) and conn_id else None,
                estimated_cost=_cost(values),
            )
        )
    records.sort(key=lambda r: (r.pushed_at.timestamp() if r.pushed_at else 0.0, r.job_id), reverse=True)
    return records


def rendered_request(session: Session, record: JobRecord) -> dict[str, Any] | None:
    """The create task's rendered template fields: the request the job was made with (as the UI shows them)."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from sqlalchemy import select

    fields = session.scalar(
        select(RTIF.rendered_fields).where(
            RTIF.dag_id == record.dag_id,
            RTIF.run_id == record.run_id,
            RTIF.task_id == record.task_id,
            RTIF.map_index == record.map_index,
        )
    )
    return dict(fields) if isinstance(fields, Mapping) else None


def environment_connections(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``finetune`` connections defined by ``AIRFLOW_CONN_*`` variables (JSON or URI)."""
    found = []
    for name, value in (os.environ if environ is None else environ).items():
        if not name.startswith("AIRFLOW_CONN_"):
            continue
        text = value.strip()
        if text.startswith("{"):
            try:
                kind = json.loads(text).get("conn_type")
            except (ValueError, AttributeError):
                continue
        else:
            kind = text.split(":", 1)[0].replace("-", "_")
        if kind == "finetune":
            found.append(name.removeprefix("AIRFLOW_CONN_").lower())
    return found


def database_connections(session: Session) -> list[str]:
    """The ``finetune`` connections of the metadata database."""
    from airflow.models import Connection
    from sqlalchemy import select

    return list(session.scalars(select(Connection.conn_id).where(Connection.conn_type == "finetune")))


@dataclass
class _Seen:
    """A job as a service's list showed it, and when."""

    conn_id: str
    job: FineTuningJob
    at: float


@dataclass
class Directory:
    """Which connection each job lives on, and the jobs' latest states, shared by every request of the process.

    :param clock: seconds (monotonic), injectable for tests.
    """

    clock: Any = time.monotonic
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _hooks: dict[str, tuple[float, FineTuningHook]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Jobs no connection's list showed, and when that was found (not looked for again for :data:`ABSENT_TTL`).
    _absent: dict[str, float] = field(default_factory=dict)
    #: List calls sent so far (the benchmark and the tests read it).
    list_calls: int = 0

    def hook(self, conn_id: str) -> FineTuningHook:
        """The connection's hook, made again when older than :data:`HOOK_TTL` (a changed connection is seen)."""
        from airflow_provider_finetune.hooks.finetune import FineTuningHook

        now = self.clock()
        with self._lock:
            made = self._hooks.get(conn_id)
            if made is None or now - made[0] > HOOK_TTL:
                made = self._hooks[conn_id] = (now, FineTuningHook(conn_id))
        return made[1]

    def service_of(self, conn_id: str) -> str | None:
        """The connection's service label, or ``None`` when the connection cannot be read."""
        try:
            return self.hook(conn_id).backend.label
        except Exception:
            return None

    def connection_of(self, job_id: str) -> str | None:
        """The connection a job was seen on, if it was."""
        seen = self._seen.get(job_id)
        return seen.conn_id if seen else None

    def remember(self, conn_id: str, job: FineTuningJob) -> None:
        """Record a job read from a connection (after an action or a read of the job itself)."""
        with self._lock:
            self._seen[job.id] = _Seen(conn_id, job, self.clock())

    def locate(self, wanted: Iterable[str], connections: Iterable[str], *, live: Iterable[str] = ()) -> None:
        """Page through the connections' job lists until every wanted job is placed and every live one is fresh.

        :param wanted: jobs whose connection is needed.
        :param connections: the connections to look in, in order.
        :param live: jobs whose current status is needed (read again when older than :data:`LIVE_TTL`).
        """
        now = self.clock()
        with self._lock:

            def unplaced(job_id: str) -> bool:  # not seen, and not found missing from every list a moment ago
                return job_id not in self._seen and now - self._absent.get(job_id, -math.inf) > ABSENT_TTL

            missing = {j for j in wanted if unplaced(j)}
            # A job that has ended never changes: its last reading stays true, and it is never read again.
            stale = {j for j in live if unplaced(j)} | {
                j
                for j in live
                if j in self._seen and not self._seen[j].job.status.is_terminal() and now - self._seen[j].at > LIVE_TTL
            }
        todo = missing | stale
        if not todo:
            return
        # Where a stale job is known to live, look there first: usually one page answers for all of them.
        known = [self._seen[j].conn_id for j in stale if j in self._seen]
        order = list(dict.fromkeys([*known, *connections]))
        for conn_id in order:
            if not todo:
                break
            self._scan(conn_id, todo)
        with self._lock:
            for job_id in todo - self._seen.keys():  # on no connection's list: not walked for again for a while
                self._absent[job_id] = now

    def _scan(self, conn_id: str, todo: set[str]) -> None:
        from airflow_provider_finetune.exceptions import FineTuningError

        try:
            hook = self.hook(conn_id)
        except Exception:
            return
        after = None
        for _ in range(MAX_PAGES):
            try:
                page = hook.list_jobs(after=after, limit=PAGE)
            except (FineTuningError, ValueError, LookupError):
                return
            except Exception:  # a connection that cannot be read (bad settings, missing secret): skipped
                return
            self.list_calls += 1
            now = self.clock()
            with self._lock:
                for job in page.data:
                    self._seen[job.id] = _Seen(conn_id, job, now)
                    todo.discard(job.id)
            if not todo or not page.has_more or not page.data:
                return
            after = page.next_after  # the service's own cursor (Fireworks' and Bedrock's is a page token)
            if after is None:
                return

    def view(self, record: JobRecord) -> JobView:
        """A list row for the record: the service's view of the job where known, the record's otherwise."""
        seen = self._seen.get(record.job_id)
        view = JobView(record=record, status=record.recorded_status)
        if seen is None:
            return view
        job = seen.job
        recorded_end = record.recorded_status in statuses.TERMINAL if record.recorded_status else False
        return replace(
            view,
            conn_id=seen.conn_id,
            service=self.service_of(seen.conn_id),
            status=record.recorded_status if recorded_end else job.status.value,
            model=job.model,
            fine_tuned_model=job.fine_tuned_model,
            created_at=float(job.created_at) if job.created_at is not None else None,
            finished_at=float(job.finished_at) if job.finished_at is not None else None,
            trained_tokens=job.trained_tokens,
        )
