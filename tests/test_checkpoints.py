"""The checkpoint wait's rules, step by step, with no I/O and an injected clock."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_finetune.exceptions import AuthenticationError, InternalServerError
from airflow_provider_finetune.models import FineTuningJob, FineTuningJobCheckpoint
from airflow_provider_finetune.rules.checkpoints import CheckpointCondition, ReadCheckpoints, judge, watch_checkpoints
from airflow_provider_finetune.rules.waiting import WAIT_ERROR, WAIT_TIMEOUT, Pause


def job(status: str = "running") -> FineTuningJob:
    return FineTuningJob.model_validate({"id": "ftjob-1", "status": status})


def ckpt(step: int, valid_loss: float) -> FineTuningJobCheckpoint:
    return FineTuningJobCheckpoint.model_validate(
        {
            "id": f"ckpt-{step}",
            "step_number": step,
            "fine_tuned_model_checkpoint": f"ft:m:ckpt-step-{step}",
            "metrics": {"step": step, "valid_loss": valid_loss},
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def start(condition: CheckpointCondition, **kwargs: Any) -> tuple[Any, Clock]:
    clock = Clock()
    steps = watch_checkpoints("ftjob-1", condition, clock=clock, **kwargs)
    assert next(steps) == ReadCheckpoints("ftjob-1")
    return steps, clock


def test_waits_then_finds_the_best_checkpoint_under_the_threshold() -> None:
    steps, clock = start(CheckpointCondition(metric="valid_loss", threshold=0.5), poll_interval=30)
    assert steps.send((job(), [ckpt(10, 0.9)])) == Pause(30)
    clock.now += 30
    assert next(steps) == ReadCheckpoints("ftjob-1")
    with pytest.raises(StopIteration) as done:
        steps.send((job(), [ckpt(10, 0.9), ckpt(20, 0.4), ckpt(30, 0.45)]))
    outcome = done.value.value
    assert outcome.status == "found"
    assert outcome.checkpoint.id == "ckpt-20"


def test_an_ended_job_without_a_match_ends_the_wait() -> None:
    steps, _ = start(CheckpointCondition(min_checkpoints=3))
    with pytest.raises(StopIteration) as done:
        steps.send((job("succeeded"), [ckpt(10, 0.9)]))
    assert done.value.value.status == "job_ended"
    assert "no checkpoint meets at least 3 checkpoint(s)" in done.value.value.message


def test_transient_failures_in_a_row_end_it_and_a_success_resets_the_count() -> None:
    steps, _ = start(CheckpointCondition(min_checkpoints=5), max_consecutive_errors=2, poll_interval=1)
    assert steps.send(InternalServerError(503, "busy")) == Pause(1)
    next(steps)
    assert steps.send((job(), [])) == Pause(1)  # a good read resets the count
    next(steps)
    assert steps.send(InternalServerError(503, "busy")) == Pause(1)
    next(steps)
    with pytest.raises(StopIteration) as done:
        steps.send(InternalServerError(503, "still busy"))
    assert done.value.value.status == WAIT_ERROR


def test_a_final_failure_ends_it_at_once() -> None:
    steps, _ = start(CheckpointCondition())
    with pytest.raises(StopIteration) as done:
        steps.send(AuthenticationError(401, "bad key"))
    assert done.value.value.status == WAIT_ERROR


def test_the_deadline_is_absolute_and_shortens_the_last_pause() -> None:
    steps, clock = start(CheckpointCondition(min_checkpoints=9), poll_interval=60, deadline=1020.0)
    assert steps.send((job(), [])) == Pause(20.0)
    clock.now = 1020.0
    next(steps)
    with pytest.raises(StopIteration) as done:
        steps.send((job(), []))
    assert done.value.value.status == WAIT_TIMEOUT


def test_judge_is_what_the_sensor_and_the_trigger_both_decide_by() -> None:
    condition = CheckpointCondition(metric="valid_loss", threshold=0.5)
    assert judge(condition, job(), [ckpt(10, 0.9)]).status is None
    assert judge(condition, job("cancelled"), [ckpt(10, 0.9)]).status == "job_ended"
    found = judge(condition, job("cancelled"), [ckpt(10, 0.3)])
    assert found.status == "found"
    assert found.checkpoint is not None
    assert found.checkpoint.id == "ckpt-10"
