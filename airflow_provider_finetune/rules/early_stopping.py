"""Early stopping: stop a job whose validation metric has not improved for a number of evaluations.

The fine-tuning services have no early stopping of their own. This module is its rule, with no I/O: what an
evaluation is (a ``metrics`` event that carries the metric, or a checkpoint that does, where the service keeps
no event log), when the metric improved, and when patience has run out. The worker's wait and the deferred
trigger both apply it through :func:`airflow_provider_finetune.rules.waiting.watch`, the checkpoint wait through
:func:`airflow_provider_finetune.rules.checkpoints.watch_checkpoints`; whoever then stops the job (cancels it, or
pauses it where the service can) returns the best checkpoint's model.

The state of a wait (:class:`Progress`) is a fold over the job's evaluations, so a wait that starts again (a
triggerer restart, a new try) rebuilds it by reading the job's history once: nothing of it rides in the
trigger's kwargs but the rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, TypeGuard

from airflow_provider_finetune.core.statuses import FineTuningJobStatus
from airflow_provider_finetune.exceptions import InvalidRequestError

if TYPE_CHECKING:
    from airflow_provider_finetune.models import FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent

__all__ = [
    "EARLY_STOPPED",
    "EarlyStopping",
    "Progress",
    "checkpoint_evaluations",
    "ended_before_the_stop",
    "event_evaluations",
    "metric_of",
    "stop_action",
]

#: Outcome status of a wait whose job ran out of patience (it is still running: its caller stops it).
EARLY_STOPPED = "early_stopped"
#: What may be done to a job that stops early.
ACTIONS = ("cancel", "pause")
_FIELDS = ("metric", "mode", "patience", "min_delta", "action")


@dataclass(frozen=True)
class EarlyStopping:
    """When to stop a job early, and how.

    :param metric: the validation metric watched (``valid_loss``, ``valid_mean_token_accuracy``,
        ``full_valid_loss``...), as the job's metrics events and checkpoints report it.
    :param mode: ``min`` when lower is better (losses), ``max`` when higher is better (accuracies).
    :param patience: evaluations in a row without improvement after which the job is stopped.
    :param min_delta: how much better than the best so far a value must be to count as an improvement.
    :param action: ``cancel`` the job, or ``pause`` it (where the service cannot pause, it is cancelled).
    """

    metric: str = "valid_loss"
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0
    action: str = "cancel"

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise InvalidRequestError("early_stopping.metric must name a metric", field="early_stopping.metric")
        if self.mode not in ("min", "max"):
            raise InvalidRequestError(
                f"early_stopping.mode must be 'min' or 'max', got {self.mode!r}", field="early_stopping.mode"
            )
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise InvalidRequestError(
                f"early_stopping.patience must be a whole number of at least 1, got {self.patience!r}",
                field="early_stopping.patience",
            )
        if isinstance(self.min_delta, bool) or not isinstance(self.min_delta, int | float) or not self.min_delta >= 0:
            raise InvalidRequestError(
                f"early_stopping.min_delta must be a number of at least 0, got {self.min_delta!r}",
                field="early_stopping.min_delta",
            )
        if self.action not in ACTIONS:
            raise InvalidRequestError(
                f"early_stopping.action must be 'cancel' or 'pause', got {self.action!r}",
                field="early_stopping.action",
            )

    @classmethod
    def of(cls, option: EarlyStopping | Mapping[str, Any] | None) -> EarlyStopping | None:
        """The rule an operator's (or trigger's) option describes; ``None`` for none.

        :raises InvalidRequestError: naming the field, for an unknown key or a bad value.
        """
        if option is None or isinstance(option, EarlyStopping):
            return option
        if not isinstance(option, Mapping):
            raise InvalidRequestError(
                f"early_stopping must be a mapping of {', '.join(_FIELDS)}, got {option!r}", field="early_stopping"
            )
        unknown = sorted(set(option) - set(_FIELDS))
        if unknown:
            raise InvalidRequestError(
                f"early_stopping.{unknown[0]} is not an option of early stopping; its options: {', '.join(_FIELDS)}",
                field=f"early_stopping.{unknown[0]}",
            )
        values = dict(option)
        for name in ("patience", "min_delta"):  # rendered templates give text
            if isinstance(values.get(name), str):
                try:
                    values[name] = int(values[name]) if name == "patience" else float(values[name])
                except ValueError:
                    raise InvalidRequestError(
                        f"early_stopping.{name} must be a number, got {values[name]!r}", field=f"early_stopping.{name}"
                    ) from None
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """JSON primitives, for trigger kwargs and XCom."""
        return asdict(self)

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` improves on ``best`` by more than ``min_delta``."""
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta

    def __str__(self) -> str:
        return f"{self.metric} ({'lower' if self.mode == 'min' else 'higher'} is better), patience {self.patience}"


