"""Operators that cancel, pause and resume a fine-tuning job by id, by the rules the UI applies too.

Importing this module is cheap: the hook, httpx and pydantic are only imported when a task runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.links.finetune import FineTuningJobLink
from airflow_provider_finetune.operators.base import _FineTuningOperator, _seconds
from airflow_provider_finetune.rules import job_actions
from airflow_provider_finetune.rules.job_actions import ActionRule

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["FineTuningJobCancelOperator", "FineTuningJobPauseOperator", "FineTuningJobResumeOperator"]

#: What every job action's docstring ends with: what all actions do alike, and the parameters they take.
_SHARED_DOC = """
    The return value (and the XCom ``status``) is the job's status. Where the job's status no longer allows the
    action (pausing or resuming a job that has ended), the task fails with a message naming the job and its
    status, and no request is sent.

    :param job_id: the job (templated).
    :param finetune_conn_id: the connection.
    :param wait_for_completion: wait for the status the action leads to, as said above.
    :param poll_interval: seconds between polls while waiting.
    :param timeout: how long to wait (seconds or a timedelta).
"""


class _JobActionOperator(_FineTuningOperator):
    """Apply an action to a job by id, idempotently, and optionally wait for the state it leads to.

    Each action's docstring says what it does and waits for; :data:`_SHARED_DOC` is added to it.
    """

    template_fields: Sequence[str] = ("job_id",)
    operator_extra_links = (FineTuningJobLink(),)
    #: The hook method that applies the action.
    action: str = ""
    #: The action in words, for messages.
    verb: str = ""
    #: Statuses in which the action has nothing left to do.
    done_statuses: frozenset[str] = frozenset()
    #: Statuses in which the action can no longer be applied: refused before any request is sent.
    refused_statuses: frozenset[str] = frozenset()
    #: Statuses the action leads to, that ``wait_for_completion`` waits for.
    target_statuses: frozenset[str] = frozenset()
    #: The action's rules, shared with the UI (:mod:`airflow_provider_finetune.rules.job_actions`); the attributes
    #: above are read from it when a subclass names its rule.
    rule: ActionRule = job_actions.CANCEL

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        rule = cls.rule
        cls.action, cls.verb, cls.capability = rule.method, rule.verb, rule.capability
        cls.done_statuses, cls.refused_statuses, cls.target_statuses = rule.done, rule.refused, rule.targets
        if cls.__doc__:
            cls.__doc__ = cls.__doc__.rstrip() + "\n" + _SHARED_DOC

    def __init__(
        self,
        *,
        job_id: str,
        finetune_conn_id: str = "finetune_default",
        wait_for_completion: bool = False,
        poll_interval: float = 10.0,
        timeout: float | timedelta | None = 600,
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.job_id = job_id
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.timeout = _seconds(timeout)

    def execute(self, context: Context) -> str:
        """Apply the action unless the job is already where it leads; return the job's status."""
        from airflow_provider_finetune.exceptions import ConflictError, FineTuningError
        from airflow_provider_finetune.hooks.waits import wait_sync
        from airflow_provider_finetune.rules.waiting import WAIT_ERROR, WAIT_TIMEOUT, watch

        self._no_job_yet()
        self._refuse_if_unsupported()
        job = self.hook.get_job(self.job_id)
        self._push_job(context, job)
        refused = job_actions.refusal(self.rule, job.id, job.status.value)
        if refused is not None:
            # Said here, in the job's own words, rather than as the service's 409 to the action.
            raise FineTuningError(refused)
        if job.status.value in self.done_statuses:
            self.log.info("Job %s is already %s: nothing to do", job.id, job.status)
        else:
            try:
                job = getattr(self.hook, self.action)(job.id)
            except ConflictError as err:
                # The job moved on between the read and the action: it ended, or another request (or an
                # attempt of this one whose answer was lost) got there first. Done if it is where it leads.
                job = self.hook.get_job(job.id)
                self._push_job(context, job)
                if job.status.value not in self.done_statuses:
                    refused = job_actions.refusal(self.rule, job.id, job.status.value)
                    if refused is not None:  # said in the job's own words, as for a job read so at first
                        raise FineTuningError(refused) from err
                    raise
                self.log.info("Job %s is already %s: nothing to do", job.id, job.status)
            else:
                self.log.info("Job %s: %s -> %s", job.id, self.action, job.status)
        status = job.status.value
        if self.wait_for_completion and status not in self.target_statuses:
            deadline = None if self.timeout is None else time.time() + self.timeout
            steps = watch(
                job.id,
                targets=self.target_statuses,
                deadline=deadline,
                poll_interval=self.poll_interval,
                log=self.log,
                events=self.hook.backend.supports("events"),
            )
            outcome = wait_sync(self.hook, job.id, steps)
            if outcome.status in (WAIT_ERROR, WAIT_TIMEOUT):
                raise FineTuningError(outcome.message)
            status = outcome.status
            if status not in self.target_statuses:
                raise FineTuningError(f"Job {job.id} became {status}, not {' or '.join(sorted(self.target_statuses))}")
        context["ti"].xcom_push(key="status", value=status)
        return status


class FineTuningJobCancelOperator(_JobActionOperator):
    """Cancel a fine-tuning job; a job that has already ended (succeeded, failed, cancelled) is left as it is.

    The task returns ``cancelled``, or the status the job had already ended with. With ``wait_for_completion``,
    it waits until the job has ended (``cancelled``, or another end it reached first).
    """

    rule = job_actions.CANCEL


class FineTuningJobPauseOperator(_JobActionOperator):
    """Pause a fine-tuning job; pausing a paused (or pausing) job is fine.

    With ``wait_for_completion``, the task waits until the job is ``paused``; a job that ends instead fails it.
    """

    rule = job_actions.PAUSE


class FineTuningJobResumeOperator(_JobActionOperator):
    """Resume a paused fine-tuning job; resuming a job that is validating, queued or running is fine.

    With ``wait_for_completion``, the task waits until the job runs (``running``) or ends; ``queued`` is still
    waited through, and a job still queued at the ``timeout`` fails the task. The task returns ``running`` or
    ``succeeded``; a job that ends failed or cancelled fails it.
    """

    rule = job_actions.RESUME
