"""The create operator under the service's quotas, against the emulator over real HTTP: a refused create waits
(deferred, or on the worker) and tries again through the once-only create, up to the deadline; max_active_jobs
waits for a free slot first; a final refusal fails at once, in one line, without retries."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_finetune.core.client import close_shared_async_clients
from airflow_provider_finetune.core.compat import AirflowFailException
from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator, task_tag
from airflow_provider_finetune.rules.once import TASK_TAG_KEY
from airflow_provider_finetune.triggers.finetune import FineTuningJobTrigger
from airflow_provider_finetune.triggers.quota import FineTuningQuotaTrigger
from tests.integration.conftest import API_KEY, Emulator, chat_lines
from tests.operators.conftest import FakeTI

try:
    from airflow.sdk.exceptions import TaskDeferred
except ImportError:  # Airflow 3.1
    from airflow.exceptions import TaskDeferred  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

CREATE = "POST /v1/fine_tuning/jobs"
MODEL = "gpt-4.1-nano-2025-04-14"
LIMITS = {"max_active_jobs": 0, "max_daily_jobs": 0, "refuse_fine_tuning": False, "reported_price": 0.0}


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    """Jobs that stay active for about half a minute: a blocker keeps its slot until the test cancels it."""
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, speed=1, seed=13)) as running:
        yield running


def limits(emulator: Emulator, **settings: Any) -> None:
    emulator.faults(**{**LIMITS, **settings})


@pytest.fixture
def emulator(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    conn = {"conn_type": "finetune", "host": server.base_url, "password": API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
    emulator = Emulator(server)
    emulator.reset()
    limits(emulator)
    yield emulator
    limits(emulator)
    hook = FineTuningHook()
    for job in hook.iter_jobs(limit=100):
        if not job.status.is_terminal():
            hook.cancel_job(job.id)


@pytest.fixture
def training_file(emulator: Emulator) -> str:
    return FineTuningHook().upload_file(chat_lines(), filename="train.jsonl").id


@pytest.fixture
def blocker(training_file: str) -> str:
    """Another DAG's active job on the base model."""
    return FineTuningHook().create_job({"model": MODEL, "training_file": training_file}).id


def operator(training_file: str, **kwargs: Any) -> FineTuningJobOperator:
    defaults: dict[str, Any] = {"task_id": "fine_tune", "model": MODEL, "training_file": training_file}
    return FineTuningJobOperator(**{**defaults, **kwargs})