@dataclass(frozen=True, slots=True)
class Progress:
    """What a wait knows of the job's evaluations: a fold over them, rebuilt from the job's history.

    :param best: the best value of the metric so far.
    :param best_step: the step it was reached at.
    :param since_best: evaluations since the best one that did not improve on it.
    :param evaluations: evaluations seen.
    :param last_step: the step of the newest evaluation seen (older ones, read again, are not counted twice).
    :param checkpointed: whether the job has made a checkpoint (one can be returned).
    """

    best: float | None = None
    best_step: int | None = None
    since_best: int = 0
    evaluations: int = 0
    last_step: int = -1
    checkpointed: bool = False

    def add(self, rule: EarlyStopping, evaluations: Iterable[tuple[int, float]]) -> Progress:
        """The progress after these evaluations, ``(step, value)`` oldest first; steps already seen are skipped."""
        progress = self
        for step, value in evaluations:
            if step <= progress.last_step:
                continue
            if rule.better(value, progress.best):
                progress = replace(
                    progress, best=value, best_step=step, since_best=0, evaluations=progress.evaluations + 1
                )
            else:
                progress = replace(progress, since_best=progress.since_best + 1, evaluations=progress.evaluations + 1)
            progress = replace(progress, last_step=step)
        return progress

    def out_of_patience(self, rule: EarlyStopping) -> bool:
        """Whether the metric has not improved for ``rule.patience`` evaluations."""
        return self.best is not None and self.since_best >= rule.patience

    def should_stop(self, rule: EarlyStopping) -> bool:
        """Whether to stop now: out of patience, and a checkpoint exists to return (never a job with nothing)."""
        return self.out_of_patience(rule) and self.checkpointed

    def reason(self, rule: EarlyStopping) -> str:
        """Why the job stops, for the log and XCom."""
        return (
            f"{rule.metric} has not improved on its best ({self.best:.4f} at step {self.best_step}) "
            f"for {self.since_best} evaluation(s) (patience {rule.patience}, min_delta {rule.min_delta})"
        )

    def to_json(self) -> dict[str, Any]:
        """JSON primitives, for the trigger's event."""
        return asdict(self)


def event_evaluations(rule: EarlyStopping, events: Sequence[FineTuningJobEvent]) -> Iterator[tuple[int, float]]:
    """The evaluations among events (oldest first): ``metrics`` events that carry the metric and a step."""
    for event in events:
        data = event.data
        if event.type == "metrics" and data:
            step, value = data.get("step"), data.get(rule.metric)
            if _number(step) and _number(value) and math.isfinite(value):
                yield int(step), float(value)


def has_checkpoint_event(events: Sequence[FineTuningJobEvent]) -> bool:
    """Whether one of the events announces a checkpoint."""
    return any(event.data and event.data.get("fine_tuned_model_checkpoint") for event in events)


def checkpoint_evaluations(
    rule: EarlyStopping, checkpoints: Iterable[FineTuningJobCheckpoint]
) -> list[tuple[int, float]]:
    """The evaluations among checkpoints, by step: those whose metrics carry the metric."""
    found = []
    for checkpoint in checkpoints:
        value = metric_of(checkpoint, rule.metric)
        if value is not None and checkpoint.step_number is not None and math.isfinite(value):
            found.append((int(checkpoint.step_number), value))
    return sorted(found)


def stop_action(rule: EarlyStopping, *, can_pause: bool) -> str:
    """``pause`` where it was asked for and the service can; ``cancel`` otherwise."""
    return "pause" if rule.action == "pause" and can_pause else "cancel"


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def metric_of(checkpoint: FineTuningJobCheckpoint, name: str) -> float | None:
    """A checkpoint's metric ``name`` (one the service added included), or ``None`` when it has none."""
    value = getattr(checkpoint.metrics, name, None)
    if value is None and checkpoint.metrics is not None and checkpoint.metrics.model_extra:
        value = checkpoint.metrics.model_extra.get(name)
    return float(value) if isinstance(value, int | float) else None


def ended_before_the_stop(job: FineTuningJob) -> bool:
    """Whether a job that early stopping tried to stop had succeeded or failed on its own first.

    Such a job was not stopped early, whatever the verdict said: its status and model are its own.
    """
    return job.status in _ENDED_ON_ITS_OWN


_ENDED_ON_ITS_OWN = frozenset({FineTuningJobStatus.SUCCEEDED, FineTuningJobStatus.FAILED})
