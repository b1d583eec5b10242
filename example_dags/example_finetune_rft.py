"""Reinforcement fine-tuning (RFT) of a reasoning model, with the grader checked before any training.

What this DAG shows:

* a grader written once and used three times: validated by the service
  (``FineTuningGraderValidateOperator``), run on known answers to check that it rewards them
  (``FineTuningGraderRunOperator`` with ``min_mean_reward``), then given to the job;
* grader placeholders such as ``{{ sample.output_text }}`` and ``{{ item.label }}`` are left as they are
  by the operators' templating: they are the grader's, not Jinja's;
* reinforcement data, checked before upload: the last message of each line is the prompt the model
  answers, and the other keys (here ``label`` and ``ticket_id``) are the ``item`` the grader reads;
* an RFT job on a reasoning model (``o4-mini``), waited for in the triggerer.

The task: route each Brightwave Home customer message to its support queue (shipping, returns, account,
billing or technical); the grader rewards the queue name equal to the item's ``label``. Waits poll every
``FINETUNE_EXAMPLE_POLL_INTERVAL`` seconds (60 by default).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, XComArg, task

from airflow_provider_finetune.operators.finetune import (
    FineTuningFileUploadOperator,
    FineTuningGraderRunOperator,
    FineTuningGraderValidateOperator,
    FineTuningJobOperator,
)

DATA = Path(__file__).parent / "data"
POLL_INTERVAL = float(os.environ.get("FINETUNE_EXAMPLE_POLL_INTERVAL", "60"))
BASE_MODEL = "o4-mini-2025-04-16"
CONN_ID = "finetune_default"
log = logging.getLogger(__name__)

GRADER = {
    "type": "string_check",
    "name": "queue_matches_label",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}
# Answers known to be right: the grader must give each of them the full reward.
KNOWN_GOOD = [
    {"model_sample": "billing", "item": {"label": "billing", "ticket_id": "BW-T-B02"}},
    {"model_sample": "technical", "item": {"label": "technical", "ticket_id": "BW-T-T06"}},
    {"model_sample": "returns", "item": {"label": "returns", "ticket_id": "BW-T-R04"}},
]

with DAG(
    dag_id="example_finetune_rft",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "finetune", "reinforcement", "grader"],
    doc_md=__doc__,
) as dag:
    validate_grader = FineTuningGraderValidateOperator(
        task_id="validate_grader", grader=GRADER, finetune_conn_id=CONN_ID
    )
    check_grader = FineTuningGraderRunOperator(
        task_id="check_grader_on_known_answers",
        grader=GRADER,
        samples=KNOWN_GOOD,
        min_mean_reward=1.0,
        finetune_conn_id=CONN_ID,
    )

    upload_train = FineTuningFileUploadOperator(
        task_id="upload_train",
        source=DATA / "ticket_routing_train.jsonl",
        method="reinforcement",
        finetune_conn_id=CONN_ID,
    )
    upload_valid = FineTuningFileUploadOperator(
        task_id="upload_valid",
        source=DATA / "ticket_routing_valid.jsonl",
        method="reinforcement",
        finetune_conn_id=CONN_ID,
    )

    fine_tune = FineTuningJobOperator(
        task_id="fine_tune",
        model=BASE_MODEL,
        training_file=upload_train.output,
        validation_file=upload_valid.output,
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": GRADER,
                "hyperparameters": {"n_epochs": 2, "reasoning_effort": "low"},
            },
        },
        suffix="ticket-routing",
        metadata={"dag_id": "{{ dag.dag_id }}", "run_id": "{{ run_id }}"},
        finetune_conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        timeout=timedelta(hours=24),
    )

    @task
    def summarize(model: str, job_id: str) -> dict[str, Any]:
        """The model and the grader the job trained with, as the service reports them."""
        from airflow_provider_finetune.hooks.finetune import FineTuningHook

        job = FineTuningHook(CONN_ID).get_job(job_id)
        method = job.method.model_dump(mode="json", exclude_none=True) if job.method else {}
        reinforcement = method.get("reinforcement", {})
        summary = {
            "fine_tuned_model": model,
            "job_id": job.id,
            "grader": reinforcement.get("grader"),
            "hyperparameters": reinforcement.get("hyperparameters", {}),
        }
        log.info("RFT model %s: %s", model, summary)
        return summary

    # Nothing is uploaded or billed until the grader has passed both checks.
    validate_grader >> check_grader >> [upload_train, upload_valid]
    summarize(fine_tune.output, XComArg(fine_tune, key="job_id"))
