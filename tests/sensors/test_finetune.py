"""The job and checkpoint sensors at the HTTP layer: poke, reschedule and deferrable modes."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.core.client import RetryPolicy
from airflow_provider_finetune.exceptions import (
    AuthenticationError,
    FineTuningError,
    FineTuningJobFailed,
    InvalidRequestError,
)
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.sensors.finetune import FineTuningCheckpointSensor, FineTuningJobSensor
from airflow_provider_finetune.triggers.finetune import FineTuningCheckpointTrigger, FineTuningJobTrigger
from tests.hooks.conftest import SECRET, FakeAPI, checkpoint, job, page
from tests.operators.conftest import FakeTI

try:  # Airflow 3.2+
    from airflow.sdk.exceptions import AirflowRescheduleException, AirflowSensorTimeout, TaskDeferred
except ImportError:  # Airflow 3.1
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowRescheduleException,
        AirflowSensorTimeout,
        TaskDeferred,
    )

JOB = "fine_tuning/jobs/ftjob-1"
CHECKPOINTS = "fine_tuning/jobs/ftjob-1/checkpoints"
MODEL = "ft:gpt-4o-mini-2024-07-18:org:sfx:abc123"
FAILED = job(
    status="failed",
    error={"code": "invalid_training_file", "message": "line 7 is not JSON", "param": "training_file"},
)


def fast(sensor: Any) -> Any:
    """Give the sensor a hook that retries without waiting."""
    sensor.__dict__["hook"] = FineTuningHook(
        sensor.finetune_conn_id,
        retry_policy=RetryPolicy(initial_delay=0.0, max_delay=0.0, jitter=0.0),
    )
    return sensor


def ckpt(ckpt_id: str, step: int, **metrics: float) -> dict[str, Any]:
    return {**checkpoint(ckpt_id, step), "metrics": {"step": step, **metrics}}


def job_sensor(**kwargs: Any) -> FineTuningJobSensor:
    return FineTuningJobSensor(**{"task_id": "wait", "job_id": "ftjob-1", "poke_interval": 0, **kwargs})


def checkpoint_sensor(**kwargs: Any) -> FineTuningCheckpointSensor:
    return FineTuningCheckpointSensor(**{"task_id": "wait", "job_id": "ftjob-1", "poke_interval": 0, **kwargs})


@pytest.fixture
def ti(context: dict[str, Any]) -> FakeTI:
    """The context's task instance, to read the XComs pushed."""
    ti: FakeTI = context["ti"]
    return ti


# -- FineTuningJobSensor: poke -----------------------------------------------------------------------------------


def test_job_sensor_done_on_succeeded_returns_the_model(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI
) -> None:
    api.on("GET", JOB, job(status="succeeded", fine_tuned_model=MODEL))

    result = job_sensor().poke(context)

    assert result.is_done
    assert result.xcom_value == MODEL
    assert ti.xcoms == {"status": "succeeded"}


def test_job_sensor_other_target_returns_the_status(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, job(status="running"))

    result = job_sensor(target_statuses=("running", "succeeded")).poke(context)

    assert result.is_done
    assert result.xcom_value == "running"


@pytest.mark.parametrize("status", ["queued", "validating_files", "running", "paused", "pausing", "rebalancing"])
def test_job_sensor_keeps_waiting(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI, status: str
) -> None:
    api.on("GET", JOB, job(status=status))

    result = job_sensor().poke(context)

    assert not result.is_done
    assert ti.xcoms == {}


def test_job_sensor_fails_on_failure_status_with_the_jobs_error(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, FAILED)

    with pytest.raises(FineTuningJobFailed) as info:
        job_sensor().poke(context)

    err = info.value
    assert (err.job_id, err.status, err.code, err.param) == (
        "ftjob-1",
        "failed",
        "invalid_training_file",
        "training_file",
    )
    from airflow_provider_finetune.core.compat import AirflowFailException

    assert isinstance(err, AirflowFailException)  # no retry makes an ended job reach the status; soft_fail skips
    assert "[invalid_training_file] line 7 is not JSON (param: training_file)" in str(err)


