"""Stopping a job the way early stopping and budget caps stop it, with the hook: pause or cancel, then read.

Whether the job was stopped, or ended on its own first, is the job's own word
(:func:`~airflow_provider_finetune.rules.early_stopping.ended_before_the_stop`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.exceptions import ConflictError
from airflow_provider_finetune.rules.early_stopping import ended_before_the_stop, stop_action

if TYPE_CHECKING:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import FineTuningJob
    from airflow_provider_finetune.rules.early_stopping import EarlyStopping

__all__ = ["act_or_read", "stop_early"]


def stop_early(hook: FineTuningHook, job_id: str, rule: EarlyStopping, reason: str, log: Any) -> FineTuningJob:
    """Stop a job that ran out of patience: pause it where asked and the service can, else cancel it.

    A job that ended (or was stopped) between the read and the action is left as it is, and returned as it
    is: :func:`ended_before_the_stop` tells a job that succeeded or failed on its own from one stopped.
    """
    action = stop_action(rule, can_pause=hook.backend.supports("pause"))
    job = act_or_read(hook, job_id, action)
    if ended_before_the_stop(job):
        log.info("%s; job %s %s before it could be stopped (%s)", reason, job.id, job.status.value, action)
    else:
        log.info("%s; job %s: %s -> %s", reason, job.id, action, job.status.value)
    return job


def act_or_read(hook: FineTuningHook, job_id: str, action: str) -> FineTuningJob:
    """Cancel a job, or pause it (``action="pause"``); one that moved on first (409) is read as it now is.

    Whether it was stopped, or ended on its own first, its own status says (:func:`ended_before_the_stop`).
    """
    try:
        return hook.pause_job(job_id) if action == "pause" else hook.cancel_job(job_id)
    except ConflictError:
        return hook.get_job(job_id)
