"""Operators that create, cancel, pause and resume fine-tuning jobs.

Importing this module is cheap (DAG files are parsed every 30 s): httpx, pydantic and the models are only
imported when a task runs.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_finetune._compat import conf
from airflow_provider_finetune.links.finetune import FineTuningJobLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJob
    from airflow_provider_finetune.waiting import Outcome

__all__ = [
    "FineTuningJobCancelOperator",
    "FineTuningJobOperator",
    "FineTuningJobPauseOperator",
    "FineTuningJobResumeOperator",
    "task_tag",
]

_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE]-?\d+)?$")
_HYPERPARAMETERS = frozenset(
    {
        "n_epochs",
        "batch_size",
        "learning_rate_multiplier",
        "beta",
        "compute_multiplier",
        "eval_interval",
        "eval_samples",
    }
)


def task_tag(context: Context) -> str:
    """The metadata tag that ties a job to one task instance: its DAG, task, run and map index."""
    ti = context["ti"]
    key = "\x1f".join([ti.dag_id, ti.task_id, ti.run_id, str(getattr(ti, "map_index", -1))])
    return "ti-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def _seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _number(value: Any) -> Any:
    """A number rendered by a template as text (``"3"``) back to a number; anything else as it is."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"-?\d+", text) else float(text)
    return value


def _hyperparameters(block: Any) -> Any:
    if not isinstance(block, Mapping):
        return block
    return {k: _number(v) if k in _HYPERPARAMETERS else v for k, v in block.items()}


def _method(method: Any) -> Any:
    if not isinstance(method, Mapping):
        return method
    fixed = dict(method)
    for kind in ("supervised", "dpo", "reinforcement"):
        inner = fixed.get(kind)
        if isinstance(inner, Mapping) and "hyperparameters" in inner:
            fixed[kind] = {**inner, "hyperparameters": _hyperparameters(inner["hyperparameters"])}
    return fixed


