"""The drivers that carry out the pure wait rules with a hook's reads: on the worker (sync) and in an event loop.

:func:`~airflow_provider_finetune.rules.waiting.watch` and :func:`~airflow_provider_finetune.rules.quota.await_quota`
decide everything without I/O; the functions here answer their steps with the hook's calls, so that the rules
never import the hook. The triggerer's shared poller answers the same steps with coalesced reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Callable
from typing import TYPE_CHECKING

from airflow_provider_finetune.core.statuses import TERMINAL
from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.rules.quota import PAGE, QuotaOutcome, QuotaWait, Slots, bounded, count_active
from airflow_provider_finetune.rules.waiting import (
    EVENTS_PAGE_MAX,
    EVENTS_PER_POLL,
    Observation,
    Outcome,
    Pause,
    Poll,
    Watch,
    newer_events,
    read_back,
)

if TYPE_CHECKING:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import FineTuningJob, FineTuningJobEvent

__all__ = [
    "aactive_slots",
    "active_slots",
    "aobserve",
    "observe",
    "wait_async",
    "wait_quota_async",
    "wait_quota_sync",
    "wait_sync",
]


def observe(hook: FineTuningHook, job_id: str, poll: Poll) -> Observation:
    """Read a job, its new events and (when asked for) its checkpoints with the sync client.

    Every event newer than ``poll.after_event`` is read once the job is in ``poll.ends``, and on every read
    of a ``poll.history``.
    """
    job = hook.get_job(job_id)
    checkpoints = list(hook.iter_checkpoints(job_id, limit=100)) if poll.checkpoints else None
    if not hook.backend.supports("events"):
        return Observation(job, checkpoints=checkpoints)
    over = poll.history or job.status.value in poll.ends
    events: list[FineTuningJobEvent] = []
    try:
        # A wait that is over wants every event since its last line: the largest page saves reads back.
        page = hook.list_events(job_id, limit=EVENTS_PAGE_MAX if over else EVENTS_PER_POLL)
        events += page.data
        while over and (cursor := read_back(events, poll.after_event, page.has_more, history=poll.history)):
            page = hook.list_events(job_id, after=cursor, limit=EVENTS_PAGE_MAX)
            events += page.data
    except FineTuningError as err:  # the job's state is known: the wait must not fail over progress lines
        # None of them is taken: read again from the same place next time, no line is skipped.
        return Observation(job, [], checkpoints, events_error=err)
    return Observation(job, newer_events(events, poll.after_event), checkpoints)


async def aobserve(hook: FineTuningHook, job_id: str, poll: Poll) -> Observation:
    """Read a job, its new events and (when asked for) its checkpoints with the async client, as :func:`observe`."""
    job = await hook.aget_job(job_id)
    from airflow_provider_finetune.hooks.flows import apages  # the models load with the hook, off the event loop

    checkpoints = None
    if poll.checkpoints:
        checkpoints = [c async for c in apages(hook, hook.backend.checkpoints(job_id, None, 100))]
    if not hook.backend.supports("events"):
        return Observation(job, checkpoints=checkpoints)
    over = poll.history or job.status.value in poll.ends
    events: list[FineTuningJobEvent] = []
    try:
        # A wait that is over wants every event since its last line: the largest page saves reads back.
        page = await hook.alist_events(job_id, limit=EVENTS_PAGE_MAX if over else EVENTS_PER_POLL)
        events += page.data
        while over and (cursor := read_back(events, poll.after_event, page.has_more, history=poll.history)):
            page = await hook.alist_events(job_id, after=cursor, limit=EVENTS_PAGE_MAX)
            events += page.data
    except FineTuningError as err:  # as in observe: the wait must not fail over progress lines
        return Observation(job, [], checkpoints, events_error=err)
    return Observation(job, newer_events(events, poll.after_event), checkpoints)


def wait_sync(
    hook: FineTuningHook, job_id: str, steps: Watch, *, sleep: Callable[[float], None] = time.sleep
) -> Outcome:
    """Carry out :func:`watch` on the worker."""
    step = next(steps)
    while True:
        reply: Observation | FineTuningError | None = None
        if isinstance(step, Pause):
            sleep(step.seconds)
        else:
            try:
                reply = observe(hook, job_id, step)
            except FineTuningError as err:
                reply = err
        try:
            step = steps.send(reply)  # type: ignore[arg-type]
        except StopIteration as done:
            return done.value


async def wait_async(hook: FineTuningHook, job_id: str, steps: Watch) -> Outcome:
    """Carry out :func:`watch` in an event loop, with the hook's own async reads (no shared poller)."""
    step = next(steps)
    while True:
        reply: Observation | FineTuningError | None = None
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
        else:
            try:
                reply = await aobserve(hook, job_id, step)
            except FineTuningError as err:
                reply = err
        try:
            step = steps.send(reply)  # type: ignore[arg-type]
        except StopIteration as done:
            return done.value


def active_slots(hook: FineTuningHook, model: str, *, tag: str | None, own_job_id: str | None) -> Slots:
    """Count the service's active jobs on ``model`` with the sync client (at most ``MAX_WALK`` jobs are read)."""
    return count_active(bounded(hook.iter_jobs(limit=PAGE)), model, tag=tag, own_job_id=own_job_id)


async def aactive_slots(hook: FineTuningHook, model: str, *, tag: str | None, own_job_id: str | None) -> Slots:
    """Async :func:`active_slots`."""
    from airflow_provider_finetune.hooks.flows import apages

    jobs = await _collect(apages(hook, hook.backend.list_jobs(None, PAGE, None)))
    return count_active(jobs, model, tag=tag, own_job_id=own_job_id)


async def _collect(jobs: AsyncIterable[FineTuningJob]) -> list[FineTuningJob]:
    from airflow_provider_finetune.rules.once import MAX_WALK

    found: list[FineTuningJob] = []
    walked = 0
    async for job in jobs:
        walked += 1
        if job.status.value not in TERMINAL:
            found.append(job)
        if walked >= MAX_WALK:
            break
    return found


def wait_quota_sync(
    hook: FineTuningHook,
    steps: QuotaWait,
    *,
    tag: str | None,
    own_job_id: str | None,
    sleep: Callable[[float], None] = time.sleep,
    until_pause: bool = False,
) -> QuotaOutcome | Pause:
    """Carry out :func:`await_quota` on the worker.

    :param until_pause: stop at the first pause and return it (the operator then defers the rest).
    """
    try:
        step = next(steps)
    except StopIteration as done:  # nothing to wait for
        return done.value
    while True:
        reply: Slots | FineTuningError | None = None
        if isinstance(step, Pause):
            if until_pause:
                return step
            sleep(step.seconds)
        else:
            try:
                reply = active_slots(hook, step.model, tag=tag, own_job_id=own_job_id)
            except FineTuningError as err:
                reply = err
        try:
            step = steps.send(reply)
        except StopIteration as done:
            return done.value


async def wait_quota_async(
    hook: FineTuningHook, steps: QuotaWait, *, tag: str | None, own_job_id: str | None
) -> QuotaOutcome:
    """Carry out :func:`await_quota` in an event loop (the triggerer)."""
    import asyncio

    try:
        step = next(steps)
    except StopIteration as done:  # nothing to wait for
        return done.value
    while True:
        reply: Slots | FineTuningError | None = None
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
        else:
            try:
                reply = await aactive_slots(hook, step.model, tag=tag, own_job_id=own_job_id)
            except FineTuningError as err:
                reply = err
        try:
            step = steps.send(reply)
        except StopIteration as done:
            return done.value
