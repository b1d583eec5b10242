"""Coalesced polling: the job triggers of one connection in one triggerer share their status polls.

Each trigger still runs its own wait (its own deadline, its own single event); only the reading is shared.
When a trigger wants to see its job, it asks the :class:`JobPoller` of its connection and event loop, saying
by when it wants the answer and how early it may be read. The poller serves every request whose window is
open in one *round*:

* one paginated ``GET /fine_tuning/jobs``, newest first, covers the jobs it lists; each page's jobs are
  answered as soon as that page arrives;
* a per-job ``GET`` only for the jobs that are due and that the list did not show (a job not yet due that
  the pages read did not show simply waits for a later round);
* events feed progress lines only, so while jobs go on they are read within a budget per poll interval (a
  share of the jobs watched, at least a few; when no more jobs than that are watched, each on every poll):
  jobs whose status changed first, then those whose events were read longest ago;
* a job whose wait is over (it ended, or reached a status waited for) has its remaining events read in full,
  back to the last one its wait logged (the newest page when it has logged none), whatever the budget: a wait
  fires only after it has logged the job to its end. Those reads are charged to the budget, which may run
  into debt that the reads of the jobs still going on repay.

A round never answers a request later than it was due, so sharing never costs notice latency, and the
requests a poll interval costs grow with the pages of the list, not with the jobs.

A poller holds no state that a trigger needs: a trigger re-created on another triggerer simply asks that
triggerer's poller. What a poller remembers (when each job was created, the status whose events it read,
when) only saves requests, and it forgets the jobs nobody asks about any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.waiting import (
    EVENTS_PAGE_MAX,
    EVENTS_PER_POLL,
    TERMINAL,
    Observation,
    Outcome,
    Pause,
    Watch,
    newer_events,
    read_back,
)

if TYPE_CHECKING:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import FineTuningJob, FineTuningJobEvent, JobState, Page

__all__ = ["JobPoller", "shared_poller"]

#: Jobs per page of the list call (the service's largest page).
LIST_PAGE_SIZE = 100
#: Event reads per poll interval, as a share of the jobs watched ...
EVENTS_SHARE = 1 / 100
#: ... and at least this many; when no more jobs than this are watched, each has its events read on every poll.
MIN_EVENT_READS = 4
#: Concurrent per-job requests (reads by id and events) of one poller: with the list call, the
#: connections a poller keeps open.
CONCURRENCY = 8
#: A trigger's first read waits this long for others starting at the same time, so that they share a list.
FIRST_SIGHT_GATHER = 0.2
#: Seconds a job nobody asks about stays in the poller's memory.
FORGET_AFTER = 600.0


# Compared by identity: a round takes its batch out of the queue in one pass. Slots: one object per poll.
@dataclass(eq=False, slots=True)
class _Request:
    job_id: str
    after_event: str | None
    due: float
    window: float
    interval: float
    ends: frozenset[str]
    reply: asyncio.Future[Observation]


class _PageEnd(NamedTuple):
    """Where a page of the list ends: the cursor of the next page (``None`` at the end), and its age."""

    next_after: str | None
    oldest: int | None

    @classmethod
    def of(cls, page: Page[JobState]) -> _PageEnd:
        last = page.data[-1] if page.data else None
        return cls(
            page.next_after if page.has_more and last is not None else None, None if last is None else last.created_at
        )


@dataclass(slots=True)
class _Memory:
    created_at: int | None = None
    logged_status: str | None = None  # the status whose events were last read
    events_read: float = 0.0
    asked: float = 0.0
    listed: bool = False  # seen in the list, on the page read with ``after=page``
    page: str | None = None


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
    tokens: float = 0.0
    every_poll: bool = False
    _refilled: float | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONCURRENCY))
    _task: asyncio.Task[None] | None = None

    @property
    def events(self) -> bool:
        """Whether the connection's service keeps an event log (assumed until the connection is read)."""
        return "settings" not in self.hook.__dict__ or self.hook.backend.supports("events")

    async def wait(self, job_id: str, steps: Watch, *, poll_interval: float) -> Outcome:
        """Carry out :func:`~airflow_provider_finetune.waiting.watch` with reads shared through this poller.

        A pause becomes the time by which the next read is due, and the poller may serve it up to most of a
        pause early.

        :param job_id: the job.
        :param steps: the wait's rules.
        :param poll_interval: how often this wait reads (the budget of event reads is per interval).
        """
        step = next(steps)
        due, window = self.clock(), 0.0
        while True:
            reply: Observation | FineTuningError | None = None
            if isinstance(step, Pause):
                # Served up to most of a pause early: about one shared round per interval, never a late one.
                due, window = self.clock() + step.seconds, step.seconds * 0.9
            else:
                try:
                    reply = await self.observe(
                        job_id, step.after_event, due=due, window=window, interval=poll_interval, ends=step.ends
                    )
                except FineTuningError as err:
                    reply = err
            try:
                step = steps.send(reply)  # type: ignore[arg-type]
            except StopIteration as done:
                return done.value

    async def observe(
        self,
        job_id: str,
        after_event: str | None,
        *,
        due: float,
        window: float,
        interval: float,
        ends: Collection[str] = TERMINAL,
    ) -> Observation:
        """Return the job and its events newer than ``after_event``, read no later than ``due``.

        While the job is in none of ``ends``, the events are the newest ones when the poller's budget allows
        reading them, else none (the next answers bring them). Once it is in one of ``ends``, they are all
        the events newer than ``after_event``, whatever the budget.

        :param job_id: the job.
        :param after_event: the newest event the caller has seen.
        :param due: the time by which the caller wants the answer (the end of its pause).
        :param window: how early it may be read: requests whose window is open share a round.
        :param interval: the caller's poll interval (the budget of event reads is per interval).
        :param ends: the statuses that end the caller's wait.
        """
        if job_id not in self.memory:  # first sight: wait a moment for the others starting now
            due = max(due, self.clock() + FIRST_SIGHT_GATHER)
            window = max(window, FIRST_SIGHT_GATHER)
        reply: asyncio.Future[Observation] = asyncio.get_running_loop().create_future()
        request = _Request(job_id, after_event, due, window, max(interval, 1e-3), frozenset(ends), reply)
        self.pending.append(request)
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
                await self._round(batch, now)
            except Exception as err:  # a bug or an unexpected answer: every waiting trigger hears of it
                await _settle_all(batch, err)
            # Let the answers go: kept through the next pause, they would outlive young collections and
            # make the collector sweep the whole heap sooner.
            del batch, later

    async def _round(self, batch: list[_Request], now: float) -> None:
        self.rounds += 1
        self._remember(batch, now)
        asks: dict[str, list[_Request]] = {}
        for request in batch:
            asks.setdefault(request.job_id, []).append(request)
        due = {r.job_id for r in batch if r.due <= now}
        # The jobs whose lines were read longest ago may have what the budget leaves once every job that
        # ended or changed has been served; they alone are held until the list is read.
        stalest = heapq.nsmallest(int(self.tokens), asks, key=lambda j: self.memory[j].events_read)
        held: dict[str, JobState | FineTuningJob | None] = dict.fromkeys(stalest)
        reads: list[asyncio.Future[None]] = []
        try:
            async for jobs in self._pages(set(asks)):
                reads += self._serve(jobs, asks, now, held)
                # Let the triggers just answered run (and log) before the next page wakes more of them.
                await asyncio.sleep(0)
        except FineTuningError as err:
            await _settle_all([r for requests in asks.values() for r in requests], err)
            asks.clear()
            held.clear()
        for job in sorted((j for j in held.values() if j is not None), key=lambda j: self._priority(j, asks[j.id])):
            reads += self._answer(job, asks.pop(job.id), now, read_events=self.tokens >= 1)
        # Not listed: due ones are read by id; the others wait for a later round.
        missing = [job_id for job_id in asks if job_id in due]
        for job_id in [j for j in asks if j not in due]:
            self.pending.extend(asks.pop(job_id))
        reads += [asyncio.ensure_future(self._read_by_id(job_id, asks, now)) for job_id in missing]
        await asyncio.gather(*reads)

    def _remember(self, batch: list[_Request], now: float) -> None:
        """Note who asks; forget jobs nobody has asked about for a while."""
        for request in batch:
            self.memory.setdefault(request.job_id, _Memory()).asked = now
        for request in self.pending:
            self.memory.setdefault(request.job_id, _Memory()).asked = now
        stale = [job_id for job_id, m in self.memory.items() if m.asked < now - FORGET_AFTER]
        for job_id in stale:
            del self.memory[job_id]
        # The budget of event reads: a share of the jobs watched per (harmonic mean) poll interval.
        intervals = {r.job_id: r.interval for r in (*batch, *self.pending)}
        watched = len(intervals)
        per_interval = max(EVENTS_SHARE * watched, min(MIN_EVENT_READS, watched))
        # So few that the budget would only skip reads that pauses shorter than the interval (jitter, the last
        # stretch before the estimated finish) bring: each wait reads on every poll.
        self.every_poll = watched <= MIN_EVENT_READS
        rate = per_interval * sum(1 / i for i in intervals.values()) / watched  # reads per second
        if self._refilled is None:
            self.tokens = per_interval
        else:
            self.tokens = min(per_interval, self.tokens + (now - self._refilled) * rate)
        self._refilled = now

    async def _pages(self, wanted: set[str]) -> AsyncIterator[list[JobState]]:
        """Pages of the list, newest first, each as the wanted jobs it shows, until every one is seen.

        A page is named by its cursor (the ``after`` it was read with), and the poller remembers on which
        page it last saw each job. Jobs listed in an earlier round are looked for on those pages, read
        concurrently (a cursor names a fixed place in the list, so the page still holds them). Jobs not
        found so (seen for the first time, or moved) are looked for by walking the list from the top,
        reusing the pages already read; jobs a trigger waits on are usually recent, so the newest pages
        cover them. The walk is bounded by the jobs this poller knows of and stops once the list is older
        than every wanted job; jobs seen for the first time may take a few pages more, fewer than the reads
        by id they save. A job not seen by then (an old one, or one the service lists elsewhere) is read by
        id when it is due.
        """
        # What the walk needs of each page read (not its jobs, which go to their triggers and are let go).
        read: dict[str | None, _PageEnd] = {}
        known = {m.page for j in wanted if (m := self.memory.get(j)) is not None and m.listed}
        if known:
            tasks = [asyncio.ensure_future(self._list(cursor)) for cursor in known]
            try:
                for next_done in asyncio.as_completed(tasks):
                    cursor, page = await next_done
                    read[cursor] = _PageEnd.of(page)
                    yield self._shown(page, cursor, wanted)
            finally:
                for task in tasks:
                    task.cancel()
        ages = [m.created_at for j in wanted if (m := self.memory.get(j)) and m.created_at is not None]
        oldest = min(ages) if ages and len(ages) == len(wanted) else None
        bound = math.ceil(max(len(wanted), len(self.memory)) / LIST_PAGE_SIZE) + 1
        after: str | None = None
        walked = 0
        while wanted:
            end = read.get(after)
            if end is None:
                page = (await self._list(after))[1]
                end = read[after] = _PageEnd.of(page)
                yield self._shown(page, after, wanted)
                del page
            walked += 1
            if (
                end.next_after is None
                or (oldest is not None and end.oldest is not None and end.oldest < oldest)
                or (walked >= bound and walked - bound >= self._unknown(wanted) // 2)
            ):
                return
            after = end.next_after

    async def _list(self, after: str | None) -> tuple[str | None, Page[JobState]]:
        async with self._gate:
            return after, await self.hook.alist_job_states(after=after, limit=LIST_PAGE_SIZE)

    def _shown(self, page: Page[JobState], cursor: str | None, wanted: set[str]) -> list[JobState]:
        """The wanted jobs the page shows (no longer wanted), noting the page as where each one is listed."""
        shown = [job for job in page.data if job.id in wanted]
        for job in shown:
            wanted.discard(job.id)
            memory = self.memory.setdefault(job.id, _Memory())
            memory.listed, memory.page, memory.created_at = True, cursor, job.created_at
        return shown

    def _unknown(self, job_ids: set[str]) -> int:
        return sum(1 for j in job_ids if (m := self.memory.get(j)) is None or m.created_at is None)

    def _serve(
        self,
        jobs: Sequence[JobState | FineTuningJob],
        asks: dict[str, list[_Request]],
        now: float,
        held: dict[str, JobState | FineTuningJob | None] | None = None,
    ) -> list[asyncio.Future[None]]:
        """Answer the requests of these jobs; jobs whose wait is over or that changed have their events read first.

        A job in ``held`` (one of the stalest) is kept there, to be answered once the list is read.
        """
        reads = []
        for job in sorted(jobs, key=lambda j: self._priority(j, asks[j.id])):
            urgent = self._priority(job, asks[job.id])[0] < 2
            if not urgent and held is not None and job.id in held:
                held[job.id] = job
                continue
            reads += self._answer(job, asks.pop(job.id), now, read_events=self.tokens >= 1 and (urgent or not held))
        return reads

    def _answer(
        self, job: JobState | FineTuningJob, requests: list[_Request], now: float, *, read_events: bool
    ) -> list[asyncio.Future[None]]:
        # A wait that is over reads whatever the budget, and is charged for it: the budget may run into debt,
        # which the reads of the jobs still going on repay, so that it holds on average.
        over = [request for request in requests if job.status.value in request.ends]
        if not self.events or not (read_events or over or self.every_poll):
            for request in requests:
                _settle(request, Observation(job))
            return []
        self.tokens -= 1
        memory = self.memory.setdefault(job.id, _Memory(asked=now))
        memory.logged_status, memory.events_read = job.status.value, now
        return [asyncio.ensure_future(self._read_events(job, requests, over))]

    def _priority(self, job: JobState | FineTuningJob, requests: list[_Request]) -> tuple[int, float]:
        memory = self.memory.get(job.id)
        status = job.status.value
        if any(status in request.ends for request in requests):
            return (0, 0.0)
        if memory is None or memory.logged_status is None:
            return (2, 0.0)  # never read: first among the others
        if status != memory.logged_status:
            return (1, 0.0)
        return (2, memory.events_read)

    async def _read_events(self, job: JobState | FineTuningJob, requests: list[_Request], over: list[_Request]) -> None:
        """Read the job's newest events; for the waits that are ``over``, every page back to what they logged."""
        events: list[FineTuningJobEvent] = []
        try:
            async with self._gate:
                # A wait that is over wants every event since its last line: the largest page saves reads back.
                page = await self.hook.alist_events(job.id, limit=EVENTS_PAGE_MAX if over else EVENTS_PER_POLL)
            events += page.data
            while (cursor := _read_back(events, over, page.has_more)) is not None:
                self.tokens -= 1
                async with self._gate:
                    page = await self.hook.alist_events(job.id, after=cursor, limit=EVENTS_PAGE_MAX)
                events += page.data
        except FineTuningError:
            # The job's state is known, and its wait must not fail over progress lines: the events read so far
            # are logged (a wait still going on reads the others later).
            pass
        for request in requests:
            _settle(request, Observation(job, newer_events(events, request.after_event)))

    async def _read_by_id(self, job_id: str, asks: dict[str, list[_Request]], now: float) -> None:
        requests = asks.pop(job_id)
        try:
            async with self._gate:
                job = await self.hook.aget_job(job_id)
        except FineTuningError as err:
            for request in requests:
                _settle(request, error=err)
            return
        self.memory.setdefault(job_id, _Memory(asked=now)).created_at = job.created_at
        asks[job_id] = requests
        await asyncio.gather(*self._serve([job], asks, now))


def _read_back(events: list[FineTuningJobEvent], over: list[_Request], has_more: bool) -> str | None:
    """The next older page that one of the waits that are over still needs, if any."""
    for request in over:
        cursor = read_back(events, request.after_event, has_more)
        if cursor is not None:
            return cursor
    return None


def _settle(request: _Request, observation: Observation | None = None, *, error: BaseException | None = None) -> None:
    if request.reply.done():
        return
    if error is not None:
        request.reply.set_exception(error)
    else:
        request.reply.set_result(observation)  # type: ignore[arg-type]


async def _settle_all(requests: list[_Request], error: BaseException) -> None:
    """Fail many requests, a page's worth at a time, so that the woken triggers do not stall the loop."""
    for i, request in enumerate(requests):
        if i and not i % LIST_PAGE_SIZE:
            await asyncio.sleep(0)
        _settle(request, error=error)


_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, JobPoller]] = weakref.WeakKeyDictionary()


async def shared_poller(hook: FineTuningHook) -> JobPoller:
    """The poller of the hook's connection on the running event loop, made on first use."""
    settings = await hook.ashared_settings()
    pollers = _POLLERS.setdefault(asyncio.get_running_loop(), {})
    key = settings.fingerprint()
    poller = pollers.get(key)
    if poller is None:
        poller = pollers[key] = JobPoller(hook)
    return poller
