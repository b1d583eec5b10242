"""Templated sensor arguments, rendered by Airflow itself: values, types, and a templated ``mode`` that takes effect."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.exceptions import AirflowException
from airflow.sdk import DAG, task

from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.rules.checkpoints import CheckpointCondition
from airflow_provider_finetune.sensors.finetune import FineTuningCheckpointSensor, FineTuningJobSensor
from tests.hooks.conftest import FakeAPI, checkpoint, job, page

try:  # Airflow 3.2+
    from airflow.sdk.exceptions import AirflowRescheduleException, TaskDeferred
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowRescheduleException, TaskDeferred  # type: ignore[no-redef]

try:  # Airflow 3.2+
    from airflow.serialization.serialized_objects import DagSerialization
except ImportError:  # Airflow 3.1
    from airflow.serialization.serialized_objects import SerializedDAG as DagSerialization  # type: ignore[no-redef]

JOB = "fine_tuning/jobs/ftjob-1"
CHECKPOINTS = "fine_tuning/jobs/ftjob-1/checkpoints"
TEMPLATED: dict[str, Any] = {
    "job_id": "{{ params.job }}",
    "metric": "{{ params.metric }}",
    "threshold": "{{ params.threshold }}",
    "min_checkpoints": "{{ params.min_checkpoints }}",
    "metric_mode": "{{ params.direction }}",
    "mode": "{{ params.mode }}",
}
PARAMS: dict[str, Any] = {
    "job": "ftjob-1",
    "metric": "valid_loss",
    "threshold": 0.5,
    "min_checkpoints": 2,
    "direction": "min",
    "mode": "reschedule",
}


def sensor(dag_id: str = "templated", **kwargs: Any) -> FineTuningCheckpointSensor:
    with DAG(dag_id, schedule=None):
        return FineTuningCheckpointSensor(**{"task_id": "best", "poke_interval": 0, **TEMPLATED, **kwargs})


def render(task_: Any, context: dict[str, Any], **params: Any) -> Any:
    task_.render_template_fields({**context, "params": {**PARAMS, **params}})
    return task_


def test_checkpoint_sensor_templates_its_condition_and_mode() -> None:
    assert set(FineTuningCheckpointSensor.template_fields) == {
        "job_id",
        "metric",
        "threshold",
        "min_checkpoints",
        "metric_mode",
        "mode",
    }


def test_rendered_numbers_are_numbers(context: dict[str, Any]) -> None:
    rendered = render(sensor(), context)

    assert rendered.job_id == "ftjob-1"
    assert rendered.metric == "valid_loss"
    assert rendered.threshold == 0.5
    assert type(rendered.threshold) is float
    assert rendered.min_checkpoints == 2
    assert type(rendered.min_checkpoints) is int
    assert rendered.metric_mode == "min"
    assert rendered.mode == "reschedule"
    assert rendered.reschedule is True
    assert rendered.condition == CheckpointCondition(2, "valid_loss", 0.5, "min")


def test_a_whole_number_threshold_and_a_native_render(context: dict[str, Any]) -> None:
    rendered = render(sensor(), context, threshold=1, mode="poke", direction="max")
    assert rendered.threshold == 1
    assert rendered.condition == CheckpointCondition(2, "valid_loss", 1, "max")
    assert rendered.reschedule is False

    with DAG("native", schedule=None, render_template_as_native_obj=True):
        native = FineTuningCheckpointSensor(task_id="best", **TEMPLATED)
    render(native, context)
    assert (native.threshold, native.min_checkpoints) == (0.5, 2)
    assert (type(native.threshold), type(native.min_checkpoints)) == (float, int)


def test_templates_are_not_checked_when_the_dag_is_parsed() -> None:
    templated = sensor()
    assert templated.mode == "{{ params.mode }}"
    assert templated.threshold == "{{ params.threshold }}"
    # Plain values are still checked at once.
    with pytest.raises(InvalidRequestError, match="min_checkpoints must be at least 1"):
        FineTuningCheckpointSensor(task_id="best", job_id="ftjob-1", min_checkpoints=0, mode="{{ params.mode }}")
    with pytest.raises((ValueError, AirflowException), match="The mode must be one of"):
        sensor(mode="sometimes")


def test_an_upstream_output_is_accepted_when_the_dag_is_parsed() -> None:
    with DAG("from_upstream", schedule=None):

        @task
        def pick() -> float:
            return 0.5

        waiting = FineTuningCheckpointSensor(task_id="best", job_id="ftjob-1", metric="valid_loss", threshold=pick())
    assert waiting.upstream_task_ids == {"pick"}


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"min_checkpoints": "0"}, "min_checkpoints", "min_checkpoints must be at least 1"),
        ({"min_checkpoints": "two"}, "min_checkpoints", "min_checkpoints must be a whole number, got 'two'"),
        ({"min_checkpoints": 2.5}, "min_checkpoints", "min_checkpoints must be a whole number, got '2.5'"),
        ({"threshold": "low"}, "threshold", "threshold must be a number, got 'low'"),
        ({"direction": "median"}, "metric_mode", "metric_mode must be 'min' or 'max', got 'median'"),
        ({"mode": "sometimes"}, "mode", "mode must be poke or reschedule, got 'sometimes'"),
        ({"metric": ""}, "metric", "a threshold needs the metric it applies to"),
    ],
)
def test_bad_rendered_values_are_refused_naming_the_field(
    context: dict[str, Any], params: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        render(sensor(), context, **params)

    assert str(info.value) == message
    assert info.value.field == field


def test_a_rendered_reschedule_mode_frees_the_worker(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, job(status="running"))
    api.on("GET", CHECKPOINTS, page([checkpoint("c1", 10)]))
    context["ti"].get_first_reschedule_date = lambda _context: None
    rendered = render(sensor(poke_interval=60), context)

    with pytest.raises(AirflowRescheduleException):
        rendered.execute(context)


def test_a_rendered_poke_mode_waits_on_the_worker(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", JOB, job(status="running"))
    api.on(
        "GET",
        CHECKPOINTS,
        page([checkpoint("c1", 10)]),
        page([{**checkpoint("c2", 20), "metrics": {"step": 20, "valid_loss": 0.4}}, checkpoint("c1", 10)]),
    )
    rendered = render(sensor(), context, mode="poke")

    assert rendered.execute(context).endswith("ckpt-step-20")
    assert len(api.sent("GET")) == 4


def test_rendered_values_reach_the_trigger(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    rendered = render(sensor(deferrable=True), context, direction="max", threshold="0.9")

    with pytest.raises(TaskDeferred) as info:
        rendered.execute(context)

    kwargs = info.value.trigger.serialize()[1]
    assert (kwargs["min_checkpoints"], kwargs["metric"], kwargs["threshold"], kwargs["mode"]) == (
        2,
        "valid_loss",
        0.9,
        "max",
    )
    assert api.requests == []


@pytest.mark.parametrize(("mode", "reschedule"), [("{{ params.mode }}", True), ("reschedule", True), ("poke", False)])
def test_the_scheduler_sees_a_templated_mode_as_possibly_rescheduling(mode: str, reschedule: bool) -> None:
    """What the scheduler reads (the serialized task) when it decides whether a reschedule date applies.

    The mode is only known once rendered on the worker, so the scheduler must look for a reschedule
    request, as it does for mapped sensors; otherwise Airflow 3.1 runs a rescheduled sensor again at once.
    """
    dag = sensor(mode=mode).dag
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))

    assert serialized.get_task("best").reschedule is reschedule


def test_the_job_sensor_keeps_its_mode_untemplated() -> None:
    assert "mode" not in FineTuningJobSensor.template_fields
    with pytest.raises((ValueError, AirflowException), match="The mode must be one of"):
        FineTuningJobSensor(task_id="wait", job_id="ftjob-1", mode="{{ params.mode }}")
