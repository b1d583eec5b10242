"""The job operator's quota policy: create only when the service's quotas allow, waiting for them as needed.

With ``max_active_jobs``, the service's active jobs (validating, queued, running, paused) on the base model are
counted before the create, and the create waits until fewer than that many are active; this task instance's own
job does not count. A create the service refuses for a quota (active jobs, creates per day) is made again when
the service says (``retry-after``), else every ``quota_retry_interval``. The waits are deferred to the triggerer
when the operator is ``deferrable`` (the task resumes in ``execute_after_quota``), else slept on the worker, and
end at the deadline. The rules are in :mod:`airflow_provider_finetune.rules.quota`.

Importing this module is cheap: the hook, httpx and pydantic are only imported when a task runs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_finetune.core.templating import number
from airflow_provider_finetune.operators.base import task_tag
from airflow_provider_finetune.operators.job.policy import Create, JobPolicy, JobRun

if TYPE_CHECKING:
    from airflow_provider_finetune.models import FineTuningJob

__all__ = ["QuotaPolicy"]


class QuotaPolicy(JobPolicy):
    """Wait for a free slot (``max_active_jobs``) before the create, and for the service's quota after a refusal.

    :param max_active_jobs: the most active jobs on the base model (as rendered), or ``None``.
    :param interval: seconds between tries, where the service does not say how long to wait.
    :param deferrable: wait in the triggerer instead of on the worker.
    """

    def __init__(
        self, max_active_jobs: int | str | None = None, interval: float = 600.0, deferrable: bool = False
    ) -> None:
        self.max_active_jobs, self.interval, self.deferrable = max_active_jobs, interval, deferrable

    def around_create(self, run: JobRun, create: Create) -> tuple[FineTuningJob, bool]:
        """Create once the service's quotas allow it; a refusal for a quota waits, then creates again."""
        from airflow_provider_finetune.exceptions import FineTuningError, QuotaExceededError
        from airflow_provider_finetune.hooks.waits import wait_quota_sync
        from airflow_provider_finetune.rules.quota import QUOTA_READY, await_quota, clock_time
        from airflow_provider_finetune.rules.waiting import Pause

        tag = task_tag(run.context)
        state = run.context.get("task_state_store")
        own = state.get("job_id") if state is not None else None
        max_active = _count_or_none(self.max_active_jobs, "max_active_jobs")
        wake_at, reason, deadline = time.time(), "", run.deadline
        while True:
            steps = await_quota(
                run.request.model,
                max_active_jobs=max_active,
                wake_at=wake_at,
                deadline=deadline,
                interval=self.interval,
                reason=reason,
                log=run.log,
            )
            own_id = str(own) if own else None
            waited = wait_quota_sync(run.hook, steps, tag=tag, own_job_id=own_id, until_pause=self.deferrable)
            if isinstance(waited, Pause):
                self._defer(run, time.time() + waited.seconds, reason, max_active, tag, own_id)
            if waited.status != QUOTA_READY:
                raise FineTuningError(waited.message)
            try:
                return create()
            except QuotaExceededError as err:
                wake_at = time.time() + (err.retry_after or self.interval)
                quota = err.quota or "fine-tuning jobs"
                reason = f"the service's quota of {quota} ({err.message})"
                run.log.info(
                    "%s refused to create the job for its quota of %s: %s; trying again at %s%s",
                    run.hook.backend.label,
                    quota,
                    err.message,
                    clock_time(wake_at),
                    "" if deadline is None else f", until the deadline at {clock_time(deadline)}",
                )

    @staticmethod
    def resumed(event: Any) -> None:
        """Check the event a quota wait in the triggerer ended with: ready, or the task fails with its message."""
        from airflow_provider_finetune.exceptions import FineTuningError
        from airflow_provider_finetune.rules.quota import QUOTA_READY

        if not isinstance(event, Mapping) or event.get("status") != QUOTA_READY:
            message = event.get("message") if isinstance(event, Mapping) else None
            raise FineTuningError(str(message or f"Unexpected trigger event: {event!r}"))

    def _defer(
        self, run: JobRun, wake_at: float, reason: str, max_active: int | None, tag: str, own_job_id: str | None
    ) -> NoReturn:
        """Hand the rest of a quota wait to the triggerer; the task resumes in ``execute_after_quota``."""
        from airflow_provider_finetune.triggers.quota import FineTuningQuotaTrigger

        run.defer(
            trigger=FineTuningQuotaTrigger(
                run.request.model,
                wake_at=wake_at,
                finetune_conn_id=run.finetune_conn_id,
                max_active_jobs=max_active,
                interval=self.interval,
                deadline=run.deadline,
                reason=reason,
                tag=tag,
                own_job_id=own_job_id,
            ),
            method_name="execute_after_quota",
            kwargs={"deadline": run.deadline},
        )


def _count_or_none(value: Any, name: str) -> int | None:
    """A positive count as rendered (``"3"`` from a template), or ``None`` when not given."""
    from airflow_provider_finetune.exceptions import InvalidRequestError

    if value is None or value == "" or value == "None":
        return None
    count = number(value)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidRequestError(f"{name} must be a whole number of 1 or more, got {value!r}", field=name)
    return count
