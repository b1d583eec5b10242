"""Crashes: a worker killed between the create call and its XCom, a triggerer process killed mid-wait, the
emulator stopped and started again (``--db``) in the middle of a job. Each ends in success with one job.

``tests/integration/test_operators.py`` already kills a worker at a moment that races the create (once the
emulator counted the job) and re-creates a trigger coroutine in the same process; these tests pin the
moments down and use real processes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_finetune.core.client import close_shared_async_clients
from airflow_provider_finetune.hooks.finetune import TASK_TAG_KEY, FineTuningHook
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator, task_tag
from tests.chaos.conftest import (
    MODEL,
    ROOT,
    EmulatorProcess,
    FakeTI,
    TaskDeferred,
    chat_lines,
    free_port,
    fresh_trigger,
    run_trigger,
    set_connection,
)
from tests.hook_doors import async_call, async_items
from tests.integration.conftest import Emulator

pytestmark = pytest.mark.integration

GET_JOB = "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}"
CANCEL = "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel"
# 12 examples, 50 epochs of batches of 1: 600 steps, the longest training the emulator simulates (120 s at
# speed 1), so that a crash lands in the middle of the job.
LONG = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}}


def operator(training_file: str, **kwargs: Any) -> FineTuningJobOperator:
    return FineTuningJobOperator(
        task_id="fine_tune", model=MODEL, training_file=training_file, method=LONG, poll_interval=0.2, **kwargs
    )


def defer(op: FineTuningJobOperator, ti: FakeTI) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": ti})  # type: ignore[arg-type]
    op.hook.close()
    return deferred.value


def finish(training_file: str, ti: FakeTI, event: dict[str, Any]) -> str | None:
    """``execute_complete`` on a fresh operator, as the worker that resumes the task runs it."""
    resumed = operator(training_file, deferrable=True)
    try:
        return resumed.execute_complete({"ti": ti}, event)  # type: ignore[arg-type]
    finally:
        resumed.hook.close()


def python(script: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], env=os.environ.copy(), cwd=ROOT, text=True, **kwargs
    )


def wait_for(condition: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_worker_killed_between_create_and_xcom_push_then_the_retry_defers_to_the_same_job(
    emulator: Emulator, training_file: str
) -> None:
    run_id = f"crash__{uuid.uuid4().hex}"
    # The worker dies the moment the create call has returned: before the first XCom is pushed.
    worker = python(
        f"""
        import os, signal
        from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
        from tests.operators.conftest import FakeTI

        class DiesAtFirstPush(FakeTI):
            def xcom_push(self, key, value):
                os.kill(os.getpid(), signal.SIGKILL)

        op = FineTuningJobOperator(task_id="fine_tune", model={MODEL!r}, training_file={training_file!r},
                                   method={LONG!r}, poll_interval=0.2)
        op.execute({{"ti": DiesAtFirstPush(run_id={run_id!r})}})
        """
    )
    assert worker.wait(timeout=60) == -signal.SIGKILL
    assert emulator.counters()["jobs_created"] == 1

    retry = FakeTI(run_id=run_id, try_number=2)
    deferred = defer(operator(training_file, deferrable=True), retry)
    (event,) = run_trigger(fresh_trigger(deferred))
    assert event["status"] == "succeeded"
    model = finish(training_file, retry, event)
    assert model is not None
    assert model.startswith(f"ft:{MODEL}:emulator:")
    counters = emulator.counters()
    assert counters["jobs_created"] == 1
    assert counters["requests"]["POST /v1/fine_tuning/jobs"] == 1
    job = FineTuningHook().get_job(retry.xcoms["job_id"])
    assert job.metadata[TASK_TAG_KEY] == task_tag({"ti": retry})  # type: ignore[typeddict-item]


def test_triggerer_process_killed_mid_wait_then_a_fresh_trigger_finishes_with_one_job(
    emulator: Emulator, training_file: str
) -> None:
    # The "triggerer": a process that builds the trigger from what the task sent (class path and JSON
    # kwargs, read from stdin) and runs it. It is started first, so that its imports take none of the job's time.
    triggerer = python(
        """
        import asyncio, importlib, json, sys
        from airflow_provider_finetune.triggers.finetune import FineTuningJobTrigger  # noqa: F401
        print("ready", flush=True)
        classpath, kwargs = json.loads(sys.stdin.readline())
        module, _, name = classpath.rpartition(".")
        trigger = getattr(importlib.import_module(module), name)(**kwargs)

        async def main():
            async for event in trigger.run():
                print("EVENT", json.dumps(event.payload), flush=True)

        asyncio.run(main())
        """,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert triggerer.stdin is not None
    assert triggerer.stdout is not None
    try:
        assert triggerer.stdout.readline().strip() == "ready"
        ti = FakeTI(run_id=f"crash__{uuid.uuid4().hex}")
        deferred = defer(operator(training_file, deferrable=True), ti)
        sent = emulator.counters()["total_requests"]
        triggerer.stdin.write(json.dumps(deferred.trigger.serialize()) + "\n")
        triggerer.stdin.flush()
        # Mid-wait: the trigger has polled (a poll reads the job and its events) at least twice.
        wait_for(lambda: emulator.counters()["total_requests"] >= sent + 4, what="the trigger's polls")
    finally:
        triggerer.send_signal(signal.SIGKILL)
        out, _ = triggerer.communicate(timeout=30)
    assert triggerer.returncode == -signal.SIGKILL
    assert "EVENT" not in out
    job_id = ti.xcoms["job_id"]
    assert not FineTuningHook().get_job(job_id).status.is_terminal()

    # Another triggerer picks the trigger up from the same serialized kwargs.
    (event,) = run_trigger(fresh_trigger(deferred))
    assert event["status"] == "succeeded"
    assert event["job_id"] == job_id
    model = finish(training_file, ti, event)
    assert model is not None
    counters = emulator.counters()
    assert counters["jobs_created"] == 1
    assert counters["requests"].get(CANCEL, 0) == 0  # a triggerer restart never cancels the job
    assert [j.id for j in FineTuningHook().iter_jobs(metadata={TASK_TAG_KEY: task_tag({"ti": ti})})] == [job_id]  # type: ignore[typeddict-item]


async def test_emulator_restarted_on_its_database_mid_job_the_deferred_wait_rides_it_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    key = "sk-restart-5ecret"
    service = EmulatorProcess(
        free_port(), key, "--db", str(tmp_path / "emu.db"), "--speed", "20", "--log-level", "info"
    )
    await asyncio.to_thread(service.start)
    # Few retries per poll, so that the outage is seen by the wait itself, which must not give up.
    set_connection(monkeypatch, "finetune_default", service.base_url, key, max_retries=2, timeout=5)
    try:
        hook = FineTuningHook()
        training_file = (await async_call(hook, "upload_file", chat_lines(), filename="train.jsonl")).id
        ti = FakeTI(run_id=f"crash__{uuid.uuid4().hex}")
        op = operator(training_file, deferrable=True, max_consecutive_errors=50)
        deferred = await asyncio.to_thread(defer, op, ti)
        job_id = ti.xcoms["job_id"]
        sent = service.counters()["total_requests"]
        waiting = asyncio.create_task(_events(fresh_trigger(deferred)))

        # Stop the service in the middle of the job: training, and the trigger has polled at least twice.
        async def mid_job() -> bool:
            polled = service.counters()["total_requests"] >= sent + 4
            return polled and (await hook.aget_job(job_id)).status.value == "running"

        await eventually(mid_job, "the job to be training and watched")
        before = await hook.aget_job(job_id)
        assert service.counters()["jobs_created"] == 1
        log = await asyncio.to_thread(service.stop, signal.SIGTERM)
        assert "Traceback" not in log
        await asyncio.sleep(2.0)  # down for a while: every poll now fails with "connection refused"
        assert not waiting.done()
        await asyncio.to_thread(service.start)

        events = await asyncio.wait_for(waiting, timeout=60)
        assert [e["status"] for e in events] == ["succeeded"]
        model = await asyncio.to_thread(finish, training_file, ti, events[0])
        assert model is not None
        after = await hook.aget_job(job_id)
        assert after.fine_tuned_model == model
        assert after.created_at == before.created_at
        # Exactly one job: the restarted service made none, and the tag finds the one made before.
        assert service.counters()["jobs_created"] == 0
        tagged = [j.id for j in await async_items(hook, "iter_jobs", metadata={TASK_TAG_KEY: task_tag({"ti": ti})})]  # type: ignore[typeddict-item]
        assert tagged == [job_id]
    finally:
        await close_shared_async_clients()
        service.stop(signal.SIGKILL)
    # The wait saw the outage (its polls failed, each after the hook's retries) and went on.
    out, err = capfd.readouterr()
    refused = [line for line in (out + err).splitlines() if f"Could not read job {job_id}" in line]
    assert refused, "the outage was never seen by the wait"
    assert all(f"127.0.0.1:{service.port}" in line and "ConnectError" in line for line in refused), refused


async def _events(trigger: Any) -> list[dict[str, Any]]:
    return [event.payload async for event in trigger.run()]


async def eventually(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in itertools.count():
        if await check():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