class Lines:
    """A logger that keeps what the task said (the task logger does not reach pytest's capture)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _keep(self, message: str, *args: Any, **_: Any) -> None:
        self.lines.append(message % args if args else message)

    info = warning = debug = error = _keep

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> Lines:
    lines = Lines()
    monkeypatch.setattr(FineTuningJobOperator, "log", property(lambda self: lines))
    return lines


def fresh_ti() -> FakeTI:
    return FakeTI(run_id=f"test__{uuid.uuid4().hex}")


async def first_event(trigger: Any) -> dict[str, Any]:
    try:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger fired no event")
    finally:
        await close_shared_async_clients()


def our_jobs(ti: FakeTI) -> list[str]:
    tag = task_tag({"ti": ti})  # type: ignore[typeddict-item]
    return [job.id for job in FineTuningHook().iter_jobs(limit=100) if (job.metadata or {}).get(TASK_TAG_KEY) == tag]


async def test_a_refused_create_is_deferred_then_made_once(
    emulator: Emulator, training_file: str, blocker: str, log: Lines
) -> None:
    limits(emulator, max_active_jobs=1)
    ti = fresh_ti()
    task = operator(training_file, deferrable=True, quota_retry_interval=600, timeout=3600)
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({"ti": ti})  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    assert isinstance(trigger, FineTuningQuotaTrigger)
    assert deferred.value.method_name == "execute_after_quota"
    deadline = deferred.value.kwargs["deadline"]
    assert before + 3600 <= deadline <= time.time() + 3600
    _, kwargs = trigger.serialize()
    assert before + 600 <= kwargs["wake_at"] <= time.time() + 600
    assert kwargs["deadline"] == deadline
    assert "active fine-tuning jobs for the base model" in kwargs["reason"]
    assert API_KEY not in json.dumps(kwargs)
    assert "refused to create the job for its quota of active fine-tuning jobs for the base model" in log.text
    assert "trying again at" in log.text
    assert emulator.counters()["jobs_created"] == 1  # the blocker only
    assert "job_id" not in ti.xcoms

    FineTuningHook().cancel_job(blocker)
    trigger.wake_at = time.time()  # the next try is due
    event = await first_event(trigger)
    assert event["status"] == "ready"
    with pytest.raises(TaskDeferred) as waiting:
        task.execute_after_quota({"ti": ti}, event, deadline=deadline)  # type: ignore[arg-type]
    assert isinstance(waiting.value.trigger, FineTuningJobTrigger)
    assert our_jobs(ti) == [ti.xcoms["job_id"]]
    # Resumed once more (a lost event, a retried task): the job is reattached to, never made twice.
    with pytest.raises(TaskDeferred):
        task.execute_after_quota({"ti": ti}, event, deadline=deadline)  # type: ignore[arg-type]
    assert our_jobs(ti) == [ti.xcoms["job_id"]]
    assert emulator.counters()["jobs_created"] == 2


def test_on_the_worker_a_refused_create_is_tried_again_until_it_is_made(
    emulator: Emulator, training_file: str, blocker: str, log: Lines
) -> None:
    limits(emulator, max_active_jobs=1)
    freed = threading.Timer(0.8, FineTuningHook().cancel_job, args=(blocker,))
    freed.start()
    ti = fresh_ti()
    task = operator(training_file, quota_retry_interval=0.3, timeout=30, wait_for_completion=False)
    task.execute({"ti": ti})  # type: ignore[arg-type]
    freed.join()
    assert our_jobs(ti) == [ti.xcoms["job_id"]]
    assert emulator.requests_to(CREATE) >= 3  # the blocker, at least one refusal, the create
    assert emulator.counters()["jobs_created"] == 2
    assert log.text.count("refused to create the job for its quota") == emulator.requests_to(CREATE) - 2


def test_the_deadline_ends_a_quota_wait_saying_what_it_waited_for(
    emulator: Emulator, training_file: str, blocker: str
) -> None:
    limits(emulator, max_active_jobs=1)
    ti = fresh_ti()
    with pytest.raises(FineTuningError, match="deadline passed while waiting for the service's quota of active"):
        operator(training_file, quota_retry_interval=0.3, timeout=1.0).execute({"ti": ti})  # type: ignore[arg-type]
    assert our_jobs(ti) == []


def test_a_final_refusal_fails_at_once_in_one_line(emulator: Emulator, training_file: str) -> None:
    limits(emulator, refuse_fine_tuning=True)
    with pytest.raises(AirflowFailException) as refused:  # Airflow does not retry the task either
        operator(training_file, deferrable=True).execute({"ti": fresh_ti()})  # type: ignore[arg-type]
    text = str(refused.value)
    assert "\n" not in text
    assert "will not fine-tune for this account" in text
    assert "[insufficient_quota]" in text
    assert "not retried" in text
    assert emulator.requests_to(CREATE) == 1


async def test_max_active_jobs_waits_for_a_free_slot_before_creating(
    emulator: Emulator, training_file: str, blocker: str, log: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    ti = fresh_ti()
    task = operator(training_file, deferrable=True, max_active_jobs="1", quota_retry_interval=0.2)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({"ti": ti})  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    assert isinstance(trigger, FineTuningQuotaTrigger)
    assert trigger.max_active_jobs == 1
    assert f"Waiting for a free slot: 1 of at most 1 fine-tuning jobs are active on {MODEL}" in log.text
    assert emulator.requests_to(CREATE) == 1  # the blocker's: nothing was sent for this task

    import asyncio
    import threading

    # In the triggerer the connection is never read synchronously on the event loop (it would block it).
    sync_read = FineTuningHook.get_connection

    def off_the_loop_only(conn_id: str) -> Any:
        assert threading.current_thread() is not threading.main_thread(), "a sync connection read on the loop"
        return sync_read(conn_id)

    with monkeypatch.context() as patched:
        patched.setattr(FineTuningHook, "get_connection", staticmethod(off_the_loop_only))
        waiting = asyncio.ensure_future(first_event(trigger))
        await asyncio.sleep(0.7)
        assert not waiting.done()  # the slot is still taken: the trigger keeps looking
        await asyncio.to_thread(FineTuningHook().cancel_job, blocker)
        event = await asyncio.wait_for(waiting, timeout=10)
    assert event["status"] == "ready"
    with pytest.raises(TaskDeferred):
        await asyncio.to_thread(task.execute_after_quota, {"ti": ti}, event, deferred.value.kwargs["deadline"])
    assert our_jobs(ti) == [ti.xcoms["job_id"]]


def test_a_task_instance_with_an_active_job_reattaches_without_waiting(emulator: Emulator, training_file: str) -> None:
    ti = fresh_ti()
    operator(training_file, wait_for_completion=False).execute({"ti": ti})  # type: ignore[arg-type]
    first = ti.xcoms["job_id"]
    retry = FakeTI(run_id=ti.run_id, try_number=2)
    operator(training_file, wait_for_completion=False, max_active_jobs=1, deferrable=True).execute(
        {"ti": retry}  # type: ignore[arg-type]
    )
    assert retry.xcoms["job_id"] == first
    assert emulator.counters()["jobs_created"] == 1


def test_max_active_jobs_is_checked_before_anything_is_sent(emulator: Emulator, training_file: str) -> None:
    with pytest.raises(FineTuningError, match="max_active_jobs must be a whole number of 1 or more"):
        operator(training_file, max_active_jobs="0").execute({"ti": fresh_ti()})  # type: ignore[arg-type]
    assert emulator.requests_to(CREATE) == 0
