"""A lone job trigger against the emulator over real loopback HTTP: its log ends the way the job ended."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from airflow_provider_finetune.core.client import close_shared_async_clients
from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer, Timings
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.triggers.finetune import FineTuningJobTrigger
from tests.hook_doors import async_call, async_items
from tests.integration.conftest import chat_lines
from tests.logged import progress_lines

pytestmark = pytest.mark.integration

API_KEY = "sk-lone-trigger-5ecret"
# A job of 96 steps that runs for about 5 s: several polls at an interval of 1 or 2 s, and a last stretch of
# polls four times as often (the estimated finish is near), as a real job's wait has.
TIMINGS = Timings(validating=0.5, queued=0.5, step=0.05, min_running=5.0, max_running=5.0)


@pytest.fixture(scope="module")
def emulator_url() -> Iterator[str]:
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, speed=1.0, seed=11, timings=TIMINGS)) as server:
        yield server.base_url


@pytest.fixture
def hook(emulator_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FineTuningHook]:
    conn = {"conn_type": "finetune", "host": emulator_url, "password": API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
    hook = FineTuningHook()
    yield hook
    hook.close()


@pytest.mark.parametrize("poll_interval", [1.0, 2.0])
async def test_a_lone_wait_logs_the_job_to_its_end(
    hook: FineTuningHook, poll_interval: float, caplog: pytest.LogCaptureFixture
) -> None:
    training_file = hook.upload_file(chat_lines(), filename="train.jsonl").id
    job = await async_call(hook, "create_job", {"model": "gpt-4o-mini-2024-07-18", "training_file": training_file})
    trigger = FineTuningJobTrigger(job.id, poll_interval=poll_interval)
    # Airflow's structlog logger writes past pytest's capture: the same lines go to a standard logger here.
    trigger._log = logging.getLogger("tests.triggers.lone")
    caplog.set_level(logging.INFO, logger="tests.triggers.lone")
    try:
        (payload,) = [event.payload async for event in trigger.run()]
    finally:
        await close_shared_async_clients()
    assert payload["status"] == "succeeded"

    # A line may end with the ETA of the job as last read (the events can be read just after it ended).
    lines = [
        re.sub(r" \(ETA [^)]*\)$", "", line)
        for line in progress_lines(caplog.records)
        if line.startswith(f"[{job.id}] ")
    ]
    everything = (await async_items(hook, "iter_events", job.id, limit=100))[::-1]  # oldest first
    total = everything[-4].data["total_steps"]
    # The job's last events, in order: the last step's metrics, the checkpoint made there, the model, the end.
    assert re.search(rf"\] step {total}/{total} ", lines[-4]), lines[-6:]
    assert f"checkpoint at step {total}: " in lines[-3]
    assert lines[-2].startswith(f"[{job.id}] New fine-tuned model created")
    assert lines[-1] == f"[{job.id}] The job has successfully completed"
    assert payload["last_event_id"] == everything[-1].id
