"""Coalesced polling: the job triggers of one connection in one triggerer share their status polls.

Each trigger still runs its own wait (its own deadline, its own single event); only the reading is shared.
When a trigger wants to see its job, it asks the :class:`JobPoller` of its connection and event loop. The
poller serves every request that falls due within the coalescing window in one *round*: one paginated
``GET /fine_tuning/jobs`` covers the jobs it lists, a per-job ``GET`` only those it does not show, and events
are read for the jobs whose status changed and, within a small budget, for the others in turn. A round never
answers a request later than it was due, so sharing never costs notice latency.

A poller holds no state that a trigger needs: a trigger re-created on another triggerer simply asks that
triggerer's poller. What a poller remembers (when each job was created, its last status, when its events
were last read) only saves requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.waiting import EVENTS_PER_POLL, TERMINAL, Observation, _newer

if TYPE_CHECKING:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import FineTuningJob, FineTuningJobEvent

__all__ = ["JobPoller", "shared_poller"]

#: Jobs per page of the list call (the service's largest page).
LIST_PAGE_SIZE = 100
#: Share of the jobs in a round whose events may be read, besides those that ended.
EVENTS_SHARE = 1 / 80
#: Waiting triggers woken at a time by a round, so that their progress lines do not stall the loop.
SETTLE_CHUNK = 50
#: Concurrent per-job requests of one round.
CONCURRENCY = 32


@dataclass(eq=False)  # compared by identity: a round takes its batch out of the queue in one pass
class _Request:
    job_id: str
    after_event: str | None
    due: float
    window: float
    reply: asyncio.Future[Observation]


@dataclass
class _Memory:
    created_at: int | None = None
    status: str | None = None
    events_read: float = 0.0


@dataclass
class JobPoller:
    """Serves the polls of every job trigger of one connection in one event loop.

    :param hook: the hook whose async client and connection the polls use.
    :param clock: the time source.
    """

    hook: FineTuningHook
    clock: Callable[[], float] = time.time
    pending: list[_Request] = field(default_factory=list)
    memory: dict[str, _Memory] = field(default_factory=dict)
    rounds: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def observe(self, job_id: str, after_event: str | None, *, due: float, window: float) -> Observation:
        """Return the job and its events newer than ``after_event``, read no later than ``due``.

        :param job_id: the job.
        :param after_event: the newest event the caller has seen.
        :param due: the time by which the caller wants the answer (the end of its pause).
        :param window: how early it may be read: requests due within the window of a round share it.
        """
        reply: asyncio.Future[Observation] = asyncio.get_running_loop().create_future()
        self.pending.append(_Request(job_id, after_event, due, window, reply))
        self._ensure_running()
        self._wake.set()
        try:
            return await reply
        finally:
            if not reply.done():  # the trigger was cancelled (its task was killed, or the triggerer stops)
                reply.cancel()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="finetune-job-poller")

    async def _run(self) -> None:
        while True:
            self.pending = [r for r in self.pending if not r.reply.done()]
            if not self.pending:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=300)
                except asyncio.TimeoutError:
                    return  # idle: the next request starts a new task
                continue
            now = self.clock()
            first = min(r.due for r in self.pending)
            if first > now:
                self._wake.clear()
                # A new request may be due sooner: wake up for it, or when the first one falls due.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=first - now)
                continue
            batch: list[_Request] = []
            later: list[_Request] = []
            for request in self.pending:
                (batch if request.due - request.window <= now else later).append(request)
            self.pending = later
            try:
                await self._round(batch)
            except Exception as err:  # a bug or an unexpected answer: every waiting trigger hears of it
                for request in batch:
                    _settle(request, error=err)

    async def _round(self, batch: list[_Request]) -> None:
        self.rounds += 1
        wanted = {r.job_id for r in batch}
        try:
            jobs = await self._read_jobs(wanted)
        except FineTuningError as err:
            for request in batch:
                _settle(request, error=err)
            return
        missing = [job_id for job_id in wanted if job_id not in jobs]
        errors: dict[str, FineTuningError] = {}
        for job_id, got in zip(missing, await self._each(self.hook.aget_job, missing), strict=True):
            if isinstance(got, FineTuningError):
                errors[job_id] = got
            else:
                jobs[job_id] = got
        events = await self._read_events(batch, jobs)
        for i, request in enumerate(batch):
            if i and not i % SETTLE_CHUNK:
                await asyncio.sleep(0)  # let the woken triggers run (and log) before waking more
            if request.job_id in errors:
                _settle(request, error=errors[request.job_id])
                continue
            job = jobs[request.job_id]
            got = events.get(request.job_id, [])
            if isinstance(got, FineTuningError):
                got = []  # the job's state is known; its progress lines wait for the next round
            _settle(request, Observation(job, _newer(got, request.after_event)))

    async def _read_jobs(self, wanted: set[str]) -> dict[str, FineTuningJob]:
        """List jobs, newest first, until every wanted job is seen or the list is older than they all are.

        Jobs a trigger waits on are usually recent, so the newest pages cover them, first sight included.
        The pages read are bounded by the jobs this poller knows of; a job they do not show (an old one,
        or one the service lists elsewhere) is read by id.
        """
        found: dict[str, FineTuningJob] = {}
        known = [m.created_at for j in wanted if (m := self.memory.get(j)) and m.created_at is not None]
        # Only when every wanted job's age is known can the listing stop at the oldest of them.
        oldest_wanted = min(known) if len(known) == len(wanted) else None
        after: str | None = None
        for _ in range(math.ceil(max(len(wanted), len(self.memory)) / LIST_PAGE_SIZE) + 1):
            page = await self.hook.alist_jobs(after=after, limit=LIST_PAGE_SIZE)
            for job in page.data:
                if job.id in wanted:
                    found[job.id] = job
            last = page.data[-1] if page.data else None
            if (
                len(found) == len(wanted)
                or not page.has_more
                or last is None
                or (oldest_wanted is not None and last.created_at is not None and last.created_at < oldest_wanted)
            ):
                break
            after = page.next_after
        return found

    async def _read_events(
        self, batch: list[_Request], jobs: dict[str, FineTuningJob]
    ) -> dict[str, list[FineTuningJobEvent] | FineTuningError]:
        """Events of the jobs that just ended, and of a few others: changed first, then longest unread.

        Events only feed progress lines: the state of a wait is read from the job. So beyond the jobs that
        ended (read once each, for their last lines) a round reads the events of at most one job in
        :data:`EVENTS_SHARE` of its batch, and a large sweep costs a bounded number of requests per round.
        """
        now = self.clock()
        ended, changed, others = [], [], []
        for job_id in {r.job_id for r in batch if r.job_id in jobs}:
            job = jobs[job_id]
            memory = self.memory.setdefault(job_id, _Memory())
            memory.created_at = job.created_at
            status = job.status.value
            if status in TERMINAL:
                ended.append(job_id)
            elif status != memory.status:
                changed.append(job_id)
            else:
                others.append(job_id)
            memory.status = status
        others.sort(key=lambda j: self.memory[j].events_read)
        budget = max(1, math.ceil(len(batch) * EVENTS_SHARE))
        chosen = ended + (changed + others)[:budget]
        pages = await self._each(lambda j: self.hook.alist_events(j, limit=EVENTS_PER_POLL), chosen)
        result: dict[str, list[FineTuningJobEvent] | FineTuningError] = {}
        for job_id, page in zip(chosen, pages, strict=True):
            self.memory[job_id].events_read = now
            result[job_id] = page if isinstance(page, FineTuningError) else page.data
        return result

    async def _each(self, call: Callable[[str], Any], job_ids: list[str]) -> list[Any]:
        """Run ``call`` for each job, a few at a time; failures come back as values."""
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(job_id: str) -> object:
            async with limit:
                try:
                    return await call(job_id)
                except FineTuningError as err:
                    return err

        return list(await asyncio.gather(*(one(j) for j in job_ids)))


def _settle(request: _Request, observation: Observation | None = None, *, error: BaseException | None = None) -> None:
    if request.reply.done():
        return
    if error is not None:
        request.reply.set_exception(error)
    else:
        request.reply.set_result(observation)  # type: ignore[arg-type]


_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, JobPoller]] = weakref.WeakKeyDictionary()


async def shared_poller(hook: FineTuningHook) -> JobPoller:
    """The poller of the hook's connection on the running event loop, made on first use."""
    settings = await hook.asettings()
    pollers = _POLLERS.setdefault(asyncio.get_running_loop(), {})
    key = settings.fingerprint()
    poller = pollers.get(key)
    if poller is None:
        poller = pollers[key] = JobPoller(hook)
    return poller
