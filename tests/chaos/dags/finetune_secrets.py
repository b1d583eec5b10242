"""A DAG that the secrets test runs with ``dag.test()``: every path that could leak the API key.

Upload, a deferred fine-tuning job whose waits see echoing 503s, a forced job failure, and a call that the
service refuses with a 401 that echoes the key.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_finetune.operators.finetune import (
    FineTuningFileUploadOperator,
    FineTuningJobCancelOperator,
    FineTuningJobOperator,
)

MODEL = "gpt-4o-mini-2024-07-18"

with DAG(
    "ft_secrets",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1),
    params={"source": Param("", type="string")},
    catchup=False,
):
    upload = FineTuningFileUploadOperator(task_id="upload", source="{{ params.source }}")
    fine_tune = FineTuningJobOperator(
        task_id="fine_tune",
        model=MODEL,
        training_file=upload.output,
        suffix="canary",
        metadata={"dag": "{{ dag.dag_id }}"},
        deferrable=True,
        poll_interval=0.2,
    )
    forced_failure = FineTuningJobOperator(
        task_id="forced_failure",
        model=MODEL,
        training_file=upload.output,
        metadata={"emulator_force_failure": "server_error"},
        poll_interval=0.2,
    )
    echoed_401 = FineTuningJobCancelOperator(
        task_id="echoed_401", job_id="ftjob-echo", finetune_conn_id="finetune_echo"
    )
