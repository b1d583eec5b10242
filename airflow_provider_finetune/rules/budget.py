"""Budget caps: a job's cost estimated before it is created, and watched while it runs.

Before creating, the cost is estimated as the training file's tokens per epoch (from the training-data check,
:mod:`airflow_provider_finetune.training_data`) times the epochs times a price the user gives: the provider ships
no price table, prices change. Above ``max_cost`` the task fails before anything is billed.

While the job runs, its wait (:func:`airflow_provider_finetune.rules.waiting.watch`, on the worker and in the triggerer)
asks :meth:`Budget.overspent` after each poll: the cost the service reports (``total_price``, where it reports
one), else the trained tokens it reports, else the share of the training steps done (from the job's metrics
events) of the tokens the job trains, at the price. Past ``max_cost`` the wait ends :data:`OVER_BUDGET` and the
operator cancels the job. A :class:`Budget` is JSON primitives only, so that a trigger carries it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.exceptions import FineTuningFailure, InvalidRequestError

if TYPE_CHECKING:
    from airflow_provider_finetune.models import (
        CreateFineTuningJobRequest,
        FineTuningJob,
        FineTuningJobEvent,
        JobState,
    )

__all__ = [
    "OVER_BUDGET",
    "Budget",
    "BudgetExceededError",
    "EpochRule",
    "Price",
    "PriceEstimate",
    "auto_epochs",
    "estimate",
    "final_cost",
    "price_for",
    "progress_of",
    "requested_epochs",
]

#: Outcome status of a wait that ended because the job cost more than ``max_cost``.
OVER_BUDGET = "over_budget"

#: A training price per million trained tokens: one number, one per base model, or a function of the base model.
Price = float | Mapping[str, float] | Callable[[str], float]

# OpenAI's published rule for ``n_epochs: "auto"`` (its data-preparation guide): 3 epochs, more for files of
# fewer than 100 / 3 examples (up to 25), fewer for files of more than 25,000 / 3 (down to 1).
_TARGET_EPOCHS = 3
_MIN_TARGET_EXAMPLES = 100
_MAX_TARGET_EXAMPLES = 25_000
_MIN_DEFAULT_EPOCHS = 1
_MAX_DEFAULT_EPOCHS = 25


@dataclass(frozen=True)
class PriceEstimate:
    """The service's own estimate of a job's cost (see ``Backend.estimate_price``).

    :param total: the estimated cost of the whole job.
    :param trained_tokens: the tokens it estimates the job trains, if it says.
    """

    total: float
    trained_tokens: int | None = None


class BudgetExceededError(FineTuningFailure):
    """A job costs (or would cost) more than ``max_cost``.

    :param message: the cost, the cap and what the cost is made of.
    :param cost: the estimated or reported cost.
    :param max_cost: the cap.
    """

    not_retried = "Not retried: a retry would make and pay for the same job again."

    def __init__(self, message: str, *, cost: float, max_cost: float) -> None:
        super().__init__(message)
        self.cost = cost
        self.max_cost = max_cost

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (str(self), self.cost, self.max_cost))


def _rebuild(message: str, cost: float, max_cost: float) -> BudgetExceededError:
    return BudgetExceededError(message, cost=cost, max_cost=max_cost)


def _positive_number(value: Any, name: str, *, allow_zero: bool = True) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidRequestError(f"{name} must be a number, got {value!r}", field=name) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}", field=name)
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidRequestError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}", field=name)
    return float(value)


def _count(value: Any, name: str) -> int | None:
    """A count as rendered (``"1200"`` from a template); ``None`` when not given."""
    if value is None or value == "" or value == "None":
        return None
    number = _positive_number(value, name)
    if number != int(number):
        raise InvalidRequestError(f"{name} must be a whole number, got {value!r}", field=name)
    return int(number)


def price_for(price: Price, model: str) -> float:
    """The price per million trained tokens of ``model``, from a number, a mapping or a callable.

    :raises InvalidRequestError: naming ``price_per_million_tokens``, when there is no usable price for the model.
    """
    name = "price_per_million_tokens"
    if isinstance(price, Mapping):
        if model not in price:
            known = ", ".join(sorted(map(str, price))) or "none"
            raise InvalidRequestError(f"{name} has no price for {model!r} (it prices: {known})", field=name)
        return _positive_number(price[model], f"{name}[{model!r}]")
    if callable(price):
        try:
            given = price(model)
        except Exception as err:  # the user's function: its failure is named, not swallowed
            raise InvalidRequestError(f"{name}({model!r}) failed: {type(err).__name__}: {err}", field=name) from err
        return _positive_number(given, f"{name}({model!r})")
    return _positive_number(price, name)


def auto_epochs(examples: int) -> int:
    """The epochs ``n_epochs: "auto"`` resolves to for a file of ``examples`` examples (OpenAI's published rule)."""
    if examples * _TARGET_EPOCHS < _MIN_TARGET_EXAMPLES:
        return min(_MAX_DEFAULT_EPOCHS, _MIN_TARGET_EXAMPLES // max(examples, 1))
    if examples * _TARGET_EPOCHS > _MAX_TARGET_EXAMPLES:
        return max(_MIN_DEFAULT_EPOCHS, _MAX_TARGET_EXAMPLES // examples)
    return _TARGET_EPOCHS


def requested_epochs(request: CreateFineTuningJobRequest) -> int | None:
    """The whole number of epochs a canonical request asks for; ``None`` for ``"auto"`` or none."""
    method = request.method
    if method is not None:
        block = getattr(method, method.type, None)
        hyperparameters = getattr(block, "hyperparameters", None)
        if hyperparameters is not None:
            return _int_or_none(getattr(hyperparameters, "n_epochs", None))
    legacy = request.hyperparameters
    return _int_or_none(getattr(legacy, "n_epochs", None)) if legacy is not None else None


@dataclass(frozen=True)
class Budget:
    """A job's cost cap and what its cost is made of; JSON primitives only.

    :param max_cost: the cap.
    :param price: the price per million trained tokens.
    :param tokens_per_epoch: the training file's estimated tokens per epoch.
    :param epochs: the epochs the estimate assumes (the request's, or what ``"auto"`` resolves to).
    """

    max_cost: float
    price: float
    tokens_per_epoch: int
    epochs: int
    service_estimate: float | None = None

    @property
    def estimated_tokens(self) -> int:
        """Estimated trained tokens of the whole job."""
        return self.tokens_per_epoch * self.epochs

    @property
    def estimated_cost(self) -> float:
        """Estimated cost of the whole job: the service's own estimate where it made one."""
        if self.service_estimate is not None:
            return self.service_estimate
        return self.cost_of(self.estimated_tokens)

    def cost_of(self, tokens: float) -> float:
        """The cost of ``tokens`` trained tokens."""
        return tokens * self.price / 1_000_000

    def describe(self) -> str:
        """The estimate in words: what it is made of."""
        if self.service_estimate is not None:
            return f"the service's own estimate, {self.service_estimate:.4f}"
        return (
            f"{self.tokens_per_epoch:,} tokens per epoch x {self.epochs} epochs x {self.price:g} per million "
            f"tokens = {self.estimated_cost:.4f}"
        )

    def check_estimate(self) -> None:
        """Refuse a job whose estimate is above the cap, before it is created.

        :raises BudgetExceededError: with the estimate and what it is made of.
        """
        if self.estimated_cost > self.max_cost:
            raise BudgetExceededError(
                f"The job's estimated cost is above max_cost {self.max_cost:g}: {self.describe()}; nothing was created",
                cost=self.estimated_cost,
                max_cost=self.max_cost,
            )

    def spent(self, job: FineTuningJob | JobState, done: float | None) -> tuple[float, str] | None:
        """The job's cost so far and what it is read from, or ``None`` when nothing tells it yet.

        :param job: the job as last read.
        :param done: the share of the training steps done (from the metrics events), if known.
        """
        reported = getattr(job, "total_price", None)
        if isinstance(reported, int | float) and not isinstance(reported, bool):
            return float(reported), "the cost the service reports"
        tokens = getattr(job, "trained_tokens", None)
        if isinstance(tokens, int) and tokens > 0:
            return self.cost_of(tokens), f"{tokens:,} trained tokens"
        if done is None:
            return None
        epochs = _job_epochs(job) or self.epochs
        trained = self.tokens_per_epoch * epochs * done
        return self.cost_of(trained), f"{done:.0%} of the steps of {epochs} epochs, about {int(trained):,} tokens"

    def overspent(self, job: FineTuningJob | JobState, done: float | None) -> str | None:
        """Why the job has cost more than the cap, or ``None`` while it has not."""
        spent = self.spent(job, done)
        if spent is None or spent[0] <= self.max_cost:
            return None
        cost, source = spent
        return f"Job {job.id} has cost {cost:.4f} so far ({source}), more than max_cost {self.max_cost:g}"

    def to_json(self) -> dict[str, Any]:
        """The budget as JSON primitives (trigger kwargs)."""
        return asdict(self)

    @classmethod
    def of(cls, data: Mapping[str, Any] | None) -> Budget | None:
        """The budget :meth:`to_json` gave, or ``None``."""
        if not data:
            return None
        service = data.get("service_estimate")
        return cls(
            max_cost=float(data["max_cost"]),
            price=float(data["price"]),
            tokens_per_epoch=int(data["tokens_per_epoch"]),
            epochs=int(data["epochs"]),
            service_estimate=None if service is None else float(service),
        )


def final_cost(job: FineTuningJob | JobState, price: float | None) -> float | None:
    """The job's cost as it ended: as the service reports it, else its trained tokens at ``price``, if known."""
    reported = getattr(job, "total_price", None)
    if isinstance(reported, int | float) and not isinstance(reported, bool):
        return round(float(reported), 6)
    tokens = getattr(job, "trained_tokens", None)
    if price is None or not isinstance(tokens, int):
        return None
    return round(tokens * price / 1_000_000, 6)


def _job_epochs(job: FineTuningJob | JobState) -> int | None:
    hyperparameters = getattr(job, "hyperparameters", None)
    n_epochs = getattr(hyperparameters, "n_epochs", None)
    return n_epochs if isinstance(n_epochs, int) and not isinstance(n_epochs, bool) and n_epochs > 0 else None


@dataclass(frozen=True)
class EpochRule:
    """How a service settles a job's epochs, for the estimate: what the create body asks, else its default.

    :param requested: the epochs the create body the service is sent asks for, or ``None`` where it leaves them
        to the service.
    :param default: the epochs the service trains for a file of so many examples when the body leaves them to
        it, by the service's published rule; ``None`` where it publishes none (the estimate is then refused).
    :param where: where the user gives the epochs on this service, for the refusal.
    """

    requested: int | None
    default: Callable[[int], int] | None
    where: str


def estimate(
    request: CreateFineTuningJobRequest,
    *,
    max_cost: Any,
    price: Price,
    tokens_per_epoch: Any,
    examples: Any,
    epochs: EpochRule | None = None,
) -> Budget:
    """The budget of a request: its cap, its price and what its cost is made of.

    :param request: the create request (its base model and epochs).
    :param max_cost: the cap.
    :param price: the price per million trained tokens.
    :param tokens_per_epoch: the training file's estimated tokens per epoch.
    :param examples: the training file's examples, for ``n_epochs: "auto"``.
    :param epochs: how the connection's service settles the epochs (its backend's
        :meth:`~airflow_provider_finetune.backends.openai.OpenAIBackend.epoch_rule`); without it, the request's
        ``n_epochs``, and OpenAI's rule for ``"auto"``.
    :raises InvalidRequestError: naming the field, for a value that is not usable.
    """
    cap = _positive_number(max_cost, "max_cost", allow_zero=False)
    per_million = price_for(price, request.model)
    tokens = _count(tokens_per_epoch, "training_tokens")
    if tokens is None:
        raise InvalidRequestError(
            "training_tokens: the tokens per epoch are needed to estimate the cost", field="training_tokens"
        )
    rule = epochs or EpochRule(requested_epochs(request), auto_epochs, "n_epochs")
    if rule.requested is not None:
        return Budget(max_cost=cap, price=per_million, tokens_per_epoch=tokens, epochs=rule.requested)
    if rule.default is None:
        raise InvalidRequestError(
            f"{rule.where}: the service chooses the epochs of a job that gives none by no published rule, so its "
            "cost cannot be estimated; give them to use max_cost",
            field=rule.where,
        )
    count = _count(examples, "training_examples")
    if count is None:
        raise InvalidRequestError(
            f'training_examples: the epochs are left to the service ("auto"), which settles them by the number '
            f"of examples; give training_examples (the upload's examples XCom) or {rule.where}",
            field="training_examples",
        )
    return Budget(max_cost=cap, price=per_million, tokens_per_epoch=tokens, epochs=rule.default(count))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def progress_of(events: Sequence[FineTuningJobEvent], before: float | None) -> float | None:
    """The share of the training steps done, from the newest metrics event that says it (``step``/``total_steps``)."""
    for event in reversed(events):
        data = event.data
        if event.type != "metrics" or not data:
            continue
        step, total = data.get("step"), data.get("total_steps")
        if isinstance(step, int | float) and isinstance(total, int | float) and total > 0:
            return max(min(step / total, 1.0), before or 0.0)
    return before
