"""Fine-tuning on Fireworks AI with Fireworks' own options: LoRA rank, an absolute learning rate, early stopping.

What this DAG shows:

* the same operators as every other service: only the connection (``service: fireworks`` and ``account_id``)
  and the options in ``service_options`` are Fireworks';
* training data checked before anything is billed, then uploaded as Fireworks datasets
  (``FineTuningFileUploadOperator`` creates, uploads, validates and waits until each dataset is ``READY``,
  and returns its resource name);
* ``service_options`` as Fireworks takes them: ``learning_rate`` is Fireworks' absolute rate (OpenAI's
  ``learning_rate_multiplier`` would be refused with a line naming it), ``lora_rank``, ``epochs``,
  ``early_stop`` on the evaluation dataset (``validation_file``), and ``output_model``, the fine-tuned model's
  id (Fireworks has no suffix), templated by the run;
* a deferred wait whose progress lines are the job's ``jobProgress``; the return value is the output model.

Point ``finetune_default`` at Fireworks to run it::

    airflow connections add finetune_default --conn-type finetune --conn-password "$FIREWORKS_API_KEY" \\
        --conn-extra '{"service": "fireworks", "account_id": "my-account"}'

Waits poll every ``FINETUNE_EXAMPLE_POLL_INTERVAL`` seconds (60 by default).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator

DATA = Path(__file__).parent / "data"
POLL_INTERVAL = float(os.environ.get("FINETUNE_EXAMPLE_POLL_INTERVAL", "60"))
BASE_MODEL = "accounts/fireworks/models/llama-v3p1-8b-instruct"
CONN_ID = "finetune_default"
log = logging.getLogger(__name__)

with DAG(
    dag_id="example_fireworks_finetune",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "finetune", "fireworks"],
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
        service_options={
            "learning_rate": 1e-4,
            "lora_rank": 16,
            "epochs": 2,
            "early_stop": True,
            "output_model": "support-{{ dag_run.run_after | ds_nodash }}",
        },
        finetune_conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        timeout=timedelta(hours=12),
    )

    @task
    def announce(model: str) -> str:
        """Say which model the run made (a deployment would go from here)."""
        log.info("Fireworks made %s", model)
        return model

    announce(fine_tune.output)
