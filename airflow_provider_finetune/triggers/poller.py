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
  into debt that the reads of the jobs still going on repay. So are those of a wait that judges every
  evaluation of its job (early stopping: ``Poll.history``), which has all its job's new events read on every
  poll (its whole history on its first).

A round never answers a request later than it was due, so sharing never costs notice latency, and the
requests a poll interval costs grow with the pages of the list, not with the jobs.

A waiting trigger costs the poller one object for its whole wait (:class:`_Wait`, reused every poll) and one
future, the wait's outcome: the poller carries out the wait's rules itself (in the trigger's own context, so
that its progress lines go where the trigger's do), and the trigger's task sleeps until the wait is over. A
poll allocates no future, coroutine or request per trigger, and what a round reads (pages of jobs, events)
is let go as soon as each wait has taken its step: so little outlives the young collections that the
interpreter's full collections, which sweep the whole heap of a triggerer with Airflow in it, stay rare.

A poller holds no state that a trigger needs: a trigger re-created on another triggerer simply asks that
triggerer's poller. What a poller remembers (when each job was created, the status whose events it read,
when) only saves requests, and it forgets the jobs nobody asks about any more.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import math
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.rules.waiting import (
    EVENTS_PAGE_MAX,
    EVENTS_PER_POLL,
    TERMINAL,
    TRANSIENT,
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
#: Seconds of waits' steps (their progress lines) the poller takes in one go before it lets the loop run.
STEP_SLICE = 0.005

#: Seconds without a wait after which the poller's task ends (the next wait starts a new one).
IDLE_AFTER = 300.0

_Steps = Generator[Poll | Pause, Any, Any]


# Compared by identity: a round takes its batch out of the queue in one pass. Slots, and one per wait: a poll
# changes its fields and allocates nothing for the trigger.
@dataclass(eq=False, slots=True)
class _Wait:
    job_id: str
    steps: _Steps  # the wait's rules, carried out by the poller
    context: contextvars.Context  # the trigger's: its log lines carry its ids
    interval: float
    outcome: asyncio.Future[Any]  # the one future of the whole wait
    due: float = 0.0
    window: float = 0.0
    after_event: str | None = None
    ends: frozenset[str] = TERMINAL
    history: bool = False  # wants every event on every read (see Poll.history)
    asking: bool = False  # a read is owed to it (so that it is answered once)
    twin: _Wait | None = None  # another wait on the same job in the same round

    def each(self) -> Iterator[_Wait]:
        """Iterate over this wait and the others on its job in the round."""
        wait: _Wait | None = self
        while wait is not None:
            yield wait
            wait = wait.twin


def _once(after_event: str | None, ends: frozenset[str]) -> _Steps:
    """The rules of a single read: one poll, whose observation (or error) is the outcome."""
    seen = yield Poll(after_event, ends)
    if isinstance(seen, BaseException):
        raise seen
    return seen


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
    pending: list[_Wait] = field(default_factory=list)
    memory: dict[str, _Memory] = field(default_factory=dict)
    rounds: int = 0
    tokens: float = 0.0
    every_poll: bool = False
    _refilled: float | None = None
    # Answered waits whose next steps are still to be taken (see _deliver).
    _ready: deque[tuple[_Wait, Observation | FineTuningError]] = field(default_factory=deque)
    # While the poller sleeps until the first wait falls due: what wakes it sooner, and when that is.
    _alarm: asyncio.Future[None] | None = None
    _sleeps_until: float = math.inf
    _gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONCURRENCY))
    _task: asyncio.Task[None] | None = None
    # Per-job reads (events, reads by id) still to be made, and the tasks that make them (CONCURRENCY at most).
    _reads: deque[Callable[[], Awaitable[None]]] = field(default_factory=deque)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)
    _reading: int = 0

    @property
    def events(self) -> bool:
        """Whether the connection's service keeps an event log (assumed until the connection is read)."""
        return "settings" not in self.hook.__dict__ or self.hook.backend.supports("events")

    async def wait(self, job_id: str, steps: Watch, *, poll_interval: float) -> Outcome:
        """Carry out :func:`~airflow_provider_finetune.rules.waiting.watch` with reads shared through this poller.

        The poller takes the wait's steps itself, in the context of the caller (the trigger's task), whose task
        sleeps until the wait is over. A pause becomes the time by which the next read is due, and the poller
        may serve it up to most of a pause early.

        :param job_id: the job.
        :param steps: the wait's rules.
        :param poll_interval: how often this wait reads (the budget of event reads is per interval).
        """
        wait = self._start(job_id, steps, interval=poll_interval, due=self.clock(), window=0.0)
        try:
            outcome: Outcome = await wait.outcome
        finally:
            if not wait.outcome.done():  # the trigger was cancelled (its task was killed, or the triggerer stops)
                wait.outcome.cancel()
        return outcome

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
        wait = self._start(job_id, _once(after_event, frozenset(ends)), interval=interval, due=due, window=window)
        try:
            seen: Observation = await wait.outcome
        finally:
            if not wait.outcome.done():
                wait.outcome.cancel()
        return seen

    def _start(self, job_id: str, steps: _Steps, *, interval: float, due: float, window: float) -> _Wait:
        """Hand a wait's steps to the poller (a function, not a coroutine: one frame less per waiting trigger)."""
        loop = asyncio.get_running_loop()
        wait = _Wait(job_id, steps, contextvars.copy_context(), max(interval, 1e-3), loop.create_future(), due, window)
        self._step(wait, None)
        return wait

    def _step(self, wait: _Wait, reply: Observation | FineTuningError | None) -> None:
        """Take a wait's steps up to its next read, which it then asks for, or to its end."""
        if wait.outcome.done():  # cancelled: nobody waits for it any more
            return
        try:
            # In the trigger's context: its progress lines carry its ids, as if its own task logged them.
            step = wait.context.run(wait.steps.send, reply)
            while isinstance(step, Pause):
                # Served up to most of a pause early: about one shared round per interval, never a late one.
                wait.due, wait.window = self.clock() + step.seconds, step.seconds * 0.9
                step = wait.context.run(wait.steps.send, None)
        except StopIteration as done:
            wait.outcome.set_result(done.value)
            return
        except Exception as err:  # a bug in the rules: the trigger fails with it, as if it had taken the step
            wait.outcome.set_exception(err)
            return
        if step.checkpoints:  # a wait the poller cannot serve (its trigger reads by itself instead)
            wait.outcome.set_exception(ValueError("the shared poller does not read checkpoints"))
            return
        wait.after_event, wait.ends, wait.history = step.after_event, step.ends, step.history
        if wait.job_id not in self.memory:  # first sight: wait a moment for the others starting now
            wait.due = max(wait.due, self.clock() + FIRST_SIGHT_GATHER)
            wait.window = max(wait.window, FIRST_SIGHT_GATHER)
        wait.asking = True
        self.pending.append(wait)
        self._ensure_running()
        if wait.due < self._sleeps_until and self._alarm is not None and not self._alarm.done():
            self._alarm.set_result(None)  # due sooner than the poller means to wake

    def _settle(self, wait: _Wait, reply: Observation | BaseException) -> None:
        """Answer a wait's read (once); its next steps are taken by :meth:`_deliver`."""
        if not wait.asking:
            return
        wait.asking = False
        if isinstance(reply, FineTuningError | Observation):
            self._ready.append((wait, reply))
        elif not wait.outcome.done():  # a bug or an unexpected answer: the trigger fails with it
            wait.outcome.set_exception(reply)

    def _settle_all(self, waits: Iterable[_Wait], error: BaseException) -> None:
        for wait in waits:
            self._settle(wait, error)

    async def _deliver(self) -> None:
        """Take the answered waits' steps (their progress lines are the loop's work too), a slice at a time."""
        began = time.perf_counter()
        while self._ready:
            wait, reply = self._ready.popleft()
            self._step(wait, reply)
            del wait, reply  # the answer goes now, not after the next slice
            if time.perf_counter() - began >= STEP_SLICE:
                await asyncio.sleep(0)
                began = time.perf_counter()

    def _read_later(self, read: Callable[[], Awaitable[None]]) -> None:
        """Queue a per-job read, made by one of at most CONCURRENCY readers.

        A read waiting for its turn is a partial on a queue, not a task with its coroutine and context: on a
        round where hundreds of jobs ended, what waits would otherwise outlive the young collections.
        """
        self._reads.append(read)
        if self._reading < CONCURRENCY:
            self._reading += 1
            self._readers.append(asyncio.ensure_future(self._reader()))

    async def _reader(self) -> None:
        try:
            while self._reads:
                await self._reads.popleft()()
        finally:
            self._reading -= 1

    async def _reads_done(self) -> None:
        """Return once every queued read is made (a reader's error is raised here)."""
        while self._readers:
            readers, self._readers = self._readers, []
            for result in await asyncio.gather(*readers, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="finetune-job-poller")

    async def _sleep_until(self, first: float | None, now: float) -> None:
        """Sleep until ``first`` (idle: a while), or until a wait due sooner comes."""
        loop = asyncio.get_running_loop()
        # Idle, any wait wakes it (compared with no time: the clock may have moved since).
        self._sleeps_until = math.inf if first is None else first
        self._alarm = loop.create_future()
        timer = loop.call_later(IDLE_AFTER if first is None else first - now, _ring, self._alarm)
        try:
            await self._alarm
        finally:
            timer.cancel()
            self._alarm, self._sleeps_until = None, math.inf

    async def _run(self) -> None:
        while True:
            self.pending = [w for w in self.pending if not w.outcome.done()]
            now = self.clock()
            first = min((w.due for w in self.pending), default=None)
            if first is None or first > now:
                await self._sleep_until(first, now)
                if first is None and not self.pending:
                    return  # idle: the next request starts a new task
                continue
            batch: list[_Wait] = []
            later: list[_Wait] = []
            for wait in self.pending:
                (batch if wait.due - wait.window <= now else later).append(wait)
            self.pending = later
            try:
                await self._round(batch, now)
            except Exception as err:  # a bug or an unexpected answer: every waiting trigger hears of it
                self._settle_all(batch, err)
            await self._deliver()
            del batch, later

    async def _round(self, batch: list[_Wait], now: float) -> None:
        self.rounds += 1
        self._remember(batch, now)
        # One entry per job; the (rare) other waits on the same job are chained to it: no list per job.
        asks: dict[str, _Wait] = {}
        for wait in batch:
            wait.twin = asks.get(wait.job_id)
            asks[wait.job_id] = wait
        due = {w.job_id for w in batch if w.due <= now}
        # The jobs whose lines were read longest ago may have what the budget leaves once every job that
        # ended or changed has been served; they alone are held until the list is read.
        stalest = heapq.nsmallest(int(self.tokens), asks, key=lambda j: self.memory[j].events_read)
        held: dict[str, JobState | FineTuningJob | None] = dict.fromkeys(stalest)
        try:
            await self._pages(set(asks), partial(self._serve, asks=asks, now=now, held=held))
        except TRANSIENT as err:  # counted as a failed read by each wait, which tries again next round
            self._settle_all([w for head in asks.values() for w in head.each()], err)
            asks.clear()
            held.clear()
        except FineTuningError:
            # A list the service refuses for good (a cursor it no longer knows, say) is no answer about any one
            # job: its pages are forgotten, and the due jobs it did not show are read by id, as unlisted ones.
            for memory in self.memory.values():
                memory.listed = False
        for job in sorted((j for j in held.values() if j is not None), key=lambda j: self._priority(j, asks[j.id])):
            self._answer(job, asks.pop(job.id), now, read_events=self.tokens >= 1)
        held.clear()
        # Not listed: due ones are read by id; the others wait for a later round.
        missing = [job_id for job_id in asks if job_id in due]
        for job_id in [j for j in asks if j not in due]:
            self.pending.extend(asks.pop(job_id).each())
        for job_id in missing:
            self._read_later(partial(self._read_by_id, job_id, asks, now))
        await self._deliver()
        await self._reads_done()

    def _remember(self, batch: list[_Wait], now: float) -> None:
        """Note who asks; forget jobs nobody has asked about for a while."""
        for wait in batch:
            self.memory.setdefault(wait.job_id, _Memory()).asked = now
        for wait in self.pending:
            self.memory.setdefault(wait.job_id, _Memory()).asked = now
        stale = [job_id for job_id, m in self.memory.items() if m.asked < now - FORGET_AFTER]
        for job_id in stale:
            del self.memory[job_id]
        # The budget of event reads: a share of the jobs watched per (harmonic mean) poll interval.
        intervals = {w.job_id: w.interval for w in (*batch, *self.pending)}
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

    async def _pages(self, wanted: set[str], serve: Callable[[Sequence[JobState]], None]) -> None:
        """Read pages of the list, newest first, and ``serve`` the wanted jobs each shows, until every one is seen.

        Each page is served, and its waits take their steps, as soon as it is read, by the task that read it: a
        page read at once with others does not wait for them, so that its jobs die young (they would otherwise
        outlive young collections and count towards a full one).

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
            tasks = [asyncio.ensure_future(self._list(cursor, wanted, serve)) for cursor in known]
            try:
                for cursor, page_end in await asyncio.gather(*tasks):
                    read[cursor] = page_end
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
                end = read[after] = (await self._list(after, wanted, serve))[1]
            walked += 1
            if (
                end.next_after is None
                or (oldest is not None and end.oldest is not None and end.oldest < oldest)
                or (walked >= bound and walked - bound >= self._unknown(wanted) // 2)
            ):
                return
            after = end.next_after

    async def _list(
        self, after: str | None, wanted: set[str], serve: Callable[[Sequence[JobState]], None]
    ) -> tuple[str | None, _PageEnd]:
        """Read the page at ``after``, serve the wanted jobs it shows and let their waits step; where it ends."""
        async with self._gate:
            page = await self.hook.alist_job_states(after=after, limit=LIST_PAGE_SIZE)
        end = _PageEnd.of(page)
        serve(self._shown(page, after, wanted))
        del page
        await self._deliver()
        return after, end

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
        asks: dict[str, _Wait],
        now: float,
        held: dict[str, JobState | FineTuningJob | None] | None = None,
    ) -> None:
        """Answer the waits on these jobs; jobs whose wait is over or that changed have their events read first.

        A job in ``held`` (one of the stalest) is kept there, to be answered once the list is read.
        """
        for job in sorted(jobs, key=lambda j: self._priority(j, asks[j.id])):
            urgent = self._priority(job, asks[job.id])[0] < 2
            if not urgent and held is not None and job.id in held:
                held[job.id] = job
                continue
            self._answer(job, asks.pop(job.id), now, read_events=self.tokens >= 1 and (urgent or not held))

    def _answer(self, job: JobState | FineTuningJob, waits: _Wait, now: float, *, read_events: bool) -> None:
        # A wait that is over reads whatever the budget, and is charged for it: the budget may run into debt,
        # which the reads of the jobs still going on repay, so that it holds on average.
        over = [wait for wait in waits.each() if wait.history or job.status.value in wait.ends]
        if not self.events or not (read_events or over or self.every_poll):
            for wait in waits.each():
                self._settle(wait, Observation(job))
            return
        self.tokens -= 1
        memory = self.memory.setdefault(job.id, _Memory(asked=now))
        memory.logged_status, memory.events_read = job.status.value, now
        self._read_later(partial(self._read_events, job, waits, over))

    def _priority(self, job: JobState | FineTuningJob, waits: _Wait) -> tuple[int, float]:
        memory = self.memory.get(job.id)
        status = job.status.value
        if any(status in wait.ends for wait in waits.each()):
            return (0, 0.0)
        if memory is None or memory.logged_status is None:
            return (2, 0.0)  # never read: first among the others
        if status != memory.logged_status:
            return (1, 0.0)
        return (2, memory.events_read)

    async def _read_events(self, job: JobState | FineTuningJob, waits: _Wait, over: list[_Wait]) -> None:
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
        for wait in waits.each():
            self._settle(wait, Observation(job, newer_events(events, wait.after_event)))
        del events, job
        await self._deliver()

    async def _read_by_id(self, job_id: str, asks: dict[str, _Wait], now: float) -> None:
        waits = asks.pop(job_id)
        try:
            async with self._gate:
                job = await self.hook.aget_job(job_id)
        except FineTuningError as err:
            self._settle_all(waits.each(), err)
            await self._deliver()
            return
        self.memory.setdefault(job_id, _Memory(asked=now)).created_at = job.created_at
        # Answered under the job's own id: a job asked for by another name of it (Bedrock's name, a Fireworks id
        # without its account) is the job its record says.
        asks[job.id] = waits
        self._serve([job], asks, now)  # its events, if read, by a reader (this one may be it)
        del job
        await self._deliver()


def _read_back(events: list[FineTuningJobEvent], over: list[_Wait], has_more: bool) -> str | None:
    """The next older page that one of the waits that are over still needs, if any."""
    for wait in over:
        cursor = read_back(events, wait.after_event, has_more, history=wait.history)
        if cursor is not None:
            return cursor
    return None


def _ring(alarm: asyncio.Future[None]) -> None:
    if not alarm.done():
        alarm.set_result(None)


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
