"""The wait rules carried out with a hook's reads: on the worker (sync) and in an event loop.

:func:`~airflow_provider_finetune.rules.waiting.watch` and :func:`~airflow_provider_finetune.rules.quota.await_quota`
decide everything without I/O; :func:`waiting` makes their steps a flow whose reads are the backend's calls, run
by the hook's two flow drivers, so that the rules never import the hook. The triggerer's shared poller answers
the same steps with coalesced reads.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from airflow_provider_finetune.core.flows import Flow, Sleep, raised, run_flow_sync
from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.rules.quota import PAGE, QuotaOutcome, QuotaWait, Slots, count_active
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
    from pydantic import BaseModel

    from airflow_provider_finetune.backends.base import Backend, Call
    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent, Page

M = TypeVar("M", bound="BaseModel")
S = TypeVar("S")
R = TypeVar("R")
O = TypeVar("O")  # noqa: E741

__all__ = [
    "active_slots",
    "job_and_checkpoints",
    "listed",
    "observation",
    "wait_async",
    "wait_quota_async",
    "wait_quota_sync",
    "wait_sync",
    "waiting",
]


def observation(backend: Backend, job_id: str, poll: Poll) -> Flow[Observation]:
    """Read a job, its new events and (when asked for) its checkpoints.

    Every event newer than ``poll.after_event`` is read once the job is in ``poll.ends``, and on every read
    of a ``poll.history``.
    """
    job: FineTuningJob = raised((yield backend.job_call("GET", job_id)))
    checkpoints = None
    if poll.checkpoints:
        checkpoints = yield from listed(backend, backend.checkpoints(job_id, None, 100))
    if not backend.supports("events"):
        return Observation(job, checkpoints=checkpoints)
    over = poll.history or job.status.value in poll.ends
    events: list[FineTuningJobEvent] = []
    # A wait that is over wants every event since its last line: the largest page saves reads back.
    page = yield backend.events(job_id, None, EVENTS_PAGE_MAX if over else EVENTS_PER_POLL)
    while not isinstance(page, FineTuningError):
        events += page.data
        cursor = over and read_back(events, poll.after_event, page.has_more, history=poll.history)
        if not cursor:
            return Observation(job, newer_events(events, poll.after_event), checkpoints)
        page = yield backend.events(job_id, cursor, EVENTS_PAGE_MAX)
    # The job's state is known: the wait must not fail over progress lines. None of them is taken: read again
    # from the same place next time, no line is skipped.
    return Observation(job, [], checkpoints, events_error=page)


def active_slots(backend: Backend, model: str, *, tag: str | None, own_job_id: str | None) -> Flow[Slots]:
    """Count the service's active jobs on ``model`` (at most ``MAX_WALK`` jobs are read)."""
    from airflow_provider_finetune.rules.once import MAX_WALK

    jobs = yield from listed(backend, backend.list_jobs(None, PAGE, None), most=MAX_WALK)
    return count_active(jobs, model, tag=tag, own_job_id=own_job_id)


def listed(backend: Backend, call: Call[Page[M]] | None, *, most: int | None = None) -> Flow[list[M]]:
    """Every item of a list call, page after page (the first ``most`` where given)."""
    items: list[M] = []
    while call is not None and (most is None or len(items) < most):
        page: Page[M] = raised((yield call))
        items += page.data
        call = backend.next_page(call, page)
    return items[:most]


def job_and_checkpoints(backend: Backend, job_id: str) -> Flow[tuple[FineTuningJob, list[FineTuningJobCheckpoint]]]:
    """Read a job, then its checkpoints: read after it, they include every one it made before it ended."""
    job: FineTuningJob = raised((yield backend.job_call("GET", job_id)))
    checkpoints = yield from listed(backend, backend.checkpoints(job_id, None, 100))
    return job, checkpoints


def waiting(
    steps: Generator[Pause | S, Any, O],
    answer: Callable[[S], Flow[R]],
    *,
    until_pause: bool = False,
) -> Flow[O | Pause]:
    """A wait rule's steps as a flow: a pause is a sleep; any other step gets what ``answer``'s flow for it returns.

    A read that fails answers with its error: the rule decides what a failed read means.

    :param until_pause: end at the first pause and return it (the operator then defers the rest).
    """
    reply: R | FineTuningError | None = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as done:
            return done.value
        reply = None
        if isinstance(step, Pause):
            if until_pause:
                return step
            yield Sleep(step.seconds)
            continue
        try:
            reply = yield from answer(step)
        except FineTuningError as err:
            reply = err


def wait_sync(
    hook: FineTuningHook, job_id: str, steps: Watch, *, sleep: Callable[[float], None] | None = None
) -> Outcome:
    """Carry out :func:`~airflow_provider_finetune.rules.waiting.watch` on the worker."""
    flow = waiting(steps, lambda poll: observation(hook.backend, job_id, poll))
    return cast("Outcome", run_flow_sync(hook.call, flow, sleep=sleep))


async def wait_async(hook: FineTuningHook, job_id: str, steps: Watch) -> Outcome:
    """Carry out :func:`~airflow_provider_finetune.rules.waiting.watch` in an event loop (no shared poller)."""
    await hook.asettings()
    flow = waiting(steps, lambda poll: observation(hook.backend, job_id, poll))
    return cast("Outcome", await hook.arun_flow(flow))


def wait_quota_sync(
    hook: FineTuningHook,
    steps: QuotaWait,
    *,
    tag: str | None,
    own_job_id: str | None,
    until_pause: bool = False,
) -> QuotaOutcome | Pause:
    """Carry out :func:`~airflow_provider_finetune.rules.quota.await_quota` on the worker.

    :param until_pause: stop at the first pause and return it (the operator then defers the rest).
    """
    flow = waiting(
        steps,
        lambda step: active_slots(hook.backend, step.model, tag=tag, own_job_id=own_job_id),
        until_pause=until_pause,
    )
    return hook.run_flow(flow)


async def wait_quota_async(
    hook: FineTuningHook, steps: QuotaWait, *, tag: str | None, own_job_id: str | None
) -> QuotaOutcome:
    """Carry out :func:`~airflow_provider_finetune.rules.quota.await_quota` in an event loop (the triggerer)."""
    await hook.asettings()
    flow = waiting(steps, lambda step: active_slots(hook.backend, step.model, tag=tag, own_job_id=own_job_id))
    return cast("QuotaOutcome", await hook.arun_flow(flow))
