"""Early stopping against the emulator over real HTTP: jobs whose validation loss stops improving
(metadata ``emulator_overfit_after``) are stopped on the worker and deferred alike, through a triggerer
restart, by cancel or pause as the service allows, and judged on checkpoints where there are no events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from airflow_provider_finetune.backends.openai import OpenAIBackend
from airflow_provider_finetune.core.client import close_shared_async_clients
from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.emulator.trainer import FORCE_FAILURE_KEY, OVERFIT_KEY
from airflow_provider_finetune.exceptions import FineTuningJobFailed, InvalidRequestError, UnsupportedCapabilityError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
from airflow_provider_finetune.rules.early_stopping import EarlyStopping
from airflow_provider_finetune.sensors.finetune import FineTuningCheckpointSensor
from airflow_provider_finetune.triggers.finetune import FineTuningCheckpointTrigger, FineTuningJobTrigger
from tests.integration.conftest import API_KEY, Emulator, chat_lines, stop_too_late
from tests.operators.conftest import FakeStateStore, FakeTI

try:
    from airflow.sdk.exceptions import TaskDeferred
except ImportError:  # Airflow 3.1
    from airflow.exceptions import TaskDeferred  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

CANCEL = "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel"
PAUSE = "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/pause"
# 12 examples, batch size 1, 3 epochs: 36 steps, a metrics event each, checkpoints at steps 12, 24 and 36.
# Overfitting after 30% of training (step 10.8), the validation loss never improves after step 10.
OVERFIT = {OVERFIT_KEY: "0.3"}


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    """Jobs that train for about 4 s: a wait polling every 0.1 s stops them about half-way, with room for a loaded
    machine's pauses (one of 1.3 s was seen) before the end."""
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, speed=8, seed=5)) as running:
        yield running


def connect(monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, **extra: str) -> Emulator:
    conn = {"conn_type": "finetune", "host": server.base_url, "password": API_KEY, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
    emulator = Emulator(server)
    emulator.reset()
    return emulator


@pytest.fixture
def emulator(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    return connect(monkeypatch, server)


@pytest.fixture
def files(emulator: Emulator) -> dict[str, str]:
    hook = FineTuningHook()
    return {
        "training_file": hook.upload_file(chat_lines(12), filename="train.jsonl").id,
        "validation_file": hook.upload_file(chat_lines(6, prefix="v"), filename="valid.jsonl").id,
    }


def operator(files: dict[str, str], *, metadata: dict[str, str] | None = OVERFIT, **kwargs: Any) -> Any:
    return FineTuningJobOperator(
        task_id="fine_tune",
        model="gpt-4o-mini-2024-07-18",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1}}},
        metadata=metadata,
        poll_interval=0.1,
        timeout=60,
        **files,
        **kwargs,
    )


def fresh_ti() -> FakeTI:
    return FakeTI(run_id=f"test__{uuid.uuid4().hex}")


def best_of(job_id: str) -> Any:
    """The job's checkpoint with the lowest valid_loss, read from the service."""
    checkpoints = list(FineTuningHook().iter_checkpoints(job_id))
    assert checkpoints
    return min(checkpoints, key=lambda c: c.metrics.valid_loss)


def assert_stopped_early(ti: FakeTI, model: str | None, *, status: str = "cancelled") -> None:
    job = FineTuningHook().get_job(ti.xcoms["job_id"])
    assert job.status.value == status
    assert job.fine_tuned_model is None  # stopped before it made its final model
    best = best_of(job.id)
    assert model == best.fine_tuned_model_checkpoint
    assert ti.xcoms["return_value" if "return_value" in ti.xcoms else "fine_tuned_model"] == model
    assert ti.xcoms["early_stopped"] is True
    assert ti.xcoms["best_checkpoint"]["fine_tuned_model_checkpoint"] == model
    assert ti.xcoms["best_checkpoint"]["step_number"] == best.step_number
    assert ti.xcoms["status"] == status
    reason = ti.xcoms["early_stopping_reason"]
    assert reason.startswith(f"Job {job.id} stopped early: valid_loss has not improved on its best")
    assert "patience 3" in reason


