"""Waiting for a fine-tuning job: one set of rules for the worker's poll loop and the triggerer's.

:func:`watch` decides everything (when to poll, what to log, when the wait is over, how many failed polls in a row
end it) without doing I/O; :func:`~airflow_provider_finetune.hooks.waits.wait_sync` and
:func:`~airflow_provider_finetune.hooks.waits.wait_async` carry out its steps with the hook's sync and async calls,
and the triggerer's shared poller (:meth:`airflow_provider_finetune.triggers.poller.JobPoller.wait`) carries them
out with coalesced reads. So a deferred wait and a wait on the worker end the same way, with the same progress
lines.

This module knows nothing of the poller: the poller builds on the rules here, never the other way round.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_provider_finetune.core.statuses import RUNNING, TERMINAL
from airflow_provider_finetune.exceptions import (
    ConflictError,
    FineTuningConnectionError,
    FineTuningError,
    InternalServerError,
    RateLimitError,
)
from airflow_provider_finetune.rules.budget import OVER_BUDGET, progress_of
from airflow_provider_finetune.rules.early_stopping import EARLY_STOPPED

if TYPE_CHECKING:
    from airflow_provider_finetune.models import FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent, JobState
    from airflow_provider_finetune.rules.budget import Budget
    from airflow_provider_finetune.rules.early_stopping import EarlyStopping, Progress

__all__ = [
    "TERMINAL",
    "WAIT_ERROR",
    "WAIT_TIMEOUT",
    "Observation",
    "Outcome",
    "Pause",
    "Poll",
    "describe_event",
    "describe_status",
    "newer_events",
    "read_back",
    "watch",
]

#: Outcome status when the deadline passed before the job reached a status waited for.
WAIT_TIMEOUT = "timeout"
#: Outcome status when the job could not be read (a refused key, an unknown job, too many failed polls).
WAIT_ERROR = "error"
#: Progress lines one poll logs at most (the newest events); the others are counted in one line. The poll that
#: ends the wait logs every event it read: the job's last lines are the ones people look for.
MAX_LINES_PER_POLL = 20
#: How many of the newest events one poll reads at most while the job goes on.
EVENTS_PER_POLL = 50
#: Events per page when a wait that ends reads back to the last event it logged (the service's largest page).
EVENTS_PAGE_MAX = 100
#: Events a wait that ends reads at most: a bound for a wait that logged its last line long ago.
EVENTS_AT_END = 1000
#: Events a wait that needs the job's whole history (early stopping, on its first read) reads at most.
HISTORY_EVENTS = 10_000

# Failures that a later poll may not see again: the hook already retried them, the wait keeps going.
TRANSIENT = (FineTuningConnectionError, RateLimitError, InternalServerError, ConflictError)


class Poll(NamedTuple):
    """Step of :func:`watch`: read the job and its events newer than ``after_event``.

    When the job is in one of ``ends`` (the wait is over), every event newer than ``after_event`` is read
    (see :func:`read_back`), so that the wait logs the job to its end before it ends. With ``history``, so
    they are on every read, from the job's first event when ``after_event`` is ``None``: a wait that judges
    every evaluation (early stopping) misses none. With ``checkpoints``, the job's checkpoints are read too.
    """

    after_event: str | None
    ends: frozenset[str] = TERMINAL
    history: bool = False
    checkpoints: bool = False


class Pause(NamedTuple):
    """Step of :func:`watch`: wait this many seconds."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Observation:
    """What one poll saw: the job (whole, or its state only), its new events, its checkpoints if asked for."""

    job: FineTuningJob | JobState
    events: list[FineTuningJobEvent] = field(default_factory=list)
    checkpoints: list[FineTuningJobCheckpoint] | None = None
    #: Why the events (or some of them) could not be read; the job was, so the wait goes on.
    events_error: FineTuningError | None = None


