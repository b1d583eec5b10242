"""DAGs that the integration tests run with ``dag.test()`` against the emulator."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
from airflow_provider_finetune.sensors.finetune import FineTuningCheckpointSensor

PARAMS = {
    "training_file": Param("", type="string"),
    "metadata": Param({}, type="object"),
}

for dag_id, deferrable in (("ft_deferrable", True), ("ft_on_worker", False)):
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1), params=PARAMS, catchup=False):
        fine_tune = FineTuningJobOperator(
            task_id="fine_tune",
            model="gpt-4o-mini-2024-07-18",
            training_file="{{ params.training_file }}",
            metadata={"dag": "{{ dag.dag_id }}"},
            suffix="it",
            deferrable=deferrable,
            poll_interval=0.2,
        )
        best = FineTuningCheckpointSensor(
            task_id="best_checkpoint",
            job_id="{{ ti.xcom_pull(task_ids='fine_tune', key='job_id') }}",
            metric="train_loss",
            threshold=10.0,
            deferrable=deferrable,
            poke_interval=0.2,
            timeout=60,
        )

        @task
        def evaluate(model: str, checkpoint: str) -> dict[str, str]:
            if not model.startswith("ft:gpt-4o-mini-2024-07-18:"):
                raise ValueError(f"not a fine-tuned model name: {model!r}")
            return {"model": model, "checkpoint": checkpoint}

        fine_tune >> best
        evaluate(fine_tune.output, best.output)

# A task whose create the service refuses for good (an unknown model): its retries must not send it again.
with DAG(
    "ft_refused",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1),
    params={**PARAMS, "model": Param("gpt-4o-mini-2024-07-18", type="string")},
    catchup=False,
    default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=0)},
):
    FineTuningJobOperator(
        task_id="fine_tune",
        model="{{ params.model }}",
        training_file="{{ params.training_file }}",
        poll_interval=0.2,
    )
