"""Choosing a checkpoint: "at least N of them", or "the best one whose metric meets a threshold"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_provider_finetune.exceptions import InvalidRequestError

if TYPE_CHECKING:
    from airflow_provider_finetune.models import FineTuningJobCheckpoint

__all__ = ["CheckpointCondition", "best_checkpoint"]


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
        candidates = [c for c in checkpoints if _metric(c, self.metric) is not None]
        if self.threshold is not None:
            candidates = [c for c in candidates if self._meets(_metric(c, self.metric))]
        return best_checkpoint(candidates, self.metric, self.mode)

    def _meets(self, value: float | None) -> bool:
        assert self.threshold is not None
        if value is None:
            return False
        return value <= self.threshold if self.mode == "min" else value >= self.threshold


def _metric(checkpoint: FineTuningJobCheckpoint, name: str) -> float | None:
    value = getattr(checkpoint.metrics, name, None)
    if value is None and checkpoint.metrics is not None and checkpoint.metrics.model_extra:
        value = checkpoint.metrics.model_extra.get(name)
    return float(value) if isinstance(value, int | float) else None


def best_checkpoint(
    checkpoints: Sequence[FineTuningJobCheckpoint], metric: str, mode: str = "min"
) -> FineTuningJobCheckpoint | None:
    """The checkpoint with the lowest (``min``) or highest (``max``) metric; ties go to the later step."""
    scored = [(value, c.step_number or 0, c) for c in checkpoints if (value := _metric(c, metric)) is not None]
    if not scored:
        return None
    if mode == "min":
        return min(scored, key=lambda item: (item[0], -item[1]))[2]
    return max(scored, key=lambda item: (item[0], item[1]))[2]
