"""A job in a DAG that only the ``partial`` user may read (tests/ui/auth_manager.py), on a service of its own."""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator

with DAG(
    dag_id="finetune_ui_private",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
):
    upload = FineTuningFileUploadOperator(
        task_id="upload", source=str(Path(__file__).parent / "train.jsonl"), finetune_conn_id="finetune_private"
    )
    FineTuningJobOperator(
        task_id="fine_tune",
        model="gpt-4o-mini-2024-07-18",
        training_file=upload.output,
        finetune_conn_id="finetune_private",
        wait_for_completion=False,
    )
