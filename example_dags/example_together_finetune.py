"""Fine-tuning on Together AI with Together's own options: LoRA, an absolute learning rate, early stopping, and
a second job that continues from the first one's checkpoint with full training.

What this DAG shows:

* the connection names the service (``service: together``); the operators are the same as for OpenAI, and
  Together's own create fields go in ``service_options`` (templated, validated before any request):
  ``training_type``, ``lora_r``/``lora_alpha``/``lora_dropout``, ``learning_rate`` (Together's absolute rate:
  OpenAI's ``learning_rate_multiplier`` is refused, not translated), ``n_checkpoints``, ``n_evals``,
  ``early_stopping_*``, ``from_checkpoint``...;
* uploads go through Together's own flow (its redirect, the ``PUT`` of the content, the service's check of the
  file afterwards): a file Together finds invalid fails the upload task, by name;
* the price before paying: each job operator asks Together's estimate first and fails before the create when
  Together says the account may not proceed; the estimate goes to XCom (``price_estimate``,
  ``estimated_cost``), and a completed job's ``total_price`` and early-stopping results too;
* continuing from a checkpoint: Together names a checkpoint ``{job_id}:{step}``, the form ``from_checkpoint``
  takes, and the operator's ``checkpoints`` XCom carries it.

Waits poll every ``FINETUNE_EXAMPLE_POLL_INTERVAL`` seconds (60 by default; the tests set it lower).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, XComArg, task

from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator

DATA = Path(__file__).parent / "data"
POLL_INTERVAL = float(os.environ.get("FINETUNE_EXAMPLE_POLL_INTERVAL", "60"))
BASE_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
CONN_ID = "finetune_default"  # a connection with the extra {"service": "together"}
log = logging.getLogger(__name__)

with DAG(
    dag_id="example_together_finetune",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 4, tz="UTC"),
    catchup=False,
    tags=["example", "finetune", "together"],
    doc_md=__doc__,
) as dag:
    upload_train = FineTuningFileUploadOperator(
        task_id="upload_train", source=DATA / "support_train.jsonl", method="supervised", finetune_conn_id=CONN_ID
    )
    upload_valid = FineTuningFileUploadOperator(
        task_id="upload_valid", source=DATA / "support_valid.jsonl", method="supervised", finetune_conn_id=CONN_ID
    )

    fine_tune = FineTuningJobOperator(
        task_id="fine_tune",
        model=BASE_MODEL,
        training_file=upload_train.output,
        validation_file=upload_valid.output,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        suffix="support-{{ dag_run.run_after | ds_nodash }}",
        service_options={
            "training_type": "lora",
            "lora_r": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.05,
            "learning_rate": 0.0001,
            "warmup_ratio": 0.05,
            "n_checkpoints": 3,
            "n_evals": 6,
            "early_stopping_enabled": True,
            "early_stopping_patience": 2,
        },
        finetune_conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        timeout=timedelta(hours=12),
    )

    # A second job that continues from the first one's newest checkpoint, with full training this time.
    continue_full = FineTuningJobOperator(
        task_id="continue_full",
        model=BASE_MODEL,
        training_file=upload_train.output,
        suffix="support-full-{{ dag_run.run_after | ds_nodash }}",
        service_options={
            "training_type": "full",
            "learning_rate": 0.00001,
            "from_checkpoint": "{{ ti.xcom_pull(task_ids='fine_tune', key='checkpoints')[0]"
            "['fine_tuned_model_checkpoint'] }}",
        },
        finetune_conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        timeout=timedelta(hours=12),
    )
    fine_tune >> continue_full

    @task
    def report(
        estimate: dict[str, Any], total_price: Any, early_stopping: dict[str, Any], model: str
    ) -> dict[str, Any]:
        """What the first job was estimated to cost, what Together billed, and where early stopping stopped."""
        summary = {
            "model": model,
            "estimated_total_price": estimate.get("estimated_total_price"),
            "total_price": total_price,
            "early_stopping": early_stopping,
        }
        log.info("Together job summary: %s", summary)
        return summary

    report(
        XComArg(fine_tune, key="price_estimate"),
        XComArg(fine_tune, key="total_price"),
        XComArg(fine_tune, key="early_stopping"),
        continue_full.output,
    )
