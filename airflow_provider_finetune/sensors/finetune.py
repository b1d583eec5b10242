"""Sensors that wait for a fine-tuning job's status, or for a checkpoint good enough to use.

Both sensors poke on the worker (``mode="poke"`` or ``"reschedule"``) or defer to the triggerer
(``deferrable=True``). A sensor only watches: it never cancels a job, which belongs to whoever created it.

Importing this module is cheap (DAG files are parsed every 30 s): the hook, the models and the triggers are
only imported when a task runs.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_finetune.core import statuses
from airflow_provider_finetune.core.compat import conf
from airflow_provider_finetune.core.templating import is_template, number
from airflow_provider_finetune.exceptions import FineTuningError, InvalidRequestError

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context
    from airflow.triggers.base import BaseTrigger

    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import FineTuningJob, FineTuningJobCheckpoint
    from airflow_provider_finetune.rules.checkpoints import CheckpointCondition
    from airflow_provider_finetune.rules.early_stopping import EarlyStopping

__all__ = ["FineTuningCheckpointSensor", "FineTuningJobSensor"]

#: What fails a job sensor when no failure statuses are given, less the statuses it waits for.
DEFAULT_FAILURE_STATUSES = statuses.FAILURE
#: Transient read failures a deferred job sensor bears in a row: as many as come (only its timeout ends the wait).
UNBOUNDED_ERRORS = 2**31 - 1


def _statuses(value: str | Collection[str], name: str) -> frozenset[str]:
    """A status or a collection of statuses, as a set of strings."""
    items = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(item, str) and item for item in items):
        raise InvalidRequestError(f"{name} must be status names, got {value!r}", field=name)
    return frozenset(items)


def _sensor_timeout(message: str) -> Exception:
    """The error that fails a sensor for good when its wait times out (no retry), from where it lives."""
    try:  # Airflow 3.2+
        from airflow.sdk.exceptions import AirflowSensorTimeout
    except ImportError:  # Airflow 3.1
        from airflow.exceptions import AirflowSensorTimeout  # type: ignore[no-redef]
    return AirflowSensorTimeout(message)


def _event(event: Any, job_id: str, allowed: Collection[str]) -> Mapping[str, Any]:
    """A trigger event, checked against the statuses that may end the wait; anything else is refused."""
    if (
        not isinstance(event, Mapping)
        or not isinstance(event.get("status"), str)
        or event["status"] not in allowed
        or str(event.get("job_id") or "") != job_id
    ):
        raise FineTuningError(f"Unexpected trigger event for job {job_id}: {event!r}")
    return event


class _FineTuningSensor(BaseSensorOperator):
    """What both sensors share: the connection, a hook made on first use, and the deferrable switch."""

    template_fields: Sequence[str] = ("job_id",)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        job_id: str,
        finetune_conn_id: str = "finetune_default",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.finetune_conn_id = finetune_conn_id
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> FineTuningHook:
        """The hook, made when the task runs."""
        from airflow_provider_finetune.hooks.finetune import FineTuningHook

        return FineTuningHook(self.finetune_conn_id)

    def _mode_templated(self) -> bool:
        """Whether ``mode`` is a template, known only once rendered on the worker."""
        return "mode" in self.template_fields and is_template(self.mode)

    def _validate_input_values(self) -> None:
        """Airflow's checks of the arguments, made in ``__init__``; a templated ``mode`` is checked once rendered."""
        if not self._mode_templated():
            super()._validate_input_values()
            return
        mode = self.mode
        self.mode = "poke"  # a stand-in, so that Airflow checks everything else
        try:
            super()._validate_input_values()
        finally:
            self.mode = mode

    @property
    def reschedule(self) -> bool:
        """Whether the sensor frees its worker slot between pokes (``mode="reschedule"``).

        Airflow serializes this when the DAG is parsed, and the scheduler reads it to decide whether a
        reschedule date holds the task back. A templated mode may still render to ``reschedule``, so it
        counts as one until rendered: the scheduler then looks for a reschedule request (as it does for
        mapped sensors, whose mode it cannot know either) and finds none for a sensor that pokes. Else
        Airflow 3.1 would run a rescheduled sensor again at once, ignoring ``poke_interval``.
        """
        return self.mode == "reschedule" or self._mode_templated()

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        """Render the templated fields, then check what only rendering made known."""
        super().render_template_fields(context, jinja_env)
        if isinstance(self.mode, str):
            self.mode = self.mode.strip()
        if self.mode not in self.valid_modes:
            raise InvalidRequestError(f"mode must be {' or '.join(self.valid_modes)}, got {self.mode!r}", field="mode")

    def execute(self, context: Context) -> Any:
        """Poke on the worker, or defer at once to the triggerer when ``deferrable``."""
        if not self.deferrable:
            return super().execute(context)
        self.defer(trigger=self._trigger(), method_name="execute_complete", timeout=self._defer_timeout())

    def _trigger(self) -> BaseTrigger:
        """The trigger that waits in the sensor's place when it defers."""
        raise NotImplementedError

    def _event_status(self, event: Any, allowed: Collection[str], *, late: str, unread: str) -> tuple[str, str]:
        """The status and message of a trigger event; a timeout or a failed read fails the task.

        :param allowed: the statuses besides ``timeout`` and ``error`` that may end the wait.
        :param late: the message of a timeout, when the event gives none.
        :param unread: the message of a failed read, when the event gives none.
        """
        from airflow_provider_finetune.rules.waiting import WAIT_ERROR, WAIT_TIMEOUT

        status = _event(event, self.job_id, {*allowed, WAIT_TIMEOUT, WAIT_ERROR})["status"]
        message = str(event.get("message") or "")
        if status == WAIT_TIMEOUT:
            raise _sensor_timeout(message or late)
        if status == WAIT_ERROR:
            raise FineTuningError(message or unread)
        return status, message

    def _deadline(self) -> float:
        """The sensor's ``timeout`` as an absolute time, so that a triggerer restart does not reset it."""
        return time.time() + float(self.timeout)

    def _defer_timeout(self) -> timedelta:
        """Airflow's own limit on the deferral, for when no triggerer runs the trigger.

        A little longer than the trigger's deadline, so that a running trigger reports the timeout itself.
        """
        return timedelta(seconds=float(self.timeout) + float(self.poke_interval) + 60)

    def _transient(self, err: FineTuningError) -> bool:
        """Whether a failed read may go away by itself; the sensor then keeps waiting (until its timeout)."""
        from airflow_provider_finetune.rules.waiting import TRANSIENT

        if isinstance(err, TRANSIENT):
            self.log.warning("Could not read fine-tuning job %s, will try again: %s", self.job_id, err)
            return True
        return False