def test_on_the_worker_an_overfitting_job_is_cancelled_and_its_best_checkpoint_returned(
    emulator: Emulator, files: dict[str, str]
) -> None:
    ti = fresh_ti()
    model = operator(files, early_stopping={"patience": 3}).execute({"ti": ti})
    assert_stopped_early(ti, model)
    assert model is not None
    assert model.endswith(":ckpt-step-12")  # the only checkpoint made before the loss turned
    assert emulator.requests_to(CANCEL) == 1


def test_a_job_that_keeps_improving_runs_to_its_end(emulator: Emulator, files: dict[str, str]) -> None:
    ti = fresh_ti()
    model = operator(files, metadata=None, early_stopping={"patience": 36}).execute({"ti": ti})
    job = FineTuningHook().get_job(ti.xcoms["job_id"])
    assert job.status.value == "succeeded"
    assert model == job.fine_tuned_model
    assert ti.xcoms["early_stopped"] is False
    assert emulator.requests_to(CANCEL) == 0


async def test_deferred_the_trigger_stops_it_the_same_way_across_a_triggerer_restart(
    emulator: Emulator, files: dict[str, str]
) -> None:
    ti = fresh_ti()
    task = operator(files, early_stopping={"patience": 3}, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({"ti": ti})
    _, kwargs = deferred.value.trigger.serialize()
    assert kwargs["early_stopping"] == {
        "metric": "valid_loss",
        "mode": "min",
        "patience": 3,
        "min_delta": 0.0,
        "action": "cancel",
    }
    assert API_KEY not in json.dumps(kwargs)

    # The first triggerer goes away early in training; another one starts the trigger from its kwargs.
    first = FineTuningJobTrigger(**json.loads(json.dumps(kwargs)))
    run = first.run()
    waiting = asyncio.ensure_future(run.__anext__())
    await asyncio.sleep(0.4)
    assert not waiting.done()
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await first.cleanup()
    await run.aclose()

    again = FineTuningJobTrigger(**json.loads(json.dumps(kwargs)))
    (event,) = [e.payload async for e in again.run()]
    await close_shared_async_clients()
    assert event["status"] == "early_stopped"
    assert event["early_stopping"]["since_best"] >= 3
    assert event["early_stopping"]["best_step"] <= 11  # the turn is at step 10.8: the restart lost nothing
    model = task.execute_complete({"ti": ti}, event)
    assert_stopped_early(ti, model)
    assert emulator.requests_to(CANCEL) == 1


def test_a_job_that_succeeds_before_the_stop_is_a_success_not_an_early_stop(
    emulator: Emulator, files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verdict came while the job ran; the cancel reached it after it had succeeded: its own model is the result."""
    ti = fresh_ti()
    task = operator(files, early_stopping={"patience": 3}, deferrable=True)
    with pytest.raises(TaskDeferred):
        task.execute({"ti": ti})
    job_id = ti.xcoms["job_id"]
    assert not FineTuningHook().get_job(job_id).status.is_terminal()
    stop_too_late(monkeypatch, "cancel_job")
    event = {"status": "early_stopped", "job_id": job_id, "message": f"Job {job_id} stopped early: valid_loss ..."}
    model = task.execute_complete({"ti": ti}, event)
    job = FineTuningHook().get_job(job_id)
    assert job.status.value == "succeeded"
    assert model == job.fine_tuned_model is not None
    assert ti.xcoms["early_stopped"] is False
    assert ti.xcoms["status"] == "succeeded"
    assert ti.xcoms["fine_tuned_model"] == job.fine_tuned_model
    assert "best_checkpoint" not in ti.xcoms
    assert "early_stopping_reason" not in ti.xcoms
    assert emulator.requests_to(CANCEL) == 1  # sent, and refused: the job had ended


def test_a_job_that_fails_before_the_stop_fails_the_task(
    emulator: Emulator, files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ti = fresh_ti()
    task = operator(
        files, metadata={**OVERFIT, FORCE_FAILURE_KEY: "server_error"}, early_stopping={"patience": 3}, deferrable=True
    )
    with pytest.raises(TaskDeferred):
        task.execute({"ti": ti})
    job_id = ti.xcoms["job_id"]
    stop_too_late(monkeypatch, "cancel_job")
    event = {"status": "early_stopped", "job_id": job_id, "message": f"Job {job_id} stopped early: valid_loss ..."}
    with pytest.raises(FineTuningJobFailed, match="server_error"):
        task.execute_complete({"ti": ti}, event)
    assert ti.xcoms["status"] == "failed"
    assert "early_stopped" not in ti.xcoms
    assert "fine_tuned_model" not in ti.xcoms


def test_pause_where_the_service_can(emulator: Emulator, files: dict[str, str]) -> None:
    ti = fresh_ti()
    model = operator(files, early_stopping={"patience": 3, "action": "pause"}).execute({"ti": ti})
    assert_stopped_early(ti, model, status="paused")
    assert (emulator.requests_to(PAUSE), emulator.requests_to(CANCEL)) == (1, 0)


def test_cancel_where_the_service_cannot_pause(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]
) -> None:
    emulator = connect(monkeypatch, server, service="openai-compatible")
    assert not FineTuningHook().backend.supports("pause")
    ti = fresh_ti()
    model = operator(files, early_stopping={"patience": 3, "action": "pause"}).execute({"ti": ti})
    assert_stopped_early(ti, model)
    assert (emulator.requests_to(PAUSE), emulator.requests_to(CANCEL)) == (0, 1)


@pytest.fixture
def no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection's service keeps checkpoints with metrics, but no event log."""
    monkeypatch.setattr(OpenAIBackend, "capabilities", replace(OpenAIBackend.capabilities, events=False))


@pytest.mark.usefixtures("no_events")
def test_without_events_it_is_judged_on_checkpoints_on_the_worker(emulator: Emulator, files: dict[str, str]) -> None:
    ti = fresh_ti()
    model = operator(files, early_stopping={"patience": 1}).execute({"ti": ti})
    assert model is not None
    assert model.endswith(":ckpt-step-12")  # the checkpoint at 24 did not improve on it: stopped then
    assert ti.xcoms["early_stopped"] is True
    assert "for 1 evaluation(s)" in ti.xcoms["early_stopping_reason"]
    assert FineTuningHook().get_job(ti.xcoms["job_id"]).status.value == "cancelled"
    assert emulator.counters()["requests"].get("GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/events", 0) == 0


@pytest.mark.usefixtures("no_events")
async def test_without_events_it_is_judged_on_checkpoints_deferred(emulator: Emulator, files: dict[str, str]) -> None:
    ti = fresh_ti()
    task = operator(files, early_stopping={"patience": 1}, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({"ti": ti})
    (event,) = [e.payload async for e in deferred.value.trigger.run()]
    await close_shared_async_clients()
    assert event["status"] == "early_stopped"
    assert event["early_stopping"]["best_step"] == 12
    assert task.execute_complete({"ti": ti}, event).endswith(":ckpt-step-12")


def test_a_validation_metric_without_a_validation_file_is_refused_before_any_job(
    emulator: Emulator, files: dict[str, str]
) -> None:
    task = operator({"training_file": files["training_file"]}, early_stopping={"metric": "full_valid_loss"})
    with pytest.raises(InvalidRequestError) as refused:
        task.execute({"ti": fresh_ti()})
    assert refused.value.field == "validation_file"
    assert emulator.counters()["jobs_created"] == 0


def test_a_service_without_checkpoints_is_refused_before_any_job(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]
) -> None:
    emulator = connect(monkeypatch, server, service="openai-compatible", preset="litellm")
    with pytest.raises(UnsupportedCapabilityError, match="checkpoints"):
        operator(files, early_stopping={}).execute({"ti": fresh_ti()})
    assert emulator.counters()["jobs_created"] == 0


# -- the checkpoint wait ----------------------------------------------------------------------------------


def create_overfitting_job(files: dict[str, str]) -> str:
    request = {
        "model": "gpt-4o-mini-2024-07-18",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1}}},
        "metadata": OVERFIT,
        **files,
    }
    return FineTuningHook().create_job(request).id