@dataclass(frozen=True)
class Outcome:
    """How a wait ended.

    :param status: the job's status when it reached one waited for (or a terminal one), else
        :data:`WAIT_TIMEOUT` or :data:`WAIT_ERROR`.
    :param job_id: the job.
    :param message: what happened, for people.
    :param last_event_id: the newest event seen, so that a later wait does not log old ones again.
    :param checkpoint: the checkpoint a checkpoint wait found.
    :param early_stopping: for a job that stopped improving, what its wait saw
        (:meth:`~airflow_provider_finetune.rules.early_stopping.Progress.to_json`).
    """

    status: str
    job_id: str
    message: str
    last_event_id: str | None = None
    checkpoint: Any = None
    early_stopping: dict[str, Any] | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON-safe form, as a trigger event carries it."""
        payload: dict[str, Any] = {
            "status": self.status,
            "job_id": self.job_id,
            "message": self.message,
            "last_event_id": self.last_event_id,
        }
        if self.early_stopping is not None:
            payload["early_stopping"] = self.early_stopping
        return payload


Watch = Generator[Poll | Pause, Observation | FineTuningError, Outcome]


def watch(
    job_id: str,
    *,
    targets: Collection[str] = TERMINAL,
    deadline: float | None = None,
    poll_interval: float = 60.0,
    max_consecutive_errors: int = 10,
    last_event_id: str | None = None,
    log: logging.Logger | logging.LoggerAdapter[Any] | Any = None,
    clock: Callable[[], float] = time.time,
    rng: Callable[[], float] = random.random,
    events: bool = True,
    early_stopping: EarlyStopping | None = None,
    budget: Budget | None = None,
) -> Watch:
    """Poll a job until it reaches one of ``targets`` or a terminal status, the deadline, or too many errors.

    With ``early_stopping``, the wait also ends (status
    :data:`~airflow_provider_finetune.rules.early_stopping.EARLY_STOPPED`, the job still running) once the job's
    validation metric has not improved for the rule's patience and the job has a checkpoint to return. Its
    evaluations are the metrics events (every one of them: each poll reads all the events since the last;
    the first, the job's whole history, so that a restarted wait judges as the first one did), or, where
    the service keeps no event log, the checkpoints.

    ``paused`` (and any status the service adds) is a waiting state: the wait goes on. Each poll logs the
    job's new events as progress lines (step, losses, ETA) and never logs an event twice.

    :param job_id: the job.
    :param targets: statuses that end the wait besides the terminal ones.
    :param deadline: absolute time (seconds since the epoch) at which the wait gives up.
    :param poll_interval: seconds between polls.
    :param max_consecutive_errors: transient failures in a row (after the hook's own retries) that end
        the wait with :data:`WAIT_ERROR`.
    :param last_event_id: the newest event already logged.
    :param log: where progress lines go.
    :param clock: the time source.
    :param rng: the source of jitter, in [0, 1).
    :param events: whether the service keeps an event log; without one, each change of status is logged
        instead (the first status seen included), so that the wait still says how the job goes.
    :param early_stopping: the rule that stops a job whose metric no longer improves.
    :param budget: the job's cost cap: once the job has cost more (as the service reports it, or its trained
        tokens, or the share of its steps done), the wait ends
        :data:`~airflow_provider_finetune.rules.budget.OVER_BUDGET`.
    """
    logger = log or logging.getLogger(__name__)
    ends = frozenset(targets) | TERMINAL
    errors = 0
    last_status: str | None = None
    progress = _fresh_progress(early_stopping)
    done: float | None = None  # the share of the training steps done, for the budget
    history, checkpoints = early_stopping is not None and events, early_stopping is not None and not events
    while True:
        seen: Observation | FineTuningError | None = yield Poll(last_event_id, ends, history, checkpoints)
        if isinstance(seen, Observation):
            errors = 0
            status = seen.job.status.value
            if seen.events_error is not None:
                logger.warning("Could not read the events of job %s: %s", job_id, seen.events_error)
            _log_events(logger, job_id, seen, everything=status in ends)
            if not events and status != last_status:
                logger.info("%s", describe_status(seen.job, last_status))
            last_status = status
            if seen.events:
                last_event_id = seen.events[-1].id
            if status in ends:
                return Outcome(status, job_id, _ended(seen.job), last_event_id)
            if budget is not None:
                done = progress_of(seen.events, done)
                overspent = budget.overspent(seen.job, done)
                if overspent is not None:
                    logger.info("%s", overspent)
                    return Outcome(OVER_BUDGET, job_id, overspent, last_event_id)
            if early_stopping is not None and progress is not None:
                progress = _judge(early_stopping, progress, seen, logger)
                if progress.should_stop(early_stopping):
                    reason = f"Job {job_id} stopped early: {progress.reason(early_stopping)}"
                    logger.info("%s", reason)
                    return Outcome(EARLY_STOPPED, job_id, reason, last_event_id, early_stopping=progress.to_json())
        elif isinstance(seen, TRANSIENT):
            errors += 1
            logger.warning("Could not read job %s (%d in a row): %s", job_id, errors, seen)
            if errors >= max_consecutive_errors:
                return Outcome(
                    WAIT_ERROR,
                    job_id,
                    f"{errors} polls of job {job_id} failed in a row; last: {seen}",
                    last_event_id,
                )
        else:
            return Outcome(WAIT_ERROR, job_id, f"Could not read job {job_id}: {seen}", last_event_id)

        now = clock()
        if deadline is not None and now >= deadline:
            return Outcome(WAIT_TIMEOUT, job_id, f"Job {job_id} did not finish before the deadline", last_event_id)
        wait = next_pause(seen.job if isinstance(seen, Observation) else None, poll_interval, now, rng())
        seen = None  # a waiting trigger keeps no copy of the job through its pause (memory per trigger)
        yield Pause(wait if deadline is None else min(wait, max(deadline - now, 0.0)))


def _fresh_progress(rule: EarlyStopping | None) -> Progress | None:
    from airflow_provider_finetune.rules.early_stopping import Progress

    return None if rule is None else Progress()


def _judge(rule: EarlyStopping, progress: Progress, seen: Observation, logger: Any) -> Progress:
    """Fold one poll's evaluations into the progress; say once when patience runs out before any checkpoint."""
    from dataclasses import replace

    from airflow_provider_finetune.rules.early_stopping import (
        checkpoint_evaluations,
        event_evaluations,
        has_checkpoint_event,
    )

    before = progress
    if seen.checkpoints is not None:
        progress = progress.add(rule, checkpoint_evaluations(rule, seen.checkpoints))
        checkpointed = bool(seen.checkpoints)
    else:
        progress = progress.add(rule, event_evaluations(rule, seen.events))
        checkpointed = has_checkpoint_event(seen.events)
    if checkpointed and not progress.checkpointed:
        progress = replace(progress, checkpointed=True)
    if progress.out_of_patience(rule) and not progress.checkpointed and not before.out_of_patience(rule):
        logger.info(
            "[%s] %s; training goes on until it makes a checkpoint to return", seen.job.id, progress.reason(rule)
        )
    return progress


def _log_events(logger: Any, job_id: str, seen: Observation, *, everything: bool) -> None:
    """Log a poll's new events as progress lines, all in one record.

    When the wait ends, every event it read is shown (a job's last lines are its outcome); before, the newest
    :data:`MAX_LINES_PER_POLL`. One record however many lines: in the triggerer each log record is a synchronous
    send from the trigger runner to its supervisor, so a job that ends with 100 unread events costs one, not 100.
    A function of its own so that nothing it makes stays in the wait's frame through the pause: kept that long,
    a slice of events would outlive young collections and count towards a full one.
    """
    shown = seen.events if everything else seen.events[-MAX_LINES_PER_POLL:]
    hidden = len(seen.events) - len(shown)
    if len(shown) == 1 and not hidden:
        logger.info("%s", describe_event(seen.job, shown[0]))
    elif shown:
        head = f"[{job_id}] {len(shown)} events" + (f" ({hidden} earlier not shown)" if hidden else "") + ":"
        logger.info("%s", "\n".join([head, *(describe_event(seen.job, event) for event in shown)]))


#: How much faster than ``poll_interval`` a wait polls in the last stretch before ``estimated_finish``.
NEAR_FINISH_SPEEDUP = 4
#: Share of a pause drawn at random, so that many waits do not poll in step.
JITTER = 0.15


def next_pause(job: FineTuningJob | JobState | None, poll_interval: float, now: float, draw: float = 0.0) -> float:
    """Seconds until the next poll: ``poll_interval`` at most, less near the job's estimated finish.

    ``poll_interval`` is the notice latency a wait promises, so no pause is longer. A job that is queued,
    validating, paused, or running far from its ``estimated_finish`` is polled at that pace; in the last
    ``poll_interval`` before the estimate, up to :data:`NEAR_FINISH_SPEEDUP` times faster, to see the end
    soon after it comes. Every pause is shortened by up to :data:`JITTER` of itself: by ``draw`` (a
    random number in [0, 1)) times that.
    """
    pause = poll_interval
    if job is not None and job.status.value == RUNNING and job.estimated_finish:
        left = job.estimated_finish - now
        if left < poll_interval:
            pause = max(poll_interval / NEAR_FINISH_SPEEDUP, left, 0.0)
    return pause * (1.0 - JITTER * draw)


def _ended(job: FineTuningJob | JobState) -> str:
    text = f"Job {job.id} is {job.status.value}"
    if job.fine_tuned_model:
        text += f": {job.fine_tuned_model}"
    if job.error is not None:
        text += f": {job.error.describe()}"
    return text


def describe_event(job: FineTuningJob | JobState, event: FineTuningJobEvent) -> str:
    """One readable progress line for an event: metrics as step, losses, accuracy and ETA."""
    data = event.data or {}
    if event.type == "metrics" and "step" in data:
        step = f"step {data['step']}" + (f"/{data['total_steps']}" if data.get("total_steps") else "")
        numbers = [
            f"{name}={data[name]:.4f}"
            for name in ("train_loss", "valid_loss", "train_mean_token_accuracy", "valid_mean_token_accuracy")
            if isinstance(data.get(name), int | float)
        ]
        line = " ".join([f"[{job.id}]", step, *numbers])
    elif data.get("fine_tuned_model_checkpoint"):
        # Checkpoints announce themselves as events: logged from here, with no extra request per poll.
        line = f"[{job.id}] checkpoint at step {data.get('step', '?')}: {data['fine_tuned_model_checkpoint']}"
    else:
        level = "" if event.level == "info" else f"{event.level.upper()} "
        line = f"[{job.id}] {level}{event.message}"
    if job.estimated_finish and job.status.value not in TERMINAL:
        left = max(int(job.estimated_finish - time.time()), 0)
        line += f" (ETA {time.strftime('%H:%M:%S', time.gmtime(job.estimated_finish))} UTC, in {_duration(left)})"
    return line


def describe_status(job: FineTuningJob | JobState, before: str | None) -> str:
    """The progress line of a change of status, for services that keep no event log."""
    line = f"[{job.id}] " + (f"{before} -> {job.status.value}" if before else f"status: {job.status.value}")
    if job.estimated_finish and job.status.value not in TERMINAL:
        left = max(int(job.estimated_finish - time.time()), 0)
        line += f" (ETA {time.strftime('%H:%M:%S', time.gmtime(job.estimated_finish))} UTC, in {_duration(left)})"
    return line


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def newer_events(events_newest_first: Iterable[FineTuningJobEvent], after: str | None) -> list[FineTuningJobEvent]:
    """The events newer than ``after``, oldest first.

    While the job goes on, one page of the newest events is read per poll: should more than a page arrive
    between two polls, the oldest of them are not logged (the job's state is read from the job, never from its
    events). Once the wait is over, :func:`read_back` says which older pages complete them.
    """
    fresh = []
    for event in events_newest_first:
        if event.id == after:
            break
        fresh.append(event)
    fresh.reverse()
    return fresh


def read_back(
    events_newest_first: Sequence[FineTuningJobEvent], after: str | None, has_more: bool, *, history: bool = False
) -> str | None:
    """The cursor of the next older page to read for a wait that is over, or ``None`` when none is needed.

    A wait that is over reads every event newer than ``after`` (the last one it logged), page by page back
    in time, up to :data:`EVENTS_AT_END` events. A wait that has logged none has no place to go on from: it
    logs the newest page (the job's end), as a first poll does, and does not replay the job's whole history.
    A wait that needs the ``history`` (see :class:`Poll`) does replay it, up to :data:`HISTORY_EVENTS` events.

    :param events_newest_first: the events read so far, newest first.
    :param after: the newest event the wait has logged.
    :param has_more: whether the service has older events than the last page read.
    :param history: whether the wait needs every event, from the job's first when ``after`` is ``None``.
    """
    bound = HISTORY_EVENTS if history else EVENTS_AT_END
    if (after is None and not history) or not has_more or not events_newest_first:
        return None
    if len(events_newest_first) >= bound:
        return None
    if any(event.id == after for event in events_newest_first):
        return None
    return events_newest_first[-1].id
