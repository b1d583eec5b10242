"""A DAG whose task uses a connection that is not defined: the task must fail naming it."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_finetune.operators.finetune import FineTuningJobCancelOperator

with DAG("ft_missing_connection", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):
    FineTuningJobCancelOperator(task_id="cancel", job_id="ftjob-1", finetune_conn_id="finetune_missing")
