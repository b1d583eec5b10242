"""DAGs that show ``skip_if_unchanged``: a weekly retraining that pays only when its data or request changed."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator

PARAMS = {
    "source": Param("", type="string"),
    "training_file": Param("", type="string"),
    "suffix": Param("weekly", type="string"),
}

for dag_id, deferrable in (("ft_unchanged_deferrable", True), ("ft_unchanged_on_worker", False)):
    with DAG(dag_id, schedule="@weekly", start_date=pendulum.datetime(2026, 1, 1), params=PARAMS, catchup=False):
        upload = FineTuningFileUploadOperator(task_id="upload", source="{{ params.source }}")
        FineTuningJobOperator(
            task_id="fine_tune",
            model="gpt-4o-mini-2024-07-18",
            training_file=upload.output,
            suffix="{{ params.suffix }}",
            skip_if_unchanged=True,
            deferrable=deferrable,
            poll_interval=0.2,
        )

# A training file given by id, with no upload task upstream: its content is read from the service.
with DAG("ft_unchanged_file_id", schedule="@weekly", start_date=pendulum.datetime(2026, 1, 1), params=PARAMS):
    FineTuningJobOperator(
        task_id="fine_tune",
        model="gpt-4o-mini-2024-07-18",
        training_file="{{ params.training_file }}",
        suffix="{{ params.suffix }}",
        skip_if_unchanged=True,
        poll_interval=0.2,
    )
