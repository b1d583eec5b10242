"""Quota-aware creation: waiting for a free slot, or for a quota the service refused a create for.

Services cap fine-tuning: OpenAI allows a few active jobs per base model and a daily number of creates, Azure a
few running and queued jobs per resource. A create refused for such a quota
(:class:`~airflow_provider_finetune.exceptions.QuotaExceededError`, as the backend's error reader marks it) is
tried again later; with ``max_active_jobs`` the operator also counts the service's active jobs on the base model
before creating, and waits for a free slot.

:func:`await_quota` holds the rules of such a wait as a generator that does no I/O (like
:func:`airflow_provider_finetune.rules.waiting.watch`): it yields :class:`CountActive` and
:class:`~airflow_provider_finetune.rules.waiting.Pause` steps and is told what came back. The operator carries them
out on the worker (:func:`~airflow_provider_finetune.hooks.waits.wait_quota_sync`), or hands the wait to
:class:`~airflow_provider_finetune.triggers.quota.FineTuningQuotaTrigger`, which carries out the same rules in the
triggerer (:func:`~airflow_provider_finetune.hooks.waits.wait_quota_async`). Either way the create that follows goes
through the hook's once-only ``ensure_job``, so a wait never makes a second job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_provider_finetune.core.statuses import TERMINAL
from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.rules.waiting import TRANSIENT, Pause

if TYPE_CHECKING:
    from airflow_provider_finetune.models import FineTuningJob

__all__ = [
    "QUOTA_ERROR",
    "QUOTA_READY",
    "QUOTA_TIMEOUT",
    "CountActive",
    "QuotaOutcome",
    "Slots",
    "await_quota",
    "clock_time",
    "count_active",
    "same_base_model",
]

#: The wait is over: try to create.
QUOTA_READY = "ready"
#: The deadline passed before the quota let the job be made.
QUOTA_TIMEOUT = "timeout"
#: The active jobs could not be counted (a refused key...).
QUOTA_ERROR = "error"
#: Jobs listed per page while counting (the service's largest page).
PAGE = 100


class CountActive(NamedTuple):
    """Step of :func:`await_quota`: count the service's active jobs on the base model; answer :class:`Slots`."""

    model: str


@dataclass(frozen=True, slots=True)
class Slots:
    """What a count of active jobs found.

    :param active: active jobs on the base model that are not this task instance's.
    :param ours: this task instance already has an active job there (it is reattached to, not waited for).
    """

    active: int
    ours: bool = False


@dataclass(frozen=True)
class QuotaOutcome:
    """How a quota wait ended: :data:`QUOTA_READY`, :data:`QUOTA_TIMEOUT` or :data:`QUOTA_ERROR`, and why."""

    status: str
    message: str = ""

    def payload(self) -> dict[str, Any]:
        """The JSON-safe form, as a trigger event carries it."""
        return {"status": self.status, "message": self.message}


QuotaWait = Generator[CountActive | Pause, Slots | FineTuningError | None, QuotaOutcome]


def await_quota(
    model: str,
    *,
    max_active_jobs: int | None,
    wake_at: float,
    deadline: float | None,
    interval: float,
    reason: str = "",
    log: logging.Logger | logging.LoggerAdapter[Any] | Any = None,
    clock: Callable[[], float] = time.time,
) -> QuotaWait:
    """Wait until ``wake_at``, then (with ``max_active_jobs``) until fewer jobs than that are active on ``model``.

    Each look that finds no free slot says so in the log, with when the next look is; the wait ends at the
    deadline (:data:`QUOTA_TIMEOUT`). A count that fails for a transient reason is tried again at the next look.

    :param model: the base model.
    :param max_active_jobs: the most active jobs on the base model (this task instance's own do not count);
        ``None`` for no count: the wait is over at ``wake_at``.
    :param wake_at: when the first look is due (seconds since the epoch): after a quota refusal, when to try again.
    :param deadline: when the wait gives up (seconds since the epoch), if ever.
    :param interval: seconds between two looks.
    :param reason: what the wait waits for, for the message of a timeout.
    :param log: where the wait says what it waits for.
    :param clock: the time source.
    """
    logger = log or logging.getLogger(__name__)
    while True:
        now = clock()
        if now < wake_at and (deadline is None or now < deadline):
            yield Pause(wake_at - now if deadline is None else min(wake_at, deadline) - now)
            continue
        if deadline is not None and now >= deadline:
            return QuotaOutcome(QUOTA_TIMEOUT, f"The deadline passed while waiting for {reason or 'the quota'}")
        if max_active_jobs is None:
            return QuotaOutcome(QUOTA_READY)
        seen = yield CountActive(model)
        if isinstance(seen, Slots):
            if seen.ours:
                return QuotaOutcome(QUOTA_READY, f"this task instance already has an active job on {model}")
            if seen.active < max_active_jobs:
                return QuotaOutcome(QUOTA_READY, f"{seen.active} of at most {max_active_jobs} jobs active on {model}")
            reason = f"a free slot: {seen.active} of at most {max_active_jobs} fine-tuning jobs are active on {model}"
        elif isinstance(seen, TRANSIENT):
            logger.warning("Could not count the active fine-tuning jobs on %s: %s", model, seen)
        else:
            return QuotaOutcome(QUOTA_ERROR, f"Could not count the active fine-tuning jobs on {model}: {seen}")
        wake_at = clock() + interval
        logger.info("Waiting for %s; looking again at %s", reason, clock_time(wake_at))
        if deadline is not None and wake_at >= deadline:
            logger.info("The deadline (%s) comes first", clock_time(deadline))


def clock_time(moment: float) -> str:
    """A moment as people read it in a log: ``HH:MM:SS UTC``."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(moment))


def same_base_model(job_model: str | None, model: str) -> bool:
    """Whether a job trains ``model``: the same name, or a dated snapshot of it (``gpt-4o-mini-2024-07-18``).

    A service reports the snapshot it resolved an alias to, so a job made with ``gpt-4o-mini`` counts for it.
    """
    if not job_model:
        return False
    if job_model == model:
        return True
    rest = job_model[len(model) + 1 :] if job_model.startswith(model + "-") else ""
    return rest[:4].isdigit()


def count_active(jobs: Iterable[FineTuningJob], model: str, *, tag: str | None, own_job_id: str | None) -> Slots:
    """Count the active jobs on ``model`` that are not this task instance's (its tag, or its recorded job id)."""
    from airflow_provider_finetune.rules.once import TASK_TAG_KEY  # here: the quota trigger's module stays light

    active = 0
    ours = False
    for job in jobs:
        if job.status.value in TERMINAL or not same_base_model(job.model, model):
            continue
        if (own_job_id is not None and job.id == own_job_id) or (
            tag is not None and (job.metadata or {}).get(TASK_TAG_KEY) == tag
        ):
            ours = True
        else:
            active += 1
    return Slots(active, ours)
