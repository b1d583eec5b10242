"""Jobs for the UI's browser tests: one that trains to the end on a fast service, one left running on a slow one."""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator

DATA = str(Path(__file__).parent / "train.jsonl")
VALID = str(Path(__file__).parent / "valid.jsonl")
MODEL = "gpt-4o-mini-2024-07-18"

with DAG(
    dag_id="finetune_ui_demo",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["finetune"],
):
    upload = FineTuningFileUploadOperator(task_id="upload", source=DATA)
    upload_valid = FineTuningFileUploadOperator(task_id="upload_valid", source=VALID)
    FineTuningJobOperator(
        task_id="fine_tune",
        model=MODEL,
        training_file=upload.output,
        validation_file=upload_valid.output,
        # 12 examples x 10 epochs: 120 steps, more than the emulator reports metrics events for (100).
        hyperparameters={"n_epochs": 10},
        suffix="support",
        poll_interval=0.2,
        deferrable=False,
    )
    upload_slow = FineTuningFileUploadOperator(task_id="upload_slow", source=DATA, finetune_conn_id="finetune_slow")
    FineTuningJobOperator(
        task_id="fine_tune_slow",
        model=MODEL,
        training_file=upload_slow.output,
        finetune_conn_id="finetune_slow",
        wait_for_completion=False,
    )
