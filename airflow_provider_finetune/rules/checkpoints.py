"""Choosing a checkpoint ("at least N of them", or "the best one whose metric meets a threshold") and waiting for one.

:func:`watch_checkpoints` is the checkpoint wait's rules with no I/O, driven by the checkpoint trigger; the
sensor's pokes decide with the same :func:`judge`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.rules.early_stopping import metric_of
from airflow_provider_finetune.rules.waiting import Outcome, Pause

if TYPE_CHECKING:
    from airflow_provider_finetune.models import FineTuningJob, FineTuningJobCheckpoint
    from airflow_provider_finetune.rules.early_stopping import EarlyStopping

__all__ = [
    "CheckpointCondition",
    "ReadCheckpoints",
    "Verdict",
    "best_checkpoint",
    "judge",
    "judge_early_stopping",
    "metric_of",
    "watch_checkpoints",
]


@dataclass(frozen=True)
class CheckpointCondition:
    """What a checkpoint wait is waiting for.

    :param min_checkpoints: the job must have at least this many checkpoints.
    :param metric: a metric of the checkpoints (``valid_loss``, ``full_valid_mean_token_accuracy``...).
    :param threshold: with ``metric``: a checkpoint whose metric is at most (``min``) or at least (``max``)
        this value.
    :param mode: ``min`` when lower is better, ``max`` when higher is better.
    """

    min_checkpoints: int = 1
    metric: str | None = None
    threshold: float | None = None
    mode: str = "min"

    def __post_init__(self) -> None:
        if self.min_checkpoints < 1:
            raise InvalidRequestError("min_checkpoints must be at least 1", field="min_checkpoints")
        if self.mode not in ("min", "max"):
            raise InvalidRequestError(f"mode must be 'min' or 'max', got {self.mode!r}", field="mode")
        if self.threshold is not None and not self.metric:
            raise InvalidRequestError("a threshold needs the metric it applies to", field="metric")

    def __str__(self) -> str:
        text = f"at least {self.min_checkpoints} checkpoint(s)"
        if self.metric and self.threshold is not None:
            text += f" with {self.metric} {'<=' if self.mode == 'min' else '>='} {self.threshold}"
        return text

    def choose(self, checkpoints: Sequence[FineTuningJobCheckpoint]) -> FineTuningJobCheckpoint | None:
        """Return the checkpoint that meets the condition (the best by the metric), or ``None``."""
        if len(checkpoints) < self.min_checkpoints:
            return None
        if self.metric is None:
            return max(checkpoints, key=lambda c: c.step_number or 0)
        candidates = [c for c in checkpoints if metric_of(c, self.metric) is not None]
        if self.threshold is not None:
            candidates = [c for c in candidates if self._meets(metric_of(c, self.metric))]
        return best_checkpoint(candidates, self.metric, self.mode)

    def _meets(self, value: float | None) -> bool:
        assert self.threshold is not None
        if value is None:
            return False
        return value <= self.threshold if self.mode == "min" else value >= self.threshold


def best_checkpoint(
    checkpoints: Sequence[FineTuningJobCheckpoint], metric: str, mode: str = "min"
) -> FineTuningJobCheckpoint | None:
    """The checkpoint with the lowest (``min``) or highest (``max``) metric; ties go to the later step."""
    scored = [(value, c.step_number or 0, c) for c in checkpoints if (value := metric_of(c, metric)) is not None]
    if not scored:
        return None
    if mode == "min":
        return min(scored, key=lambda item: (item[0], -item[1]))[2]
    return max(scored, key=lambda item: (item[0], item[1]))[2]


@dataclass(frozen=True)
class Verdict:
    """What one look at a job and its checkpoints says about a checkpoint wait.

    :param status: ``found`` (a checkpoint meets the condition), ``job_ended`` (none does, and the job has
        ended: none ever will), ``early_stopped`` (the job ran out of patience: the checkpoint is its best), or
        ``None`` (wait on).
    :param checkpoint: the checkpoint found.
    :param message: what happened, for people.
    :param early_stopping: for ``early_stopped``, what the rule saw (best value and step, evaluations since).
    """

    status: str | None
    checkpoint: FineTuningJobCheckpoint | None = None
    message: str = ""
    early_stopping: dict[str, Any] | None = None


def judge(
    condition: CheckpointCondition, job: FineTuningJob, checkpoints: Sequence[FineTuningJobCheckpoint]
) -> Verdict:
    """Decide a checkpoint wait from the job and the checkpoints read *after* it.

    Read in that order, the checkpoints of a job that had ended are all it will ever have, so "ended and
    none meets the condition" is final.
    """
    chosen = condition.choose(checkpoints)
    if chosen is not None:
        return Verdict("found", chosen, f"Checkpoint {chosen.fine_tuned_model_checkpoint} meets {condition}")
    if job.status.is_terminal():
        return Verdict("job_ended", None, f"Job {job.id} is {job.status.value} and no checkpoint meets {condition}")
    return Verdict(None, None, f"Job {job.id} ({job.status.value}) has {len(checkpoints)} checkpoint(s)")


def judge_early_stopping(
    rule: EarlyStopping, job: FineTuningJob, checkpoints: Sequence[FineTuningJobCheckpoint]
) -> Verdict | None:
    """An ``early_stopped`` verdict when a running job's checkpoints have run out of the rule's patience.

    The checkpoints are the whole history of the evaluations, so no state is kept between two looks.
    """
    from airflow_provider_finetune.rules.early_stopping import EARLY_STOPPED, Progress, checkpoint_evaluations

    if job.status.is_terminal():
        return None
    named = [c for c in checkpoints if c.fine_tuned_model_checkpoint]
    progress = Progress(checkpointed=bool(named)).add(rule, checkpoint_evaluations(rule, checkpoints))
    best = best_checkpoint(named, rule.metric, rule.mode)
    if best is None or not progress.should_stop(rule):
        return None
    message = f"Job {job.id} stopped early: {progress.reason(rule)}"
    return Verdict(EARLY_STOPPED, best, message, progress.to_json())


class ReadCheckpoints(NamedTuple):
    """Step of :func:`watch_checkpoints`: read the job, then its checkpoints; send ``(job, checkpoints)``."""

    job_id: str


def watch_checkpoints(
    job_id: str,
    condition: CheckpointCondition,
    *,
    deadline: float | None = None,
    poll_interval: float = 60.0,
    max_consecutive_errors: int = 10,
    clock: Callable[[], float] = time.time,
    early_stopping: EarlyStopping | None = None,
) -> Generator[ReadCheckpoints | Pause, Any, Outcome]:
    """Wait until a checkpoint meets ``condition``, with no I/O.

    With ``early_stopping``, the wait also ends ``early_stopped`` (the job still running: the caller stops it)
    when the job's checkpoints have not improved on the rule's metric for its patience; the outcome's
    checkpoint is then the best one.

    The rules of :func:`~airflow_provider_finetune.rules.waiting.watch`: transient failures in a row, an absolute
    deadline, pauses of ``poll_interval`` at most.

    The outcome's status is ``found`` (its message names the checkpoint, :attr:`Outcome.checkpoint` holds
    it), ``job_ended``, :data:`~airflow_provider_finetune.rules.waiting.WAIT_TIMEOUT` or
    :data:`~airflow_provider_finetune.rules.waiting.WAIT_ERROR`.
    """
    from airflow_provider_finetune.exceptions import FineTuningError
    from airflow_provider_finetune.rules.waiting import TRANSIENT, WAIT_ERROR, WAIT_TIMEOUT

    errors = 0
    while True:
        seen = yield ReadCheckpoints(job_id)
        if isinstance(seen, FineTuningError):
            errors += 1
            if errors >= max_consecutive_errors or not isinstance(seen, TRANSIENT):
                return Outcome(WAIT_ERROR, job_id, str(seen))
        else:
            errors = 0
            job, checkpoints = seen
            verdict = judge(condition, job, checkpoints)
            if verdict.status is None and early_stopping is not None:
                verdict = judge_early_stopping(early_stopping, job, checkpoints) or verdict
            if verdict.status is not None:
                return Outcome(
                    verdict.status,
                    job_id,
                    verdict.message,
                    checkpoint=verdict.checkpoint,
                    early_stopping=verdict.early_stopping,
                )
        now = clock()
        if deadline is not None and now >= deadline:
            return Outcome(WAIT_TIMEOUT, job_id, f"No checkpoint of {job_id} met {condition} before the deadline")
        yield Pause(poll_interval if deadline is None else max(min(poll_interval, deadline - now), 0.0))