def test_job_sensor_fails_on_cancelled(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    api.on("GET", JOB, job(status="cancelled"))

    with pytest.raises(FineTuningJobFailed, match="is cancelled"):
        job_sensor().poke(context)


def test_job_sensor_fails_on_a_terminal_status_that_is_no_target(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, job(status="succeeded", fine_tuned_model=MODEL))

    with pytest.raises(FineTuningJobFailed, match="succeeded and can no longer become paused"):
        job_sensor(target_statuses="paused").poke(context)


def test_job_sensor_paused_can_be_a_failure_status(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, job(status="paused"))

    with pytest.raises(FineTuningJobFailed, match="is paused"):
        job_sensor(failure_statuses=("failed", "cancelled", "paused")).poke(context)


def test_job_sensor_failed_can_be_a_target(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    api.on("GET", JOB, FAILED)

    result = job_sensor(target_statuses=("succeeded", "failed"), failure_statuses=("cancelled",)).poke(context)

    assert result.is_done
    assert result.xcom_value == "failed"


def test_job_sensor_transient_failure_keeps_waiting(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, httpx.Response(503, json={"error": {"message": "overloaded"}}))

    result = fast(job_sensor()).poke(context)

    assert not result.is_done
    assert len(api.requests) == 4  # the hook's own retries came first


def test_job_sensor_refused_key_fails(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    api.on("GET", JOB, httpx.Response(401, json={"error": {"message": "bad key", "code": "invalid_api_key"}}))

    with pytest.raises(AuthenticationError):
        job_sensor().poke(context)


def test_job_sensor_execute_in_poke_mode_polls_until_done(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, job(status="running"), job(status="paused"), job(status="succeeded", fine_tuned_model=MODEL))

    assert job_sensor().execute(context) == MODEL
    assert len(api.requests) == 3


def test_job_sensor_reschedule_mode_frees_the_worker(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, job(status="running"))
    context["ti"].get_first_reschedule_date = lambda _context: None

    with pytest.raises(AirflowRescheduleException):
        job_sensor(mode="reschedule", poke_interval=60).execute(context)


def test_job_sensor_refuses_bad_arguments_when_the_dag_is_parsed() -> None:
    with pytest.raises(InvalidRequestError, match="failed cannot be both a target and a failure status"):
        job_sensor(target_statuses=("succeeded", "failed"), failure_statuses=("failed", "cancelled"))
    with pytest.raises(InvalidRequestError, match="at least one status"):
        job_sensor(target_statuses=())
    assert job_sensor(target_statuses="running").target_statuses == {"running"}
    assert FineTuningJobSensor.template_fields == ("job_id",)


@pytest.mark.parametrize(
    ("targets", "failures"),
    [
        (["cancelled"], {"failed"}),
        (("succeeded", "failed"), {"cancelled"}),
        (("failed", "cancelled"), set()),
        ("running", {"failed", "cancelled"}),
    ],
)
def test_job_sensor_target_statuses_leave_the_default_failure_statuses(targets: Any, failures: set[str]) -> None:
    sensor = job_sensor(target_statuses=targets)

    assert sensor.failure_statuses == failures


def test_job_sensor_waits_for_cancelled(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    api.on("GET", JOB, job(status="running"), job(status="cancelled"))

    assert job_sensor(target_statuses=["cancelled"]).execute(context) == "cancelled"
    assert len(api.requests) == 2


def test_job_sensor_waiting_for_cancelled_still_fails_on_failed(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, FAILED)

    with pytest.raises(FineTuningJobFailed, match="is failed"):
        job_sensor(target_statuses=["cancelled"]).poke(context)


@pytest.mark.parametrize(
    ("targets", "failures", "both"),
    [
        (["cancelled"], ["cancelled"], "cancelled"),
        (("succeeded", "failed"), ("failed", "cancelled"), "failed"),
        (("running", "paused"), ("paused", "running"), "paused, running"),
        ("cancelled", "cancelled", "cancelled"),
    ],
)
def test_job_sensor_refuses_a_status_stated_as_both_target_and_failure(targets: Any, failures: Any, both: str) -> None:
    with pytest.raises(InvalidRequestError, match=f"(?m)^{both} cannot be both a target and a failure status$") as info:
        job_sensor(target_statuses=targets, failure_statuses=failures)

    assert info.value.field == "failure_statuses"


def test_job_sensor_deferred_with_cancelled_as_target(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    sensor = job_sensor(deferrable=True, target_statuses=["cancelled"])

    with pytest.raises(TaskDeferred) as info:
        sensor.execute(context)
    api.on("GET", JOB, job(status="cancelled"))

    assert info.value.trigger.serialize()[1]["target_statuses"] == ["cancelled", "failed"]
    assert sensor.execute_complete(context, event("cancelled")) == "cancelled"


# -- FineTuningJobSensor: deferrable ---------------------------------------------------------------------------


def test_job_sensor_defers_at_once_without_a_request(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    sensor = job_sensor(deferrable=True, poke_interval=30, timeout=3600)

    with pytest.raises(TaskDeferred) as info:
        sensor.execute(context)

    assert api.requests == []
    assert info.value.method_name == "execute_complete"
    trigger = info.value.trigger
    assert isinstance(trigger, FineTuningJobTrigger)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_finetune.triggers.finetune.FineTuningJobTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert SECRET not in json.dumps(kwargs)
    assert kwargs["job_id"] == "ftjob-1"
    assert kwargs["cancel_on_kill"] is False
    assert kwargs["poll_interval"] == 30.0
    assert kwargs["target_statuses"] == ["cancelled", "failed", "succeeded"]
    assert time.time() + 3590 < kwargs["deadline"] <= time.time() + 3600
    assert kwargs["max_consecutive_errors"] >= 2**31 - 1  # as when it pokes: only its timeout ends the wait
    # Should no triggerer run it, Airflow fails the wait a little after the trigger's own deadline.
    assert info.value.timeout == timedelta(seconds=3600 + 30 + 60)


def test_job_sensor_deferred_trigger_stops_on_non_terminal_failure_statuses(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    sensor = job_sensor(deferrable=True, target_statuses=("running",), failure_statuses=("paused",))

    with pytest.raises(TaskDeferred) as info:
        sensor.execute(context)

    assert info.value.trigger.serialize()[1]["target_statuses"] == ["paused", "running"]


def event(status: str, message: str = "", job_id: str = "ftjob-1") -> dict[str, Any]:
    return {"status": status, "job_id": job_id, "message": message, "last_event_id": None}


def test_job_sensor_complete_on_succeeded_rereads_the_job(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI
) -> None:
    api.on("GET", JOB, job(status="succeeded", fine_tuned_model=MODEL))

    assert job_sensor(deferrable=True).execute_complete(context, event("succeeded")) == MODEL
    assert ti.xcoms == {"status": "succeeded"}


def test_job_sensor_complete_on_a_target_status(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, job(status="running"))

    assert job_sensor(deferrable=True, target_statuses=("running",)).execute_complete(context, event("running")) == (
        "running"
    )


def test_job_sensor_complete_on_failed(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    api.on("GET", JOB, FAILED)

    with pytest.raises(FineTuningJobFailed, match="invalid_training_file") as info:
        job_sensor(deferrable=True).execute_complete(context, event("failed"))
    assert info.value.param == "training_file"


def test_job_sensor_complete_on_a_terminal_status_that_is_no_target(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, job(status="succeeded", fine_tuned_model=MODEL))

    with pytest.raises(FineTuningJobFailed, match="can no longer become running"):
        job_sensor(deferrable=True, target_statuses=("running",)).execute_complete(context, event("succeeded"))


def test_job_sensor_complete_on_timeout(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    with pytest.raises(AirflowSensorTimeout, match="deadline"):
        job_sensor(deferrable=True).execute_complete(context, event("timeout", "Job ftjob-1 missed the deadline"))
    assert api.requests == []


def test_job_sensor_complete_on_error(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    with pytest.raises(FineTuningError, match="10 polls"):
        job_sensor(deferrable=True).execute_complete(context, event("error", "10 polls of job ftjob-1 failed"))
    assert api.requests == []


@pytest.mark.parametrize(
    "bogus",
    [
        event("running"),  # not a target, not a failure status, not terminal: the trigger never sends it
        event("exploded"),
        event("succeeded", job_id="ftjob-2"),
        {"job_id": "ftjob-1"},
        "succeeded",
        None,
    ],
)
def test_job_sensor_complete_refuses_other_events(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], bogus: Any
) -> None:
    with pytest.raises(FineTuningError, match="Unexpected trigger event"):
        job_sensor(deferrable=True).execute_complete(context, bogus)
    assert api.requests == []


# -- FineTuningCheckpointSensor: poke ---------------------------------------------------------------------------


def test_checkpoint_sensor_waits_for_enough_checkpoints(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI
) -> None:
    api.on("GET", JOB, job(status="running"))
    api.on("GET", CHECKPOINTS, page([checkpoint("c1", 10)]), page([checkpoint("c2", 20), checkpoint("c1", 10)]))
    sensor = checkpoint_sensor(min_checkpoints=2)

    assert not sensor.poke(context).is_done
    result = sensor.poke(context)

    assert result.is_done
    assert result.xcom_value == "ft:gpt-4o-mini:org:sfx:abc:ckpt-step-20"
    assert ti.xcoms["checkpoint"] == {
        "id": "c2",
        "step_number": 20,
        "fine_tuned_model_checkpoint": "ft:gpt-4o-mini:org:sfx:abc:ckpt-step-20",
        "metrics": {"step": 20, "train_loss": 0.5, "valid_loss": 0.7},
    }
    # The job is read before its checkpoints, so that "ended without one" is never a race.
    assert [r.url.path for r in api.requests[:2]] == [f"/v1/{JOB}", f"/v1/{CHECKPOINTS}"]


def test_checkpoint_sensor_threshold_min_mode_picks_the_lowest_that_qualifies(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI
) -> None:
    api.on("GET", JOB, job(status="running"))
    api.on(
        "GET",
        CHECKPOINTS,
        page([ckpt("c3", 30, valid_loss=0.6), ckpt("c2", 20, valid_loss=0.7)]),
        page([ckpt("c5", 50, valid_loss=0.45), ckpt("c4", 40, valid_loss=0.4), ckpt("c3", 30, valid_loss=0.6)]),
    )
    sensor = checkpoint_sensor(metric="valid_loss", threshold=0.5)

    assert not sensor.poke(context).is_done
    result = sensor.poke(context)

    assert result.xcom_value == "ft:gpt-4o-mini:org:sfx:abc:ckpt-step-40"
    assert ti.xcoms["checkpoint"]["metrics"] == {"step": 40, "valid_loss": 0.4}


def test_checkpoint_sensor_threshold_max_mode_picks_the_highest_that_qualifies(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    metric = "full_valid_mean_token_accuracy"
    api.on("GET", JOB, job(status="running"))
    api.on(
        "GET",
        CHECKPOINTS,
        page([ckpt("c1", 10, **{metric: 0.7})]),
        page([ckpt("c3", 30, **{metric: 0.82}), ckpt("c2", 20, **{metric: 0.9}), ckpt("c1", 10, **{metric: 0.7})]),
    )
    sensor = checkpoint_sensor(metric=metric, threshold=0.8, metric_mode="max")

    assert not sensor.poke(context).is_done
    assert sensor.poke(context).xcom_value == "ft:gpt-4o-mini:org:sfx:abc:ckpt-step-20"


def test_checkpoint_sensor_fails_when_the_job_ended_without_one(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, job(status="succeeded", fine_tuned_model=MODEL))
    api.on("GET", CHECKPOINTS, page([ckpt("c1", 10, valid_loss=0.9)]))

    with pytest.raises(FineTuningJobFailed) as info:
        checkpoint_sensor(metric="valid_loss", threshold=0.5).poke(context)

    assert str(info.value) == (
        "Fine-tuning job ftjob-1 is succeeded with 1 checkpoint(s), and none meets "
        "at least 1 checkpoint(s) with valid_loss <= 0.5; it will have no more"
    )


def test_checkpoint_sensor_fails_when_the_job_failed(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, FAILED)
    api.on("GET", CHECKPOINTS, page([]))

    with pytest.raises(FineTuningJobFailed, match=r"is failed with 0 checkpoint.*invalid_training_file") as info:
        checkpoint_sensor().poke(context)
    assert info.value.code == "invalid_training_file"


def test_checkpoint_sensor_transient_failure_keeps_waiting(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, httpx.ConnectError("connection refused"))

    assert not fast(checkpoint_sensor()).poke(context).is_done


def test_checkpoint_sensor_refuses_bad_arguments_when_the_dag_is_parsed() -> None:
    with pytest.raises(InvalidRequestError, match="mode must be"):
        checkpoint_sensor(metric="valid_loss", metric_mode="median")
    with pytest.raises(InvalidRequestError, match="threshold needs the metric"):
        checkpoint_sensor(threshold=0.5)
    with pytest.raises(InvalidRequestError, match="min_checkpoints"):
        checkpoint_sensor(min_checkpoints=0)
    assert checkpoint_sensor(mode="reschedule").reschedule


# -- FineTuningCheckpointSensor: deferrable ---------------------------------------------------------------------


def test_checkpoint_sensor_defers_at_once(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    sensor = checkpoint_sensor(
        deferrable=True, metric="valid_mean_token_accuracy", threshold=0.9, metric_mode="max", timeout=600
    )

    with pytest.raises(TaskDeferred) as info:
        sensor.execute(context)

    assert api.requests == []
    trigger = info.value.trigger
    assert isinstance(trigger, FineTuningCheckpointTrigger)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_finetune.triggers.finetune.FineTuningCheckpointTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert SECRET not in json.dumps(kwargs)
    assert kwargs["metric"] == "valid_mean_token_accuracy"
    assert kwargs["threshold"] == 0.9
    assert kwargs["mode"] == "max"
    assert kwargs["min_checkpoints"] == 1
    assert time.time() + 590 < kwargs["deadline"] <= time.time() + 600


def test_checkpoint_sensor_complete_found(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI
) -> None:
    found = {"status": "found", "job_id": "ftjob-1", "checkpoint": ckpt("c2", 20, valid_loss=0.3), "message": "ok"}

    result = checkpoint_sensor(deferrable=True).execute_complete(context, found)

    assert result == "ft:gpt-4o-mini:org:sfx:abc:ckpt-step-20"
    assert ti.xcoms["checkpoint"]["id"] == "c2"
    assert api.requests == []


def test_checkpoint_sensor_complete_job_ended_fails(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, job(status="cancelled"))
    api.on("GET", CHECKPOINTS, page([]))

    with pytest.raises(FineTuningJobFailed, match="is cancelled with 0 checkpoint"):
        checkpoint_sensor(deferrable=True).execute_complete(context, event("job_ended", "Job ftjob-1 is cancelled"))


def test_checkpoint_sensor_complete_job_ended_looks_once_more(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    # The trigger lists checkpoints before reading the job: one written as the job ended can be missed.
    api.on("GET", JOB, job(status="succeeded", fine_tuned_model=MODEL))
    api.on("GET", CHECKPOINTS, page([checkpoint("c3", 30)]))

    result = checkpoint_sensor(deferrable=True).execute_complete(context, event("job_ended"))

    assert result == "ft:gpt-4o-mini:org:sfx:abc:ckpt-step-30"


def test_checkpoint_sensor_complete_timeout_and_error(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    sensor = checkpoint_sensor(deferrable=True)

    with pytest.raises(AirflowSensorTimeout, match="before the deadline"):
        sensor.execute_complete(context, event("timeout", "No checkpoint of ftjob-1 met it before the deadline"))
    with pytest.raises(FineTuningError, match="refused"):
        sensor.execute_complete(context, event("error", "401 refused"))
    assert api.requests == []


@pytest.mark.parametrize(
    "bogus",
    [
        event("succeeded"),
        event("found"),
        {"status": "found", "job_id": "ftjob-1", "checkpoint": {"step_number": 3}},
        {"status": "found", "job_id": "ftjob-2", "checkpoint": checkpoint("c1")},
        [],
        None,
    ],
)
def test_checkpoint_sensor_complete_refuses_other_events(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], bogus: Any
) -> None:
    with pytest.raises(FineTuningError, match="Unexpected trigger event"):
        checkpoint_sensor(deferrable=True).execute_complete(context, bogus)
    assert api.requests == []


def test_a_deferred_early_stop_returns_the_best_checkpoint_made_by_the_stop_not_the_verdict_s(
    connection: dict[str, Any], api: FakeAPI
) -> None:
    """The verdict was read in the triggerer; by the time the task stops the job, a better checkpoint came."""
    seen = checkpoint("c12", 12)
    better = {**checkpoint("c24", 24), "metrics": {"step": 24, "train_loss": 0.3, "valid_loss": 0.4}}
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="running"))
    cancel = api.on("POST", "fine_tuning/jobs/ftjob-1/cancel", job(status="cancelled"))
    api.on("GET", "fine_tuning/jobs/ftjob-1/checkpoints", page([better, seen]))
    sensor = FineTuningCheckpointSensor(
        task_id="best", job_id="ftjob-1", min_checkpoints=5, early_stopping={"patience": 1}, deferrable=True
    )
    ti = FakeTI()
    event = {"status": "early_stopped", "job_id": "ftjob-1", "checkpoint": seen, "message": "stopped early"}
    model = sensor.execute_complete({"ti": ti}, event)  # type: ignore[arg-type]
    assert model == better["fine_tuned_model_checkpoint"]
    assert ti.xcoms["checkpoint"]["step_number"] == 24
    assert ti.xcoms["early_stopped"] is True
    assert cancel.call_count == 1
