"""DAGs of the production-shaped deployment test (tests/deployment/test_production.py).

* ``production_fan_out``: one mapped, deferrable create task of ``FINETUNE_FAN_OUT`` task instances (200), each
  its own short job, all waiting in the triggerers at once.
* ``production_worker_wait``: one create task that waits on the Celery worker (not deferred), long enough for
  the test to kill that worker in the middle of it; one retry, soon after, which must reattach to the job.

The training file is uploaded once by the test and passed as the run's ``training_file`` param.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_finetune.operators.finetune import FineTuningJobOperator

MODEL = "gpt-4o-mini-2024-07-18"
FAN_OUT = int(os.environ.get("FINETUNE_FAN_OUT", "200"))
POLL_INTERVAL = float(os.environ.get("FINETUNE_POLL_INTERVAL", "2"))
PARAMS = {"training_file": Param("", type="string")}

with DAG(
    "production_fan_out",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params=PARAMS,
    # Every task instance may be deferred at once: the waits, not the worker slots, are what is tested.
    max_active_tasks=FAN_OUT,
):
    FineTuningJobOperator.partial(
        task_id="fine_tune",
        model=MODEL,
        training_file="{{ params.training_file }}",
        # Six epochs of the 40-example file (240 steps): the emulator's longest job, 3 + 5 + 120 simulated s,
        # so that the first waits still run when the last task defers.
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 6}}},
        suffix="fan-out",
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        retries=0,
    ).expand(seed=list(range(FAN_OUT)))

with DAG(
    "production_worker_wait",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params=PARAMS,
):
    FineTuningJobOperator(
        task_id="fine_tune",
        model=MODEL,
        training_file="{{ params.training_file }}",
        # Four epochs (160 steps, 80 simulated s of training): the retry, which comes about 30 s after the worker
        # dies, finds the job still running.
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4}}},
        suffix="worker-wait",
        deferrable=False,
        poll_interval=1.0,
        retries=1,
        retry_delay=timedelta(seconds=2),
    )
