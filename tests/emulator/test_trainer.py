"""The simulated trainer's pure functions: auto hyperparameters, plans, and time with holds."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_finetune.emulator.config import Timings
from airflow_provider_finetune.emulator.errors import APIError
from airflow_provider_finetune.emulator.store import Store, token
from airflow_provider_finetune.emulator.trainer import (
    SimJob,
    auto_batch_size,
    auto_n_epochs,
    durations,
    metrics_at,
    plan_training,
    requested_hyperparameters,
    resolve_hyperparameters,
)


@pytest.mark.parametrize(
    ("examples", "epochs"), [(10, 10), (12, 8), (33, 3), (100, 3), (8333, 3), (10_000, 2), (100_000, 1)]
)
def test_auto_epochs(examples: int, epochs: int) -> None:
    assert auto_n_epochs(examples) == epochs


@pytest.mark.parametrize(("examples", "batch"), [(10, 1), (1000, 2), (50_000, 100), (1_000_000, 256)])
def test_auto_batch_size(examples: int, batch: int) -> None:
    assert auto_batch_size(examples) == batch


def test_auto_is_resolved_and_given_values_are_kept() -> None:
    requested = requested_hyperparameters("dpo", {"n_epochs": 2})
    assert requested == {"beta": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": 2}
    assert resolve_hyperparameters(requested, 500) == {
        "beta": 0.1,
        "batch_size": 1,
        "learning_rate_multiplier": 1.8,
        "n_epochs": 2,
    }
    reinforcement = resolve_hyperparameters(requested_hyperparameters("reinforcement", None), 100)
    assert reinforcement["reasoning_effort"] == "default"
    assert reinforcement["eval_interval"] == 30


def test_a_plan_keeps_checkpoints_of_the_last_three_epochs() -> None:
    plan = plan_training({"batch_size": 3, "n_epochs": 5}, 10, 1000, force_failure=False)
    assert plan["steps_per_epoch"] == 4
    assert plan["steps"] == 20
    assert plan["checkpoint_steps"] == [12, 16, 20]
    assert plan["fail_step"] is None
    failing = plan_training({"batch_size": 3, "n_epochs": 5}, 10, 1000, force_failure=True)
    assert failing["fail_step"] == 10
    assert failing["checkpoint_steps"] == []


def test_running_time_is_bounded_and_scaled_by_speed() -> None:
    timings = Timings()
    assert durations(timings, 1.0, 10)["running"] == timings.min_running
    assert durations(timings, 1.0, 100)["running"] == 50
    assert durations(timings, 1.0, 100_000)["running"] == timings.max_running
    assert durations(timings, 50.0, 100)["running"] == 1.0


def job(holds: list[list[Any]] | None = None) -> SimJob:
    plan = plan_training({"batch_size": 1, "n_epochs": 2}, 10, 100, force_failure=False)
    return SimJob(
        {
            "id": "ftjob-x",
            "t0": 1000.0,
            "seed": 1,
            "model": "gpt-4o-mini-2024-07-18",
            "organization_name": "org",
            "suffix": None,
            "metadata": None,
            "validation_file": None,
            "plan": plan,
            "file_error": None,
            "durations": {"validating": 1.0, "queued": 1.0, "running": 20.0, "requeue": 2.0},
            "holds": holds or [],
            "cancelled_at": None,
            "events": [],
        }
    )


def test_active_time_skips_holds_and_its_inverse_agrees() -> None:
    held = job([[1005.0, 1010.0, "paused"], [1010.0, 1012.0, "queued"]])
    assert held.active(1004.0) == 4.0
    assert held.active(1011.0) == 5.0
    assert held.active(1020.0) == 13.0
    assert held.time_at(5.0) == 1005.0
    assert held.time_at(6.0) == 1013.0
    open_hold = job([[1005.0, None, "paused"]])
    assert open_hold.active(5000.0) == 5.0
    assert open_hold.time_at(6.0) == float("inf")


def test_snapshots_follow_the_phases() -> None:
    simulated = job()
    assert [simulated.snapshot(1000.0 + t).status for t in (0.5, 1.5, 2.5, 22.5)] == [
        "validating_files",
        "queued",
        "running",
        "succeeded",
    ]
    assert simulated.snapshot(1012.0).steps_done == 10
    assert simulated.snapshot(1012.0).estimated_finish == 1022.0
    assert simulated.snapshot(2000.0).finished_at == 1022.0


def test_transitions_are_checked() -> None:
    simulated = job()
    simulated.pause(1003.0)
    assert simulated.snapshot(1100.0).status == "paused"
    with pytest.raises(APIError) as raised:
        simulated.pause(1100.0)
    assert raised.value.status == 409
    simulated.resume(1100.0)
    assert simulated.snapshot(1101.0).status == "queued"
    assert simulated.snapshot(1102.5).status == "running"
    simulated.cancel(1103.0)
    assert simulated.snapshot(5000.0).status == "cancelled"
    assert [message for _, _, message in simulated.record["events"]] == [
        "Fine-tuning job paused",
        "Fine-tuning job resumed",
        "Fine-tuning job cancelled",
    ]


def test_metrics_are_deterministic_and_improve() -> None:
    assert metrics_at(5, 10, 100, validation=True) == metrics_at(5, 10, 100, validation=True)
    assert metrics_at(5, 10, 100, validation=False) != metrics_at(6, 10, 100, validation=False)
    assert (
        metrics_at(5, 100, 100, validation=False)["train_loss"] < metrics_at(5, 1, 100, validation=False)["train_loss"]
    )


def test_ids_are_deterministic_for_a_seed() -> None:
    assert [Store(seed=1).new_id("file-") for _ in range(2)] == [Store(seed=1).new_id("file-")] * 2
    first, second = Store(seed=1), Store(seed=1)
    assert [first.new_id("x-") for _ in range(3)] == [second.new_id("x-") for _ in range(3)]
    assert Store(seed=2).new_id("x-") != Store(seed=1).new_id("x-")
    assert len(token("a", length=8)) == 8
    assert token("a") != token("b")
