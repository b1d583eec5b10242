"""Direct Preference Optimization (DPO) on preference pairs: a preferred and a non-preferred answer.

What this DAG shows:

* preference data, checked as DPO data before upload (``method="dpo"``: every line needs ``input``,
  ``preferred_output`` and ``non_preferred_output``);
* a DPO job: ``method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}``; ``beta`` weighs how
  far the model may move from the base model towards the preferred answers;
* creating a job without waiting (``wait_for_completion=False``) and waiting for it in a separate,
  deferrable ``FineTuningJobSensor``: the sensor only watches, so it may be cleared or retried without
  touching the job, and its return value is the fine-tuned model.

The pairs (``data/support_preferences_*.jsonl``) prefer a real Brightwave support answer to a vague or
deflecting one. Waits poll every ``FINETUNE_EXAMPLE_POLL_INTERVAL`` seconds (60 by default).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, XComArg, task

from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator
from airflow_provider_finetune.sensors.finetune import FineTuningJobSensor

DATA = Path(__file__).parent / "data"
POLL_INTERVAL = float(os.environ.get("FINETUNE_EXAMPLE_POLL_INTERVAL", "60"))
BASE_MODEL = "gpt-4.1-mini-2025-04-14"
CONN_ID = "finetune_default"
log = logging.getLogger(__name__)

with DAG(
    dag_id="example_finetune_dpo",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "finetune", "dpo"],
    doc_md=__doc__,
) as dag:
    upload_train = FineTuningFileUploadOperator(
        task_id="upload_train",
        source=DATA / "support_preferences_train.jsonl",
        method="dpo",
        finetune_conn_id=CONN_ID,
    )
    upload_valid = FineTuningFileUploadOperator(
        task_id="upload_valid",
        source=DATA / "support_preferences_valid.jsonl",
        method="dpo",
        finetune_conn_id=CONN_ID,
    )

    create_job = FineTuningJobOperator(
        task_id="create_dpo_job",
        model=BASE_MODEL,
        training_file=upload_train.output,
        validation_file=upload_valid.output,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 2}}},
        suffix="support-dpo",
        metadata={"dag_id": "{{ dag.dag_id }}", "run_id": "{{ run_id }}"},
        finetune_conn_id=CONN_ID,
        wait_for_completion=False,
    )

    wait_for_job = FineTuningJobSensor(
        task_id="wait_for_job",
        job_id=XComArg(create_job, key="job_id"),
        finetune_conn_id=CONN_ID,
        deferrable=True,
        poke_interval=POLL_INTERVAL,
        timeout=12 * 60 * 60,
    )

    @task
    def summarize(model: str, job_id: str) -> dict[str, Any]:
        """What the job trained: the model, the resolved hyperparameters and the tokens billed."""
        from airflow_provider_finetune.hooks.finetune import FineTuningHook

        job = FineTuningHook(CONN_ID).get_job(job_id)
        method = job.method.model_dump(mode="json", exclude_none=True) if job.method else {}
        summary = {
            "fine_tuned_model": model,
            "job_id": job.id,
            "method": method.get("type"),
            "hyperparameters": method.get("dpo", {}).get("hyperparameters", {}),
            "trained_tokens": job.trained_tokens,
        }
        log.info("DPO model %s: %s", model, summary)
        return summary

    summarize(wait_for_job.output, XComArg(create_job, key="job_id"))