async def test_the_checkpoint_trigger_stops_on_checkpoints_that_stopped_improving(
    emulator: Emulator, files: dict[str, str]
) -> None:
    job_id = create_overfitting_job(files)
    # Three checkpoints are never reached: the second one, worse than the first, ends the wait.
    trigger = FineTuningCheckpointTrigger(
        job_id, min_checkpoints=3, poll_interval=0.1, early_stopping=EarlyStopping(patience=1).to_json()
    )
    _, kwargs = trigger.serialize()
    (event,) = [e.payload async for e in FineTuningCheckpointTrigger(**json.loads(json.dumps(kwargs))).run()]
    await close_shared_async_clients()
    assert event["status"] == "early_stopped"
    assert event["checkpoint"]["step_number"] == 12
    assert event["early_stopping"]["since_best"] == 1
    sensor = FineTuningCheckpointSensor(
        task_id="best", job_id=job_id, min_checkpoints=3, early_stopping={"patience": 1}, deferrable=True
    )
    ti = fresh_ti()
    model = sensor.execute_complete({"ti": ti}, event)  # type: ignore[arg-type]
    assert model == event["checkpoint"]["fine_tuned_model_checkpoint"]
    assert model.endswith(":ckpt-step-12")
    assert ti.xcoms["early_stopped"] is True
    assert ti.xcoms["checkpoint"]["step_number"] == 12
    assert FineTuningHook().get_job(job_id).status.value == "cancelled"
    assert emulator.requests_to(CANCEL) == 1


