"""A hyperparameter sweep: one fine-tuning job per point of a grid, then the best model by its metrics.

What this DAG shows:

* dynamic task mapping over fine-tuning jobs: ``FineTuningJobOperator.partial(...).expand_kwargs(...)``
  makes one task instance, and so one job, per grid point (here 2 epoch counts x 2 learning-rate
  multipliers = 4 jobs). Each mapped instance tags its job with its own map index, so a retry of one
  instance reattaches to its job instead of starting a fifth;
* deferring the four waits to the triggerer, so that the sweep holds no worker slot while it trains;
* reading every mapped instance's ``checkpoints`` XCom and choosing the job whose final checkpoint has the
  lowest validation loss.

Waits poll every ``FINETUNE_EXAMPLE_POLL_INTERVAL`` seconds (60 by default).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from itertools import product
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator

DATA = Path(__file__).parent / "data"
POLL_INTERVAL = float(os.environ.get("FINETUNE_EXAMPLE_POLL_INTERVAL", "60"))
BASE_MODEL = "gpt-4o-mini-2024-07-18"
CONN_ID = "finetune_default"
log = logging.getLogger(__name__)

N_EPOCHS = (2, 3)
LEARNING_RATE_MULTIPLIERS = (0.5, 1.0)
GRID = [
    {"n_epochs": n_epochs, "learning_rate_multiplier": multiplier}
    for n_epochs, multiplier in product(N_EPOCHS, LEARNING_RATE_MULTIPLIERS)
]


def _job_kwargs(point: dict[str, Any]) -> dict[str, Any]:
    """The arguments of one mapped job: its method and a suffix naming the grid point."""
    suffix = f"sweep-e{point['n_epochs']}-lr{point['learning_rate_multiplier']}".replace(".", "")
    return {"method": {"type": "supervised", "supervised": {"hyperparameters": point}}, "suffix": suffix}


with DAG(
    dag_id="example_finetune_sweep",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "finetune", "sweep", "dynamic-task-mapping"],
    doc_md=__doc__,
) as dag:
    upload_train = FineTuningFileUploadOperator(
        task_id="upload_train", source=DATA / "support_train.jsonl", finetune_conn_id=CONN_ID
    )
    upload_valid = FineTuningFileUploadOperator(
        task_id="upload_valid", source=DATA / "support_valid.jsonl", finetune_conn_id=CONN_ID
    )

    fine_tune = FineTuningJobOperator.partial(
        task_id="fine_tune",
        model=BASE_MODEL,
        training_file=upload_train.output,
        validation_file=upload_valid.output,
        metadata={"dag_id": "{{ dag.dag_id }}", "run_id": "{{ run_id }}", "sweep_point": "{{ ti.map_index }}"},
        finetune_conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        timeout=timedelta(hours=12),
    ).expand_kwargs([_job_kwargs(point) for point in GRID])

    @task
    def pick_best(models: list[str], ti: Any = None) -> dict[str, Any]:
        """The model whose final checkpoint has the lowest valid_loss, with the whole sweep's results."""
        indexes = list(range(len(GRID)))
        checkpoints = ti.xcom_pull(task_ids="fine_tune", key="checkpoints", map_indexes=indexes)
        job_ids = ti.xcom_pull(task_ids="fine_tune", key="job_id", map_indexes=indexes)
        results = []
        for point, model, job_id, points in zip(GRID, models, job_ids, checkpoints, strict=True):
            final = max(points, key=lambda c: c["step_number"])
            results.append(
                {
                    **point,
                    "fine_tuned_model": model,
                    "job_id": job_id,
                    "valid_loss": final["metrics"]["valid_loss"],
                    "steps": final["step_number"],
                }
            )
            log.info(
                "n_epochs=%s learning_rate_multiplier=%s: final valid_loss %.4f after %s steps (%s)",
                point["n_epochs"],
                point["learning_rate_multiplier"],
                final["metrics"]["valid_loss"],
                final["step_number"],
                model,
            )
        best = min(results, key=lambda r: r["valid_loss"])
        log.info("Best of %d jobs: %s (valid_loss %.4f)", len(results), best["fine_tuned_model"], best["valid_loss"])
        return {"best": best, "results": results}

    pick_best(fine_tune.output)
