"""The triggers at the HTTP layer: one event each, JSON-primitive kwargs, nothing blocking the loop."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.core.client import close_shared_async_clients
from airflow_provider_finetune.triggers.finetune import FineTuningCheckpointTrigger, FineTuningJobTrigger
from tests.hooks.conftest import SECRET, FakeAPI, checkpoint, event, job, page


@pytest.fixture(autouse=True)
async def fresh_clients():
    yield
    await close_shared_async_clients()


async def events_of(trigger) -> list[dict[str, Any]]:
    return [e.payload async for e in trigger.run()]


def test_serialize_is_json_primitives_without_secrets(connection: dict[str, Any]) -> None:
    trigger = FineTuningJobTrigger("ftjob-1", poll_interval=5, deadline=1e9, target_statuses=["running"])
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_finetune.triggers.finetune.FineTuningJobTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert SECRET not in json.dumps(kwargs)
    rebuilt = FineTuningJobTrigger(**kwargs)
    assert rebuilt.serialize() == (path, kwargs)
    ckpt = FineTuningCheckpointTrigger("ftjob-1", metric="valid_loss", threshold=0.5)
    path, kwargs = ckpt.serialize()
    assert FineTuningCheckpointTrigger(**kwargs).serialize() == (path, kwargs)


async def test_job_trigger_fires_once_on_success(connection: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="running"))
    api.on("GET", "fine_tuning/jobs", page([job(status="succeeded", fine_tuned_model="ft:x")]))
    api.on("GET", "fine_tuning/jobs/ftjob-1/events", page([event("ev-1", "Job started")]))
    trigger = FineTuningJobTrigger("ftjob-1", poll_interval=0.01)
    (payload,) = await events_of(trigger)
    assert payload["status"] == "succeeded"
    assert payload["job_id"] == "ftjob-1"
    assert "ft:x" in payload["message"]
    assert payload["last_event_id"] == "ev-1"


async def test_job_trigger_paused_keeps_waiting_until_deadline(connection: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="paused"))
    api.on("GET", "fine_tuning/jobs", page([job(status="paused")]))
    api.on("GET", "fine_tuning/jobs/ftjob-1/events", page([]))
    trigger = FineTuningJobTrigger("ftjob-1", poll_interval=0.05, deadline=time.time() + 1.0)
    (payload,) = await events_of(trigger)
    assert payload["status"] == "timeout"
    # A paused job is not an end: the wait kept polling until its deadline (at least twice, however busy the machine).
    polls = [r for r in api.sent() if r.url.path == "/v1/fine_tuning/jobs"]
    assert len(polls) >= 2


async def test_job_trigger_retries_transient_errors_then_gives_up(connection: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", "fine_tuning/jobs", httpx.Response(503, headers={"retry-after": "0"}))
    trigger = FineTuningJobTrigger("ftjob-1", poll_interval=0.0, max_consecutive_errors=2)
    (payload,) = await events_of(trigger)
    assert payload["status"] == "error"
    # each poll: the hook's own 1 + 3 retries (max_retries in the connection), then the trigger's 2 polls
    assert len(api.sent()) == 8


async def test_job_trigger_reports_a_missing_job_at_once(connection: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", "fine_tuning/jobs", page([job("ftjob-other")]))
    read = api.on("GET", "fine_tuning/jobs/ftjob-1", httpx.Response(404, json={"error": {"message": "No such job"}}))
    (payload,) = await events_of(FineTuningJobTrigger("ftjob-1", poll_interval=0.0))
    assert payload["status"] == "error"
    assert "No such job" in payload["message"]
    assert read.call_count == 1  # the list did not show it; read by id once, not retried


async def test_job_trigger_does_not_block_the_event_loop(
    connection: dict[str, Any], api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="running"))
    api.on(
        "GET",
        "fine_tuning/jobs",
        *[page([job(status="running")])] * 5,
        page([job(status="succeeded", fine_tuned_model="ft:x")]),
    )
    api.on("GET", "fine_tuning/jobs/ftjob-1/events", page([event("ev-1")]))
    # A first run imports what the connection lookup needs, as a triggerer has long done by then.
    api.on("GET", "fine_tuning/jobs/ftjob-0", job("ftjob-0", status="succeeded"))
    api.on("GET", "fine_tuning/jobs/ftjob-0/events", page([]))
    await events_of(FineTuningJobTrigger("ftjob-0", poll_interval=0.01))
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    caplog.set_level(logging.WARNING, logger="asyncio")
    (payload,) = await events_of(FineTuningJobTrigger("ftjob-1", poll_interval=0.01))
    assert payload["status"] == "succeeded"
    slow = [r.getMessage() for r in caplog.records if "Executing" in r.getMessage()]
    assert slow == []


async def test_on_kill_cancels_a_running_job(connection: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="running"))
    cancel = api.on("POST", "fine_tuning/jobs/ftjob-1/cancel", job(status="cancelled"))
    await FineTuningJobTrigger("ftjob-1").on_kill()
    assert cancel.call_count == 1


async def test_on_kill_leaves_an_ended_job_and_respects_the_flag(connection: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="succeeded"))
    cancel = api.on("POST", "fine_tuning/jobs/ftjob-1/cancel", job(status="cancelled"))
    await FineTuningJobTrigger("ftjob-1").on_kill()
    await FineTuningJobTrigger("ftjob-1", cancel_on_kill=False).on_kill()
    assert cancel.call_count == 0


async def test_cleanup_never_cancels(connection: dict[str, Any], api: FakeAPI) -> None:
    cancel = api.on("POST", "fine_tuning/jobs/ftjob-1/cancel", job(status="cancelled"))
    await FineTuningJobTrigger("ftjob-1").cleanup()
    assert cancel.call_count == 0


async def test_checkpoint_trigger_fires_on_threshold(connection: dict[str, Any], api: FakeAPI) -> None:
    high = checkpoint("c1", 10)
    low = checkpoint("c2", 20)
    low["metrics"]["valid_loss"] = 0.3
    api.on("GET", "fine_tuning/jobs/ftjob-1/checkpoints", page([high]), page([low, high]))
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="running"))
    trigger = FineTuningCheckpointTrigger("ftjob-1", metric="valid_loss", threshold=0.5, poll_interval=0.0)
    (payload,) = await events_of(trigger)
    assert payload["status"] == "found"
    assert payload["checkpoint"]["id"] == "c2"
    assert payload["checkpoint"]["fine_tuned_model_checkpoint"].endswith("ckpt-step-20")


async def test_checkpoint_trigger_reports_a_job_that_ended_without_one(
    connection: dict[str, Any], api: FakeAPI
) -> None:
    api.on("GET", "fine_tuning/jobs/ftjob-1/checkpoints", page([checkpoint("c1", 10)]))
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="succeeded"))
    trigger = FineTuningCheckpointTrigger("ftjob-1", min_checkpoints=3, poll_interval=0.0)
    (payload,) = await events_of(trigger)
    assert payload["status"] == "job_ended"


async def test_checkpoint_trigger_writes_its_lines_off_the_loop_before_it_fires(
    connection: dict[str, Any], api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    missing = httpx.Response(404, json={"error": {"message": "No such job: ftjob-1", "type": "invalid_request_error"}})
    api.on("GET", "fine_tuning/jobs/ftjob-1", missing)
    trigger = FineTuningCheckpointTrigger("ftjob-1", min_checkpoints=1, poll_interval=0.0)
    # Airflow's structlog logger writes past pytest's capture: the same lines go to a standard logger here.
    trigger._log = logging.getLogger("tests.triggers.checkpoints")
    caplog.set_level(logging.INFO, logger="tests.triggers.checkpoints")
    (payload,) = await events_of(trigger)
    assert payload["status"] == "error"
    (line,) = [r for r in caplog.records if r.name == "tests.triggers.checkpoints"]
    assert line.getMessage().startswith("Could not read checkpoints of ftjob-1: ")
    assert "No such job" in line.getMessage()
    assert line.threadName == "finetune-trigger-log"