def poke_pausing_sensor(job_id: str, ti: FakeTI) -> Any:
    """Poke a sensor for the job's third checkpoint, pausing it after one that does not improve, until done."""
    sensor = FineTuningCheckpointSensor(
        task_id="best", job_id=job_id, min_checkpoints=3, early_stopping={"patience": 1, "action": "pause"}
    )
    for _ in range(200):
        poked = sensor.poke({"ti": ti})  # type: ignore[arg-type]
        if poked.is_done:
            return poked
        time.sleep(0.05)
    raise AssertionError("the sensor was never done")


def test_the_checkpoint_sensors_pokes_stop_it_the_same_way(emulator: Emulator, files: dict[str, str]) -> None:
    job_id = create_overfitting_job(files)
    ti = fresh_ti()
    poked = poke_pausing_sensor(job_id, ti)
    assert str(poked.xcom_value).endswith(":ckpt-step-12")
    assert "has not improved" in ti.xcoms["early_stopping_reason"]
    assert FineTuningHook().get_job(job_id).status.value == "paused"


def test_the_checkpoint_sensor_judges_a_job_that_ended_before_the_stop_as_any_ended_job(
    emulator: Emulator, files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = create_overfitting_job(files)
    stop_too_late(monkeypatch, "pause_job")
    ti = fresh_ti()
    poked = poke_pausing_sensor(job_id, ti)
    assert FineTuningHook().get_job(job_id).status.value == "succeeded"
    # It made its three checkpoints: the condition is met by the last, and nothing was stopped.
    assert str(poked.xcom_value).endswith(":ckpt-step-36")
    assert ti.xcoms["checkpoint"]["step_number"] == 36
    assert "early_stopped" not in ti.xcoms
    assert "early_stopping_reason" not in ti.xcoms
    assert emulator.requests_to(PAUSE) == 1


def test_a_retry_after_the_stop_returns_the_same_checkpoint_and_makes_no_new_job(
    emulator: Emulator, files: dict[str, str]
) -> None:
    """A worker that dies after cancelling the job: the retry finds its record, not a cancelled job to redo."""
    store = FakeStateStore()
    first = fresh_ti()
    model = operator(files, early_stopping={"patience": 3}).execute({"ti": first, "task_state_store": store})
    retry = FakeTI(run_id=first.run_id, try_number=2)
    again = operator(files, early_stopping={"patience": 3}).execute({"ti": retry, "task_state_store": store})
    assert again == model
    assert retry.xcoms["early_stopped"] is True
    assert retry.xcoms["early_stopping_reason"] == first.xcoms["early_stopping_reason"]
    assert retry.xcoms["job_id"] == first.xcoms["job_id"]
    assert emulator.counters()["jobs_created"] == 1
    assert emulator.requests_to(CANCEL) == 1
