"""Fireworks' jobs in the emulator, read through the official fireworks-ai SDK: ``jobProgress`` and body types.

Fireworks' published ``JobProgress``: ``epoch`` is "the epoch for which the progress percent is reported, usually
starting from 0", and ``percent`` is that progress, from 0 to 100. So a job reports the epoch it is in (counted
from 0) and how far into that epoch it is; a finished job reports its last epoch at 100.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fireworks import Fireworks

from airflow_provider_finetune.emulator import EmulatorServer, ManualClock
from tests.emulator.conftest import API_KEY, jsonl, training_lines

pytestmark = pytest.mark.integration

ACCOUNT = "acme"
BASE_MODEL = "accounts/fireworks/models/llama-v3p1-8b-instruct"


def _job(server: EmulatorServer, epochs: int) -> tuple[Fireworks, dict[str, Any]]:
    client = Fireworks(api_key=API_KEY, account_id=ACCOUNT, base_url=server.url, max_retries=0)
    client.datasets.create(dataset_id="progress-train", dataset={"userUploaded": {}})
    client.datasets.upload("progress-train", file=("train.jsonl", jsonl(training_lines(12))))
    client.datasets.validate_upload("progress-train", body={})
    client.supervised_fine_tuning_jobs.create(
        dataset=f"accounts/{ACCOUNT}/datasets/progress-train",
        base_model=BASE_MODEL,
        supervised_fine_tuning_job_id="ft-progress",
        epochs=epochs,
    )
    record = next(iter(server.emulator.store.records("fw_job").values()))
    return client, server.emulator.jobs.get(record["sim_id"]).record


def _at_step(clock: ManualClock, sim: dict[str, Any], step: int) -> None:
    """Move the clock to just after ``step`` training steps are done (the job was never held)."""
    durations = sim["durations"]
    started = sim["t0"] + durations["validating"] + durations["queued"]
    step_time = durations["running"] / sim["plan"]["steps"]
    clock.advance(started + step_time * step + step_time / 10 - clock())


@pytest.mark.parametrize("epochs", [2, 3])
def test_job_progress_reports_the_epoch_in_progress_and_how_far_into_it(
    server: EmulatorServer, clock: ManualClock, epochs: int
) -> None:
    client, sim = _job(server, epochs)
    per_epoch, steps = sim["plan"]["steps_per_epoch"], sim["plan"]["steps"]
    assert steps == per_epoch * epochs
    seen = []
    for step in (0, per_epoch // 2, per_epoch - 1, per_epoch, per_epoch + per_epoch // 4, steps - 1):
        _at_step(clock, sim, step)
        job = client.supervised_fine_tuning_jobs.get("ft-progress")
        assert job.state == "JOB_STATE_RUNNING"
        assert job.job_progress is not None
        seen.append((step, job.job_progress.epoch, job.job_progress.percent))
    half, quarter = per_epoch // 2, per_epoch // 4
    assert seen == [
        (0, 0, 0),
        (half, 0, 100 * half // per_epoch),
        (per_epoch - 1, 0, 100 * (per_epoch - 1) // per_epoch),
        (per_epoch, 1, 0),  # the first epoch is done: the second (epoch 1) has just begun, not half the job
        (per_epoch + quarter, 1, 100 * quarter // per_epoch),
        (steps - 1, epochs - 1, 100 * (per_epoch - 1) // per_epoch),
    ]


def test_a_completed_job_reports_its_last_epoch_done(server: EmulatorServer, clock: ManualClock) -> None:
    client, _ = _job(server, 2)
    clock.advance(100_000)
    job = client.supervised_fine_tuning_jobs.get("ft-progress")
    assert job.state == "JOB_STATE_COMPLETED"
    assert job.job_progress is not None
    assert (job.job_progress.epoch, job.job_progress.percent) == (1, 100)


@pytest.mark.parametrize("field", ["earlyStop", "evalAutoCarveout", "isTurbo"])
@pytest.mark.parametrize("value", [0, 1, "true"])
def test_a_boolean_field_takes_only_a_boolean(server: EmulatorServer, field: str, value: Any) -> None:
    client = Fireworks(api_key=API_KEY, account_id=ACCOUNT, base_url=server.url, max_retries=0)
    client.datasets.create(dataset_id="bool-train", dataset={"userUploaded": {}})
    client.datasets.upload("bool-train", file=("train.jsonl", jsonl(training_lines(12))))
    client.datasets.validate_upload("bool-train", body={})
    answer = httpx.post(
        f"{server.url}/v1/accounts/{ACCOUNT}/supervisedFineTuningJobs",
        json={"dataset": f"accounts/{ACCOUNT}/datasets/bool-train", "baseModel": BASE_MODEL, field: value},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert answer.status_code == 400
    assert f"{field}: invalid value" in answer.json()["message"]
    assert server.emulator.store.records("fw_job") == {}
