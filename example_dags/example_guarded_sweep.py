"""A guarded hyperparameter sweep: quota, budget, early stopping and an evaluation gate before the Asset.

What this DAG shows:

* a sweep as dynamic task mapping: one ``FineTuningJobOperator`` task instance, and so one job, per grid
  point (``partial(...).expand_kwargs(...)``), each waiting in the triggerer (``deferrable=True``);
* respecting a quota: ``max_active_jobs=2`` makes the third point wait (deferred) until fewer than two jobs
  on the base model are active, instead of being refused by the service or crowding out other teams;
* a budget cap: ``max_cost`` with ``price_per_million_tokens`` and the upload's ``estimated_tokens``: a point
  whose estimate is over the cap fails before anything is billed, and a job whose trained tokens pass it is
  cancelled;
* early stopping: a job whose ``valid_loss`` has not improved for ``patience`` evaluations is cancelled and
  its best checkpoint's model returned (XComs ``early_stopped``, ``early_stopping_reason``,
  ``best_checkpoint``). The third point carries the tag ``emulator_overfit_after``: the local emulator makes
  its validation loss turn after 30% of training, so that a run against the emulator shows a job stopped
  early (a real service keeps it as a plain metadata tag);
* choosing the sweep's best model by its validation loss, then an evaluation gate
  (``FineTuningEvaluateOperator``): the model must beat the base model on held-out prompts and reach
  ``min_score``, or the task fails and nothing is published;
* publishing the model as an event of ``SWEEP_MODEL_ASSET`` whose ``extra`` holds the gate's result (and the
  sweep's), so that a deploy DAG scheduled on the Asset reads what was measured.

Waits poll every ``FINETUNE_EXAMPLE_POLL_INTERVAL`` seconds (60 by default; the tests set it lower).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, XComArg, task

from airflow_provider_finetune.operators.evaluate import FineTuningEvaluateOperator
from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator

DATA = Path(__file__).parent / "data"
POLL_INTERVAL = float(os.environ.get("FINETUNE_EXAMPLE_POLL_INTERVAL", "60"))
BASE_MODEL = "gpt-4o-mini-2024-07-18"
CONN_ID = "finetune_default"
log = logging.getLogger(__name__)

#: At most this many of the sweep's jobs (of any DAG, on the base model) are active at once.
MAX_ACTIVE_JOBS = 2
#: Training price of the base model, per million trained tokens (the provider ships no price table).
PRICE_PER_MILLION_TOKENS = {BASE_MODEL: 3.0}
#: The most one point may cost.
MAX_COST_PER_JOB = 1.0
#: Stop a job whose validation loss has not improved for five evaluations.
EARLY_STOPPING = {"metric": "valid_loss", "mode": "min", "patience": 5}

GRID: list[dict[str, Any]] = [
    {"n_epochs": 2, "learning_rate_multiplier": 0.5},
    {"n_epochs": 3, "learning_rate_multiplier": 1.0},
    {"n_epochs": 3, "learning_rate_multiplier": 2.0, "emulator_overfit_after": "0.3"},
]

SWEEP_MODEL_ASSET = Asset(name="finetune_support_assistant_sweep", uri="finetune://brightwave/support-assistant/sweep")


def _job_kwargs(point: dict[str, Any]) -> dict[str, Any]:
    """One mapped job's arguments: its hyperparameters, a suffix naming them, and its tags."""
    hyperparameters = {k: v for k, v in point.items() if k in ("n_epochs", "learning_rate_multiplier")}
    tags = {k: v for k, v in point.items() if k not in hyperparameters}
    suffix = f"sweep-e{point['n_epochs']}-lr{point['learning_rate_multiplier']}".replace(".", "")
    return {
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "suffix": suffix,
        "metadata": {"sweep": "guarded", **tags},
    }


with DAG(
    dag_id="example_guarded_sweep",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "min_score": Param(
            0.7, type="number", minimum=0, maximum=1, description="Share of held-out prompts the model must get right."
        ),
    },
    tags=["example", "finetune", "sweep", "early-stopping", "evaluation", "asset"],
    doc_md=__doc__,
) as dag:
    upload_train = FineTuningFileUploadOperator(
        task_id="upload_train", source=DATA / "support_train.jsonl", method="supervised", finetune_conn_id=CONN_ID
    )
    upload_valid = FineTuningFileUploadOperator(
        task_id="upload_valid", source=DATA / "support_valid.jsonl", method="supervised", finetune_conn_id=CONN_ID
    )

    fine_tune = FineTuningJobOperator.partial(
        task_id="fine_tune",
        model=BASE_MODEL,
        training_file=upload_train.output,
        validation_file=upload_valid.output,
        finetune_conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        timeout=timedelta(hours=12),
        max_active_jobs=MAX_ACTIVE_JOBS,
        quota_retry_interval=POLL_INTERVAL,
        max_cost=MAX_COST_PER_JOB,
        price_per_million_tokens=PRICE_PER_MILLION_TOKENS,
        training_tokens=XComArg(upload_train, key="estimated_tokens"),
        early_stopping=EARLY_STOPPING,
    ).expand_kwargs([_job_kwargs(point) for point in GRID])

    @task(multiple_outputs=True)
    def pick_best(models: list[str], ti: Any = None) -> dict[str, Any]:
        """The point whose returned model has the lowest valid_loss (its best checkpoint, if it stopped early)."""
        indexes = list(range(len(GRID)))

        def pulled(key: str) -> list[Any]:
            return list(ti.xcom_pull(task_ids="fine_tune", key=key, map_indexes=indexes))

        results = []
        for point, model, job_id, stopped, best, checkpoints, reason in zip(
            GRID,
            models,
            pulled("job_id"),
            pulled("early_stopped"),
            pulled("best_checkpoint"),
            pulled("checkpoints"),
            pulled("early_stopping_reason"),
            strict=True,
        ):
            # A job stopped early returns its best checkpoint; one that ran to its end, its final model.
            scored = best if stopped else max(checkpoints, key=lambda c: c["step_number"])
            results.append(
                {
                    "n_epochs": point["n_epochs"],
                    "learning_rate_multiplier": point["learning_rate_multiplier"],
                    "fine_tuned_model": model,
                    "job_id": job_id,
                    "early_stopped": bool(stopped),
                    "early_stopping_reason": reason if stopped else None,
                    "valid_loss": scored["metrics"]["valid_loss"],
                    "step": scored["step_number"],
                }
            )
            log.info(
                "%s: valid_loss %.4f at step %s%s",
                model,
                results[-1]["valid_loss"],
                scored["step_number"],
                " (stopped early)" if stopped else "",
            )
        best_point = min(results, key=lambda r: r["valid_loss"])
        log.info("Best of %d points: %s", len(results), best_point)
        return {"fine_tuned_model": best_point["fine_tuned_model"], "summary": {**best_point, "sweep": results}}

    best = pick_best(fine_tune.output)

    # The gate publishes the Asset event itself, only when the model passes: the extra holds its result.
    evaluation_gate = FineTuningEvaluateOperator(
        task_id="evaluation_gate",
        model=best["fine_tuned_model"],
        baseline=BASE_MODEL,
        eval_file=DATA / "support_eval.jsonl",
        min_score="{{ params.min_score }}",
        asset_extra=best["summary"],
        outlets=[SWEEP_MODEL_ASSET],
        finetune_conn_id=CONN_ID,
    )