class _FineTuningOperator(BaseOperator):
    """What every operator of this provider shares: the connection and a hook made on first use."""

    def __init__(self, *, finetune_conn_id: str = "finetune_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.finetune_conn_id = finetune_conn_id

    @cached_property
    def hook(self) -> FineTuningHook:
        """The hook, made when the task runs."""
        from airflow_provider_finetune.hooks.finetune import FineTuningHook

        return FineTuningHook(self.finetune_conn_id)

    def _push_job(self, context: Context, job: FineTuningJob) -> None:
        """Push the job id and its page at once, before any wait, so that they survive a crash."""
        from airflow_provider_finetune.links.finetune import job_url

        ti = context["ti"]
        ti.xcom_push(key="job_id", value=job.id)
        url = job_url(self.hook.settings.base_url, job.id)
        if url:
            ti.xcom_push(key=FineTuningJobLink.key, value=url)


class FineTuningJobOperator(_FineTuningOperator):
    """Create a fine-tuning job, wait for it (on the worker or deferred), and return its model.

    Exactly one job per task instance, whatever crashes or retries: the job carries a metadata tag made
    of the DAG, task, run and map index, and before creating one the operator looks the tag up. A job
    in progress is reattached to, a succeeded one is returned, and after a failed or cancelled one a new
    job is created. On Airflow 3.3 the job id is also kept in the task's state store.

    XComs: the return value is ``fine_tuned_model``; ``job_id`` is pushed as soon as the job exists, and
    on success ``status``, ``trained_tokens``, ``result_files``, ``checkpoints`` (with their metrics)
    and, for services with a dashboard, ``job_url``.

    :param model: the base model.
    :param training_file: the id of the uploaded training file.
    :param validation_file: the id of the uploaded validation file.
    :param method: ``{"type": "supervised" | "dpo" | "reinforcement", "<type>": {"hyperparameters": ...}}``.
    :param hyperparameters: deprecated top-level hyperparameters; mapped onto a supervised ``method``.
    :param suffix: up to 64 characters added to the fine-tuned model's name.
    :param seed: the job's seed.
    :param metadata: up to 15 key-value pairs (the 16th is the task tag).
    :param integrations: e.g. ``[{"type": "wandb", "wandb": {"project": "..."}}]``.
    :param finetune_conn_id: the connection.
    :param wait_for_completion: wait for the job to end (the default); otherwise return once it exists.
    :param deferrable: wait in the triggerer instead of on the worker.
    :param poll_interval: seconds between polls of the job.
    :param timeout: how long to wait (seconds or a timedelta), as an absolute deadline from the start
        of the try; a triggerer restart does not reset it.
    :param cancel_on_kill: cancel the job when a person marks the task failed, clears it or marks it
        succeeded.
    :param cancel_on_timeout: cancel the job when the wait times out, so that it stops costing money.
    :param max_consecutive_errors: failed polls in a row (after the hook's retries) that fail the wait.
    """

    template_fields: Sequence[str] = (
        "model",
        "training_file",
        "validation_file",
        "method",
        "hyperparameters",
        "suffix",
        "seed",
        "metadata",
        "integrations",
    )
    template_fields_renderers = {
        "method": "json",
        "hyperparameters": "json",
        "metadata": "json",
        "integrations": "json",
    }
    operator_extra_links = (FineTuningJobLink(),)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        model: str,
        training_file: str,
        validation_file: str | None = None,
        method: dict[str, Any] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        suffix: str | None = None,
        seed: int | str | None = None,
        metadata: dict[str, str] | None = None,
        integrations: list[dict[str, Any]] | None = None,
        finetune_conn_id: str = "finetune_default",
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 60.0,
        timeout: float | timedelta | None = None,
        cancel_on_kill: bool = True,
        cancel_on_timeout: bool = True,
        max_consecutive_errors: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.model = model
        self.training_file = training_file
        self.validation_file = validation_file
        self.method = method
        self.hyperparameters = hyperparameters
        self.suffix = suffix
        self.seed = seed
        self.metadata = metadata
        self.integrations = integrations
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = _seconds(timeout)
        self.cancel_on_kill = cancel_on_kill
        self.cancel_on_timeout = cancel_on_timeout
        self.max_consecutive_errors = max_consecutive_errors
        self.job_id: str | None = None

    def build_request(self) -> CreateFineTuningJobRequest:
        """Validate the rendered arguments into a request; a bad one raises before anything is sent."""
        from airflow_provider_finetune.models import CreateFineTuningJobRequest, build_request

        fields = {
            "model": self.model,
            "training_file": self.training_file,
            "validation_file": self.validation_file or None,
            "method": _method(self.method),
            "hyperparameters": _hyperparameters(self.hyperparameters),
            "suffix": self.suffix or None,
            "seed": _number(self.seed),
            "metadata": self.metadata or None,
            "integrations": self.integrations or None,
        }
        return build_request(CreateFineTuningJobRequest, {k: v for k, v in fields.items() if v is not None})

    def execute(self, context: Context) -> str | None:
        """Create (or reattach to) the job, then wait for it unless told not to."""
        request = self.build_request()
        started = time.time()
        job = self._stored_job(context)
        if job is None:
            job, created = self.hook.ensure_job(request, tag=task_tag(context))
            self.log.info("%s fine-tuning job %s (%s)", "Created" if created else "Reattached to", job.id, job.status)
        self.job_id = job.id
        self._push_job(context, job)
        store = context.get("task_state_store")
        if store is not None:
            store.set("job_id", job.id)
        if not self.wait_for_completion:
            return None
        if job.status.is_terminal():
            return self._finish(context, job)

        deadline = None if self.timeout is None else started + self.timeout
        if self.deferrable:
            from airflow_provider_finetune.triggers.finetune import FineTuningJobTrigger

            self.defer(
                trigger=FineTuningJobTrigger(
                    job.id,
                    finetune_conn_id=self.finetune_conn_id,
                    poll_interval=self.poll_interval,
                    deadline=deadline,
                    cancel_on_kill=self.cancel_on_kill,
                    max_consecutive_errors=self.max_consecutive_errors,
                ),
                method_name="execute_complete",
            )
        from airflow_provider_finetune.waiting import wait_sync, watch

        steps = watch(
            job.id,
            deadline=deadline,
            poll_interval=self.poll_interval,
            max_consecutive_errors=self.max_consecutive_errors,
            log=self.log,
        )
        return self._complete(context, wait_sync(self.hook, job.id, steps))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str | None:
        """Resume after the trigger fired: check the event, re-read the job, finish."""
        from airflow_provider_finetune.waiting import Outcome

        return self._complete(context, _outcome(event, Outcome))

    def _stored_job(self, context: Context) -> FineTuningJob | None:
        """The job this task instance made before, from the task state store (Airflow 3.3+)."""
        store = context.get("task_state_store")
        job_id = store.get("job_id") if store is not None else None
        if not job_id:
            return None
        job = self.hook.get_job(str(job_id))
        if job.status.value in ("failed", "cancelled"):
            return None
        self.log.info("Reattached to fine-tuning job %s (%s) from the task state store", job.id, job.status)
        return job

    def _complete(self, context: Context, outcome: Outcome) -> str | None:
        from airflow_provider_finetune.exceptions import FineTuningError, FineTuningJobFailed
        from airflow_provider_finetune.waiting import TERMINAL, WAIT_ERROR, WAIT_TIMEOUT

        self.job_id = outcome.job_id
        if outcome.status == WAIT_ERROR:
            raise FineTuningError(outcome.message)
        job = self.hook.get_job(outcome.job_id)
        context["ti"].xcom_push(key="status", value=job.status.value)
        if outcome.status == WAIT_TIMEOUT:
            if self.cancel_on_timeout and not job.status.is_terminal():
                self.hook.cancel_job(job.id)
                self.log.info("Cancelled job %s because the wait timed out", job.id)
            raise FineTuningJobFailed(job.id, job.status.value, outcome.message)
        if outcome.status not in TERMINAL:
            raise FineTuningError(f"Unexpected status {outcome.status!r} for job {job.id}")
        return self._finish(context, job)

    def _finish(self, context: Context, job: FineTuningJob) -> str | None:
        from airflow_provider_finetune.exceptions import FineTuningJobFailed

        ti = context["ti"]
        ti.xcom_push(key="status", value=job.status.value)
        if job.status.value != "succeeded":
            raise FineTuningJobFailed(
                job.id,
                job.status.value,
                _failure_message(job),
                code=job.error.code if job.error else None,
                param=job.error.param if job.error else None,
            )
        checkpoints = [
            {
                "id": c.id,
                "step_number": c.step_number,
                "fine_tuned_model_checkpoint": c.fine_tuned_model_checkpoint,
                "metrics": c.metrics.model_dump(mode="json", exclude_none=True) if c.metrics else {},
            }
            for c in self.hook.iter_checkpoints(job.id, limit=100)
        ]
        ti.xcom_push(key="trained_tokens", value=job.trained_tokens)
        ti.xcom_push(key="result_files", value=list(job.result_files))
        ti.xcom_push(key="checkpoints", value=checkpoints)
        ti.xcom_push(key="fine_tuned_model", value=job.fine_tuned_model)
        self.log.info("Fine-tuning job %s succeeded: %s", job.id, job.fine_tuned_model)
        return job.fine_tuned_model

    def on_kill(self) -> None:
        """Cancel the job when a person kills the task while it waits on the worker."""
        if not (self.cancel_on_kill and self.job_id):
            return
        from airflow_provider_finetune.exceptions import FineTuningError

        try:
            job = self.hook.get_job(self.job_id)
            if not job.status.is_terminal():
                self.hook.cancel_job(self.job_id)
                self.log.info("Cancelled fine-tuning job %s because its task was killed", self.job_id)
        except FineTuningError as err:
            self.log.warning("Could not cancel fine-tuning job %s: %s", self.job_id, err)


def _failure_message(job: FineTuningJob) -> str:
    text = f"Fine-tuning job {job.id} ended {job.status.value}"
    if job.error is not None:
        text += f": [{job.error.code}] {job.error.message}"
        if job.error.param:
            text += f" (param: {job.error.param})"
    return text


def _outcome(event: Any, outcome_cls: type[Outcome]) -> Outcome:
    """Turn a trigger event back into an outcome, refusing anything that is not one."""
    from airflow_provider_finetune.exceptions import FineTuningError

    if not isinstance(event, Mapping) or not isinstance(event.get("status"), str) or not event.get("job_id"):
        raise FineTuningError(f"Unexpected trigger event: {event!r}")
    return outcome_cls(
        status=event["status"],
        job_id=str(event["job_id"]),
        message=str(event.get("message") or ""),
        last_event_id=event.get("last_event_id"),
    )


class _JobActionOperator(_FineTuningOperator):
    """Apply an action to a job by id, idempotently, and optionally wait for the state it leads to."""

    template_fields: Sequence[str] = ("job_id",)
    operator_extra_links = (FineTuningJobLink(),)
    #: The hook method that applies the action.
    action: str = ""
    #: Statuses in which the action has nothing left to do.
    done_statuses: frozenset[str] = frozenset()
    #: Statuses the action leads to, that ``wait_for_completion`` waits for.
    target_statuses: frozenset[str] = frozenset()

    def __init__(
        self,
        *,
        job_id: str,
        wait_for_completion: bool = False,
        poll_interval: float = 10.0,
        timeout: float | timedelta | None = 600,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.timeout = _seconds(timeout)

    def execute(self, context: Context) -> str:
        """Apply the action unless the job is already where it leads; return the job's status."""
        from airflow_provider_finetune.exceptions import FineTuningError
        from airflow_provider_finetune.waiting import WAIT_ERROR, WAIT_TIMEOUT, wait_sync, watch

        job = self.hook.get_job(self.job_id)
        self._push_job(context, job)
        if job.status.value in self.done_statuses:
            self.log.info("Job %s is already %s: nothing to do", job.id, job.status)
        else:
            job = getattr(self.hook, self.action)(job.id)
            self.log.info("Job %s: %s -> %s", job.id, self.action, job.status)
        status = job.status.value
        if self.wait_for_completion and status not in self.target_statuses:
            deadline = None if self.timeout is None else time.time() + self.timeout
            steps = watch(
                job.id, targets=self.target_statuses, deadline=deadline, poll_interval=self.poll_interval, log=self.log
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
    """Cancel a fine-tuning job; a job that has already ended is left as it is.

    :param job_id: the job (templated).
    :param wait_for_completion: wait until the job is cancelled.
    :param poll_interval: seconds between polls while waiting.
    :param timeout: how long to wait.
    """

    action = "cancel_job"
    done_statuses = frozenset({"succeeded", "failed", "cancelled"})
    target_statuses = frozenset({"cancelled"})


class FineTuningJobPauseOperator(_JobActionOperator):
    """Pause a fine-tuning job; pausing a paused (or pausing) job is fine.

    :param job_id: the job (templated).
    :param wait_for_completion: wait until the job is ``paused``.
    :param poll_interval: seconds between polls while waiting.
    :param timeout: how long to wait.
    """

    action = "pause_job"
    done_statuses = frozenset({"paused", "pausing"})
    target_statuses = frozenset({"paused"})


class FineTuningJobResumeOperator(_JobActionOperator):
    """Resume a paused fine-tuning job; resuming a job that is not paused is fine.

    :param job_id: the job (templated).
    :param wait_for_completion: wait until the job is running again.
    :param poll_interval: seconds between polls while waiting.
    :param timeout: how long to wait.
    """

    action = "resume_job"
    done_statuses = frozenset({"validating_files", "queued", "running"})
    target_statuses = frozenset({"queued", "running", "succeeded"})
