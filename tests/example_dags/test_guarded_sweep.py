"""The guarded sweep example: wired as it says, and run to success against the emulator, end to end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from tests.example_dags.conftest import Emulator, connection_to
from tests.example_dags.test_example_dags import DATA, asset_events, run, task_states, xcoms
from tests.integration.conftest import API_KEY

DAG_ID = "example_guarded_sweep"
ASSET_NAME = "finetune_support_assistant_sweep"


def test_the_sweep_is_wired_as_documented(example_dag_bag: Any) -> None:
    dag = example_dag_bag.dags[DAG_ID]
    fine_tune = dag.get_task("fine_tune")
    points = fine_tune.expand_input.value
    assert len(points) == 3
    assert len({p["suffix"] for p in points}) == 3
    partial = fine_tune.partial_kwargs
    assert partial["deferrable"] is True
    assert partial["max_active_jobs"] == 2
    assert partial["max_cost"] == 1.0
    assert partial["early_stopping"] == {"metric": "valid_loss", "mode": "min", "patience": 5}
    gate = dag.get_task("evaluation_gate")
    assert gate.upstream_task_ids == {"pick_best"}
    assert [asset.name for asset in gate.outlets] == [ASSET_NAME]
    assert dag.get_task("pick_best").upstream_task_ids == {"fine_tune"}


@pytest.fixture(scope="module")
def sweep_emulator() -> Iterator[EmulatorServer]:
    """Jobs of the sweep train for about 6 s: a wait that starts a few seconds late still sees one overfit."""
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, speed=10, seed=13)) as server:
        yield server


@pytest.mark.integration
def test_the_sweep_stops_a_job_early_gates_the_best_model_and_publishes_the_result(
    serialized_example_dags: Any, sweep_emulator: EmulatorServer
) -> None:
    emulator = Emulator(sweep_emulator)
    with connection_to(sweep_emulator):
        hook = FineTuningHook()
        # Two jobs of another team on the same base model already take the quota of two active jobs.
        training = hook.upload_file((DATA / "support_valid.jsonl").read_bytes(), filename="theirs.jsonl").id
        theirs = [hook.create_job({"model": "gpt-4o-mini-2024-07-18", "training_file": training}) for _ in range(2)]
        dag_run = run(serialized_example_dags, DAG_ID)
        states = task_states(dag_run.run_id, DAG_ID)
        assert set(states.values()) == {"success"}, states
        jobs = [xcoms(dag_run.run_id, DAG_ID, "fine_tune", map_index=i) for i in range(3)]
        remote = [hook.get_job(job["job_id"]) for job in jobs]
        theirs = [hook.get_job(job.id) for job in theirs]
    assert emulator.counters()["jobs_created"] == 5

    # Budget: each point was estimated before it was created, under the cap.
    assert all(0 < job["estimated_cost"] <= 1.0 for job in jobs)
    # Quota: no point was created before one of the other team's jobs had ended.
    first_end = min(job.finished_at for job in theirs if job.finished_at is not None)
    assert min(job.created_at for job in remote) >= first_end

    # Early stopping: the overfitting point was cancelled half-way and returned its best checkpoint, the one
    # made before its validation loss turned. The others stop early too when their (noisy) validation loss
    # levels off for five evaluations before their end, else they run to it: either way, what they return
    # says which.
    stopped = jobs[2]
    assert stopped["early_stopped"] is True
    assert remote[2].status.value == "cancelled"
    assert remote[2].fine_tuned_model is None
    assert stopped["return_value"] == stopped["best_checkpoint"]["fine_tuned_model_checkpoint"]
    assert stopped["return_value"].endswith(":ckpt-step-40")
    assert "valid_loss has not improved" in stopped["early_stopping_reason"]
    for job, made in zip(jobs, remote, strict=True):
        if job["early_stopped"]:
            assert made.status.value == "cancelled"
            assert job["return_value"] == job["best_checkpoint"]["fine_tuned_model_checkpoint"]
        else:
            assert made.status.value == "succeeded"
            assert job["return_value"] == made.fine_tuned_model

    # The best point by validation loss went through the gate, and the Asset event carries the gate's result.
    summary = xcoms(dag_run.run_id, DAG_ID, "pick_best")["summary"]
    losses = {r["fine_tuned_model"]: r["valid_loss"] for r in summary["sweep"]}
    assert summary["fine_tuned_model"] == min(losses, key=losses.__getitem__)
    evaluation = xcoms(dag_run.run_id, DAG_ID, "evaluation_gate")["return_value"]
    assert evaluation["model"] == summary["fine_tuned_model"]
    assert evaluation["passed"] is True
    assert evaluation["score"] > evaluation["baseline_score"]
    assert evaluation["min_score"] == 0.7
    events = asset_events(ASSET_NAME, dag_run.run_id)
    assert len(events) == 1
    extra = events[0]["extra"]
    assert events[0]["source_task_id"] == "evaluation_gate"
    assert extra["fine_tuned_model"] == summary["fine_tuned_model"]
    assert extra["evaluation"] == evaluation
    assert len(extra["sweep"]) == 3
    assert extra["sweep"][2]["early_stopped"] is True
