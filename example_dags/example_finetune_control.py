"""Pause, resume or cancel a fine-tuning job by hand: a DAG triggered with params.

What this DAG shows:

* a DAG meant for people: no schedule, and a trigger form with two params, the ``job_id`` and the
  ``action`` (``pause``, ``resume`` or ``cancel``);
* ``@task.branch`` choosing one of ``FineTuningJobPauseOperator``, ``FineTuningJobResumeOperator`` and
  ``FineTuningJobCancelOperator``, the others being skipped;
* the action operators are idempotent (pausing a paused job, or cancelling a finished one, does nothing)
  and wait until the job reaches the state the action leads to;
* a last task that reports the job's status whatever branch ran.

Trigger it from the UI ("Trigger DAG" shows the form) or with
``airflow dags trigger example_finetune_control -c '{"job_id": "ftjob-...", "action": "pause"}'``.
Waits poll every ``FINETUNE_EXAMPLE_POLL_INTERVAL`` seconds (60 by default).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_finetune.operators.finetune import (
    FineTuningJobCancelOperator,
    FineTuningJobPauseOperator,
    FineTuningJobResumeOperator,
)

POLL_INTERVAL = float(os.environ.get("FINETUNE_EXAMPLE_POLL_INTERVAL", "60"))
CONN_ID = "finetune_default"
log = logging.getLogger(__name__)
ACTIONS = ("pause", "resume", "cancel")

with DAG(
    dag_id="example_finetune_control",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "job_id": Param(
            type="string",
            minLength=1,
            title="Fine-tuning job",
            description="The id of the job, e.g. ftjob-abc123 (the fine_tune task's job_id XCom).",
        ),
        "action": Param("pause", type="string", enum=list(ACTIONS), title="Action"),
    },
    tags=["example", "finetune", "operations"],
    doc_md=__doc__,
) as dag:

    @task.branch
    def choose_action(params: Any = None) -> str:
        """The task id of the requested action; the other actions are skipped."""
        log.info("Requested: %s fine-tuning job %s", params["action"], params["job_id"])
        return f"{params['action']}_job"

    # Each action waits until the job is where the action leads: paused, running again, or cancelled.
    common: dict[str, Any] = {
        "job_id": "{{ params.job_id }}",
        "finetune_conn_id": CONN_ID,
        "wait_for_completion": True,
        "poll_interval": POLL_INTERVAL,
    }
    pause = FineTuningJobPauseOperator(task_id="pause_job", **common)
    resume = FineTuningJobResumeOperator(task_id="resume_job", **common)
    cancel = FineTuningJobCancelOperator(task_id="cancel_job", **common)

    @task(trigger_rule="none_failed_min_one_success")
    def report(params: Any = None) -> dict[str, Any]:
        """The job's status after the action."""
        from airflow_provider_finetune.hooks.finetune import FineTuningHook

        job = FineTuningHook(CONN_ID).get_job(params["job_id"])
        status = {"job_id": job.id, "status": job.status.value, "fine_tuned_model": job.fine_tuned_model}
        log.info("Fine-tuning job %s is now %s", job.id, job.status.value)
        return status

    choose_action() >> [pause, resume, cancel] >> report()
