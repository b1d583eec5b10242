"""The job operator's timeout policy: a wait that reaches its deadline cancels the job (``cancel_on_timeout``).

The deadline is absolute, from the start of the try, so that a triggerer restart does not reset it. When the wait
reaches it, the job is cancelled (unless ``cancel_on_timeout`` is off) so that it stops costing money, and the
task fails; a job found to have succeeded (or failed) on its own by then ends the task as that success (or
failure).

Importing this module is cheap: the hook, httpx and pydantic are only imported when a task runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_finetune.operators.job.policy import Done, JobPolicy, JobRun

if TYPE_CHECKING:
    from airflow_provider_finetune.models import FineTuningJob
    from airflow_provider_finetune.rules.waiting import Outcome

__all__ = ["TimeoutPolicy"]


class TimeoutPolicy(JobPolicy):
    """Cancel a job whose wait timed out, and fail the task; a job that ended on its own ends it as it ended.

    :param cancel_on_timeout: cancel the job when the wait times out.
    """

    def __init__(self, cancel_on_timeout: bool = True) -> None:
        self.cancel_on_timeout = cancel_on_timeout

    @property
    def outcomes(self) -> frozenset[str]:
        """The outcome this policy acts on."""
        from airflow_provider_finetune.rules.waiting import WAIT_TIMEOUT

        return frozenset({WAIT_TIMEOUT})

    def on_outcome(self, run: JobRun, job: FineTuningJob, outcome: Outcome) -> Done | None:
        """Cancel the job (if asked and it still runs); fail the task unless the job ended on its own first."""
        if outcome.status not in self.outcomes:
            return None
        from airflow_provider_finetune.exceptions import FineTuningJobFailed
        from airflow_provider_finetune.hooks.actions import act_or_read
        from airflow_provider_finetune.rules.early_stopping import ended_before_the_stop

        if self.cancel_on_timeout and not job.status.is_terminal():
            job = act_or_read(run.hook, job.id, "cancel")
            run.log.info("Cancel of job %s because the wait timed out: %s", job.id, job.status.value)
        if not ended_before_the_stop(job):
            raise FineTuningJobFailed(job.id, job.status.value, outcome.message)
        # It succeeded or failed on its own as the wait ran out: that end is the task's result.
        run.log.info("Job %s ended %s as its wait timed out", job.id, job.status.value)
        return Done(run.finish(job))
