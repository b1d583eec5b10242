"""The deferred quota wait: sleeps until the next try, or until the base model has a free slot, in the triggerer.

The create operator defers to :class:`FineTuningQuotaTrigger` when the service refused its create for a quota,
or when ``max_active_jobs`` found no free slot; the trigger carries out the rules of
:func:`airflow_provider_finetune.rules.quota.await_quota` and fires once, and the operator resumes and creates
through the hook's once-only ``ensure_job`` (which reattaches to a job an earlier try made).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.exceptions import AirflowNotFoundException

from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.hooks.waits import wait_quota_async
from airflow_provider_finetune.rules.quota import QUOTA_ERROR, QuotaOutcome, await_quota, clock_time
from airflow_provider_finetune.triggers.base import _FineTuningTrigger
from airflow_provider_finetune.triggers.finetune import DEFAULT_CONN_ID, hook_class

if TYPE_CHECKING:
    from airflow_provider_finetune.triggers.offloop import OffLoopLog

__all__ = ["FineTuningQuotaTrigger"]


class FineTuningQuotaTrigger(_FineTuningTrigger):
    """Wait for a fine-tuning quota without holding a worker; fire one event ``{"status", "message"}``.

    ``status`` is ``ready`` (try to create now), ``timeout`` (the deadline passed) or ``error`` (the active
    jobs could not be counted, or the connection cannot be used).

    :param model: the base model.
    :param wake_at: when to look first (seconds since the epoch): the next try after a quota refusal.
    :param finetune_conn_id: the connection.
    :param max_active_jobs: with it, the wait goes on until fewer jobs than this are active on the base model.
    :param interval: seconds between two looks.
    :param deadline: absolute deadline, seconds since the epoch; a triggerer restart does not move it.
    :param reason: what is waited for, in words, for the log and a timeout's message.
    :param tag: the task instance's tag: its own active job does not take a slot.
    :param own_job_id: the job the task instance recorded, if any: it does not take a slot either.
    """

    def __init__(
        self,
        model: str,
        *,
        wake_at: float,
        finetune_conn_id: str = DEFAULT_CONN_ID,
        max_active_jobs: int | None = None,
        interval: float = 600.0,
        deadline: float | None = None,
        reason: str = "",
        tag: str | None = None,
        own_job_id: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.wake_at = float(wake_at)
        self.finetune_conn_id = finetune_conn_id
        self.max_active_jobs = None if max_active_jobs is None else int(max_active_jobs)
        self.interval = float(interval)
        self.deadline = None if deadline is None else float(deadline)
        self.reason = reason
        self.tag = tag
        self.own_job_id = own_job_id

    async def _wait(self, log: OffLoopLog) -> dict[str, Any]:
        """Sleep until the next try; with ``max_active_jobs``, look until a slot is free; the outcome."""
        what = self.reason or f"a free slot among at most {self.max_active_jobs} active jobs on {self.model}"
        log.info("Waiting for %s; next look at %s", what, clock_time(self.wake_at))
        steps = await_quota(
            self.model,
            max_active_jobs=self.max_active_jobs,
            wake_at=self.wake_at,
            deadline=self.deadline,
            interval=self.interval,
            reason=self.reason,
            log=log,
        )
        try:
            # The hook's module is imported off the loop, and the connection read without blocking it.
            hook = (await hook_class())(self.finetune_conn_id)
            await hook.ashared_settings()
            outcome = await wait_quota_async(hook, steps, tag=self.tag, own_job_id=self.own_job_id)
        except (FineTuningError, AirflowNotFoundException) as err:  # no such connection, or unusable extras
            outcome = QuotaOutcome(QUOTA_ERROR, f"Connection {self.finetune_conn_id!r} cannot be used: {err}")
        return outcome.payload()
