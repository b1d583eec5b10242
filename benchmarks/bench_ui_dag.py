"""1,000 fine-tuning jobs from one DAG run (a mapped create task), for benchmarks/bench_ui.py."""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator

JOBS = int(os.environ.get("FINETUNE_BENCH_JOBS", "1000"))

with DAG(dag_id="finetune_ui_bench", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    upload = FineTuningFileUploadOperator(task_id="upload", source=str(Path(__file__).parent / "train.jsonl"))
    FineTuningJobOperator.partial(
        task_id="fine_tune",
        model="gpt-4o-mini-2024-07-18",
        training_file=upload.output,
        wait_for_completion=False,
    ).expand(suffix=[f"b{i}" for i in range(JOBS)])