class FineTuningJobSensor(_FineTuningSensor):
    """Wait until a fine-tuning job reaches a status (by default ``succeeded``).

    The sensor's return value (XCom) is the job's ``fine_tuned_model`` when the status reached is
    ``succeeded``, else the status itself (e.g. ``"running"`` for ``target_statuses=("running",)``); the
    status is also pushed under the key ``status``.

    A status in ``failure_statuses`` fails the task with the job's error code, message and param; by
    default these are ``failed`` and ``cancelled``, less the target statuses (so ``target_statuses=
    ["cancelled"]`` waits for a cancel and still fails on ``failed``). So does
    a terminal status (succeeded, failed, cancelled) that is not a target, since the job never leaves it.
    Any other status (``paused``, ``queued``, a status the service adds later) keeps the sensor waiting,
    and so does a transient failure to read the job (rate limit, 5xx, dropped connection): only the
    sensor's ``timeout`` ends such a wait.

    The sensor never cancels the job, not even when it is killed or times out.

    :param job_id: the job (templated).
    :param target_statuses: the statuses to wait for.
    :param failure_statuses: the statuses that fail the task at once; by default ``failed`` and ``cancelled``
        that are not targets. A status given here and in ``target_statuses`` too is refused.
    :param finetune_conn_id: the connection.
    :param deferrable: wait in the triggerer instead of on the worker; ``poke_interval`` is then the
        trigger's poll interval and ``timeout`` an absolute deadline from the start of the try.
    :param poke_interval: seconds (or a timedelta) between reads of the job.
    :param timeout: how long to wait before failing with ``AirflowSensorTimeout``.
    :param mode: ``poke`` (hold the worker slot) or ``reschedule`` (free it between pokes).
    """

    def __init__(
        self,
        *,
        job_id: str,
        target_statuses: str | Collection[str] = ("succeeded",),
        failure_statuses: str | Collection[str] | None = None,
        finetune_conn_id: str = "finetune_default",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(job_id=job_id, finetune_conn_id=finetune_conn_id, deferrable=deferrable, **kwargs)
        self.target_statuses = _statuses(target_statuses, "target_statuses")
        if not self.target_statuses:
            raise InvalidRequestError("target_statuses must name at least one status", field="target_statuses")
        if failure_statuses is None:
            # A status waited for is no failure: only what the user states twice is a contradiction.
            self.failure_statuses = DEFAULT_FAILURE_STATUSES - self.target_statuses
            return
        self.failure_statuses = _statuses(failure_statuses, "failure_statuses")
        overlap = self.target_statuses & self.failure_statuses
        if overlap:
            raise InvalidRequestError(
                f"{', '.join(sorted(overlap))} cannot be both a target and a failure status",
                field="failure_statuses",
            )

    def poke(self, context: Context) -> PokeReturnValue:
        """Read the job once: done on a target status, fail on a failure status, else keep waiting."""
        try:
            job = self.hook.get_job(self.job_id)
        except FineTuningError as err:
            if self._transient(err):
                return PokeReturnValue(is_done=False)
            raise
        status = job.status.value
        if status in self.target_statuses:
            return PokeReturnValue(is_done=True, xcom_value=self._done(context, job))
        self._fail_if_ended(job)
        self.log.info("Fine-tuning job %s is %s; waiting for %s", job.id, status, _either(self.target_statuses))
        return PokeReturnValue(is_done=False)

    def _trigger(self) -> BaseTrigger:
        from airflow_provider_finetune.triggers.finetune import FineTuningJobTrigger

        return FineTuningJobTrigger(
            self.job_id,
            finetune_conn_id=self.finetune_conn_id,
            # The trigger also stops on the failure statuses that are not terminal (e.g. "paused").
            target_statuses=sorted(self.target_statuses | self.failure_statuses),
            poll_interval=self.poke_interval,
            deadline=self._deadline(),
            cancel_on_kill=False,  # the job is not the sensor's to cancel
            # As when it pokes: a transient failure to read the job keeps it waiting, until its timeout.
            max_consecutive_errors=UNBOUNDED_ERRORS,
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after the trigger fired: check the event against what it may say, then finish."""
        status, _ = self._event_status(
            event,
            self.target_statuses | self.failure_statuses | statuses.TERMINAL,
            late=f"Fine-tuning job {self.job_id} did not reach the status in time",
            unread=f"Could not read fine-tuning job {self.job_id}",
        )
        # Re-read the job for what the event does not carry: the model, or the job's error.
        job = self.hook.get_job(self.job_id)
        if status in self.target_statuses:
            return self._done(context, job, status)
        self._fail_if_ended(job, status)
        raise FineTuningError(f"Unexpected trigger event for job {self.job_id}: {event!r}")  # unreachable

    def _done(self, context: Context, job: FineTuningJob, status: str | None = None) -> str | None:
        status = status or job.status.value
        context["ti"].xcom_push(key="status", value=status)
        self.log.info("Fine-tuning job %s is %s", job.id, status)
        return job.fine_tuned_model if status == statuses.SUCCEEDED else status

    def _fail_if_ended(self, job: FineTuningJob, status: str | None = None) -> None:
        """Fail on a failure status, or a terminal status that is not a target."""
        from airflow_provider_finetune.exceptions import FineTuningJobEnded

        status = status or job.status.value
        if status not in self.failure_statuses and status not in statuses.TERMINAL:
            return
        text = f"Fine-tuning job {job.id} is {status}"
        if status not in self.failure_statuses:
            text += f" and can no longer become {_either(self.target_statuses)}"
        error = job.error
        if error is not None:
            text += f": {error.describe()}"
        raise FineTuningJobEnded(
            job.id,
            status,
            text,
            code=error.code if error else None,
            param=error.param if error else None,
        )


class FineTuningCheckpointSensor(_FineTuningSensor):
    """Wait until a job has enough checkpoints, or one whose metric meets a threshold.

    With ``metric`` and ``threshold``, a checkpoint qualifies when its metric is at most (``metric_mode=
    "min"``, for losses) or at least (``"max"``, for accuracies) the threshold, and the best qualifying one
    is chosen. With ``metric`` alone, the best checkpoint by the metric; with neither, the latest one.

    The return value (XCom) is the chosen checkpoint's ``fine_tuned_model_checkpoint`` (a model name usable
    for inference); the key ``checkpoint`` holds its ``id``, ``step_number``,
    ``fine_tuned_model_checkpoint`` and ``metrics``. When the job has ended and no checkpoint meets the
    condition, the task fails at once: waiting longer cannot help.

    The condition and ``mode`` may be templates (``"{{ params.threshold }}"``) or an upstream task's
    output; numbers rendered as text come back as numbers. Plain values are checked when the DAG file is
    parsed, templated ones as soon as they are rendered, before any request.

    :param job_id: the job (templated).
    :param min_checkpoints: how many checkpoints the job must have at least (templated).
    :param metric: a checkpoint metric (templated): ``valid_loss``, ``full_valid_mean_token_accuracy``...
    :param threshold: with ``metric``, the value a checkpoint's metric must reach (templated).
    :param metric_mode: ``min`` when lower is better, ``max`` when higher is better (templated; named so
        because ``mode`` is the sensor's poke or reschedule mode).
    :param finetune_conn_id: the connection.
    :param deferrable: wait in the triggerer instead of on the worker.
    :param poke_interval: seconds (or a timedelta) between reads of the checkpoints.
    :param timeout: how long to wait before failing with ``AirflowSensorTimeout``.
    :param mode: ``poke`` or ``reschedule`` (templated). A templated mode takes effect when the task runs;
        until then the scheduler treats the sensor as one that may reschedule (see :attr:`reschedule`).
    :param early_stopping: stop the job when its checkpoints have not improved on a metric for a number of
        them (``{"metric": "valid_loss", "mode": "min", "patience": 2, "action": "cancel"}``, see
        :class:`~airflow_provider_finetune.rules.early_stopping.EarlyStopping`), and return its best checkpoint;
        XComs ``early_stopped`` and ``early_stopping_reason`` say so.
    """

    template_fields: Sequence[str] = ("job_id", "min_checkpoints", "metric", "threshold", "metric_mode", "mode")

    def __init__(
        self,
        *,
        job_id: str,
        min_checkpoints: int | str = 1,
        metric: str | None = None,
        threshold: float | str | None = None,
        metric_mode: str = "min",
        finetune_conn_id: str = "finetune_default",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        early_stopping: dict[str, Any] | EarlyStopping | None = None,
        **kwargs: Any,
    ) -> None:
        from airflow_provider_finetune.rules.early_stopping import EarlyStopping

        super().__init__(job_id=job_id, finetune_conn_id=finetune_conn_id, deferrable=deferrable, **kwargs)
        self.early_stopping = EarlyStopping.of(early_stopping)  # checked when the DAG file is parsed
        self.min_checkpoints: Any = min_checkpoints
        self.metric: Any = metric
        self.threshold: Any = threshold
        self.metric_mode: Any = metric_mode
        self._condition: CheckpointCondition | None = None
        if not any(is_template(value) for value in (min_checkpoints, metric, threshold, metric_mode)):
            self._condition = self._make_condition()  # checked now, when the DAG file is parsed

    @property
    def condition(self) -> CheckpointCondition:
        """What the sensor waits for, from the (rendered) arguments."""
        if self._condition is None:
            self._condition = self._make_condition()
        return self._condition

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        """Render the templated fields, then check the condition they make, before any request."""
        super().render_template_fields(context, jinja_env)
        self._condition = self._make_condition()

    def _make_condition(self) -> CheckpointCondition:
        """Check the arguments into a condition; numbers rendered as text become numbers again."""
        from airflow_provider_finetune.rules.checkpoints import CheckpointCondition

        min_checkpoints = number(self.min_checkpoints)
        if isinstance(min_checkpoints, bool) or not isinstance(min_checkpoints, int):
            raise InvalidRequestError(
                f"min_checkpoints must be a whole number, got {self.min_checkpoints!r}", field="min_checkpoints"
            )
        threshold = number(self.threshold)
        if threshold is not None and threshold != "":
            if isinstance(threshold, bool) or not isinstance(threshold, int | float):
                raise InvalidRequestError(f"threshold must be a number, got {self.threshold!r}", field="threshold")
            threshold = float(threshold)
        else:
            threshold = None  # rendered from an empty or missing value
        metric = self.metric.strip() if isinstance(self.metric, str) else self.metric
        if metric is not None and not isinstance(metric, str):
            raise InvalidRequestError(f"metric must be a metric's name, got {self.metric!r}", field="metric")
        metric_mode = self.metric_mode.strip() if isinstance(self.metric_mode, str) else self.metric_mode
        if metric_mode not in ("min", "max"):
            raise InvalidRequestError(
                f"metric_mode must be 'min' or 'max', got {self.metric_mode!r}", field="metric_mode"
            )
        condition = CheckpointCondition(min_checkpoints, metric or None, threshold, metric_mode)
        self.min_checkpoints, self.metric, self.threshold, self.metric_mode = (
            condition.min_checkpoints,
            condition.metric,
            condition.threshold,
            condition.mode,
        )
        return condition

    def poke(self, context: Context) -> PokeReturnValue:
        """Read the job, then its checkpoints: done when one meets the condition; fail if the job ended."""
        from airflow_provider_finetune.rules.checkpoints import judge, judge_early_stopping

        try:
            # The job first: if it had ended, the checkpoints read next are all it will ever have.
            job = self.hook.get_job(self.job_id)
            checkpoints = list(self.hook.iter_checkpoints(self.job_id, limit=100))
        except FineTuningError as err:
            if self._transient(err):
                return PokeReturnValue(is_done=False)
            raise
        verdict = judge(self.condition, job, checkpoints)
        if verdict.checkpoint is not None:
            return PokeReturnValue(is_done=True, xcom_value=self._found(context, verdict.checkpoint))
        stop = None if self.early_stopping is None else judge_early_stopping(self.early_stopping, job, checkpoints)
        if stop is not None and stop.checkpoint is not None:
            return PokeReturnValue(is_done=True, xcom_value=self._stopped(context, stop.checkpoint, stop.message))
        if verdict.status == "job_ended":
            self._fail_ended(job, len(checkpoints))
        self.log.info("%s; waiting for %s", verdict.message, self.condition)
        return PokeReturnValue(is_done=False)

    def execute(self, context: Context) -> Any:
        """Refuse a service without checkpoints (or without cancel, for early stopping); then wait as every sensor."""
        self.hook.require("checkpoints")  # a service without checkpoints is refused before any request
        if self.early_stopping is not None:
            self.hook.require("cancel")
        return super().execute(context)

    def _trigger(self) -> BaseTrigger:
        from airflow_provider_finetune.triggers.finetune import FineTuningCheckpointTrigger

        return FineTuningCheckpointTrigger(
            self.job_id,
            finetune_conn_id=self.finetune_conn_id,
            min_checkpoints=self.condition.min_checkpoints,
            metric=self.condition.metric,
            threshold=self.condition.threshold,
            mode=self.condition.mode,
            poll_interval=self.poke_interval,
            deadline=self._deadline(),
            early_stopping=None if self.early_stopping is None else self.early_stopping.to_json(),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after the trigger fired: check the event against what it may say, then finish."""
        from airflow_provider_finetune.models import FineTuningJobCheckpoint
        from airflow_provider_finetune.rules.early_stopping import EARLY_STOPPED

        status, message = self._event_status(
            event,
            {"found", "job_ended"} | ({EARLY_STOPPED} if self.early_stopping else set()),
            late=f"No checkpoint of job {self.job_id} met {self.condition} in time",
            unread=f"Could not read the checkpoints of job {self.job_id}",
        )
        if status in ("found", EARLY_STOPPED):
            try:
                found = FineTuningJobCheckpoint.model_validate(event.get("checkpoint"))
            except ValueError:  # pydantic's ValidationError is one
                raise FineTuningError(f"Unexpected trigger event for job {self.job_id}: {event!r}") from None
            return self._found(context, found) if status == "found" else self._stopped(context, found, message)
        # job_ended: the trigger read the checkpoints before the job, so a last checkpoint written as the
        # job ended may be missing from what it saw. One more look settles it.
        return self._after_the_end(context, message)

    def _after_the_end(self, context: Context, message: str) -> str | None:
        """The checkpoint that meets the condition among all a job that has ended made; fail if none does."""
        from airflow_provider_finetune.rules.checkpoints import judge

        job = self.hook.get_job(self.job_id)
        checkpoints = list(self.hook.iter_checkpoints(self.job_id, limit=100))
        verdict = judge(self.condition, job, checkpoints)
        if verdict.checkpoint is not None:
            return self._found(context, verdict.checkpoint)
        self._fail_ended(job, len(checkpoints))
        raise FineTuningError(message)  # unreachable: the job has ended

    def _stopped(self, context: Context, best: FineTuningJobCheckpoint, reason: str) -> str | None:
        """Stop a job that ran out of patience (pause or cancel, as the rule and the service allow); its best."""
        from airflow_provider_finetune.hooks.actions import stop_early
        from airflow_provider_finetune.rules.early_stopping import ended_before_the_stop

        assert self.early_stopping is not None
        job = stop_early(self.hook, self.job_id, self.early_stopping, reason, self.log)
        if ended_before_the_stop(job):  # not stopped: judged as any job that ended, on all it made
            return self._after_the_end(context, f"Job {job.id} ended {job.status.value}")
        # The verdict may be minutes old (read in the triggerer): the best among all it made by its stop.
        from airflow_provider_finetune.rules.checkpoints import best_checkpoint

        made = [c for c in self.hook.iter_checkpoints(self.job_id, limit=100) if c.fine_tuned_model_checkpoint]
        best = best_checkpoint(made, self.early_stopping.metric, self.early_stopping.mode) or best
        context["ti"].xcom_push(key="early_stopped", value=True)
        context["ti"].xcom_push(key="early_stopping_reason", value=reason)
        return self._found(context, best)

    def _found(self, context: Context, chosen: FineTuningJobCheckpoint) -> str | None:
        metrics = chosen.metrics.model_dump(mode="json", exclude_none=True) if chosen.metrics else {}
        context["ti"].xcom_push(
            key="checkpoint",
            value={
                "id": chosen.id,
                "step_number": chosen.step_number,
                "fine_tuned_model_checkpoint": chosen.fine_tuned_model_checkpoint,
                "metrics": metrics,
            },
        )
        self.log.info(
            "Checkpoint %s (step %s) of job %s meets %s: %s",
            chosen.fine_tuned_model_checkpoint,
            chosen.step_number,
            self.job_id,
            self.condition,
            metrics,
        )
        return chosen.fine_tuned_model_checkpoint

    def _fail_ended(self, job: FineTuningJob, count: int) -> None:
        """Fail because the job has ended and none of its checkpoints meets the condition."""
        from airflow_provider_finetune.exceptions import FineTuningJobEnded

        status = job.status.value
        if not job.status.is_terminal():
            return
        text = (
            f"Fine-tuning job {job.id} is {status} with {count} checkpoint(s), and none meets "
            f"{self.condition}; it will have no more"
        )
        if job.error is not None:
            text += f" ([{job.error.code}] {job.error.message})"
        raise FineTuningJobEnded(
            job.id,
            status,
            text,
            code=job.error.code if job.error else None,
            param=job.error.param if job.error else None,
        )


def _either(statuses: Collection[str]) -> str:
    return " or ".join(sorted(statuses))
