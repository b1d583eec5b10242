"""The shared poller against a scripted service: what it reads, how often, and what each wait is told."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

from airflow_provider_finetune.exceptions import FineTuningConnectionError, NotFoundError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.models import FineTuningJob, FineTuningJobEvent, JobState, Page
from airflow_provider_finetune.rules.waiting import MAX_LINES_PER_POLL, Outcome, watch
from airflow_provider_finetune.triggers import poller as poller_module
from airflow_provider_finetune.triggers.poller import FORGET_AFTER, LIST_PAGE_SIZE, JobPoller
from tests.hooks.conftest import event, job
from tests.logged import progress_lines


class FakeService:
    """Jobs newest first, answered the way the hook's async calls answer; every call is recorded."""

    def __init__(self, count: int, *, status: str = "running", unlisted: tuple[str, ...] = ()) -> None:
        self.jobs = [job(f"ftjob-{i:05d}", status, created_at=1_700_000_000 + i) for i in reversed(range(count))]
        self.unlisted = {j: job(j, status, created_at=1_600_000_000) for j in unlisted}
        self.calls: list[tuple[str, str | None]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail_lists: Exception | None = None

    def set_status(self, job_id: str, status: str) -> None:
        for item in [*self.jobs, *self.unlisted.values()]:
            if item["id"] == job_id:
                item["status"] = status

    async def _io(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.002)
        self.in_flight -= 1

    async def alist_job_states(self, *, after: str | None = None, limit: int | None = None) -> Page[JobState]:
        self.calls.append(("list", after))
        await self._io()
        if self.fail_lists is not None:
            raise self.fail_lists
        ids = [j["id"] for j in self.jobs]
        start = ids.index(after) + 1 if after else 0
        chunk = self.jobs[start : start + (limit or 20)]
        more = start + len(chunk) < len(self.jobs)
        return Page[JobState].model_validate_json(json.dumps({"object": "list", "data": chunk, "has_more": more}))

    async def aget_job(self, job_id: str) -> FineTuningJob:
        self.calls.append(("get", job_id))
        await self._io()
        found = self.unlisted.get(job_id) or next((j for j in self.jobs if j["id"] == job_id), None)
        if found is None:
            raise NotFoundError(404, "No such job")
        return FineTuningJob.model_validate(found)

    async def alist_events(self, job_id: str, *, limit: int | None = None) -> Page[FineTuningJobEvent]:
        self.calls.append(("events", job_id))
        await self._io()
        return Page[FineTuningJobEvent].model_validate({"data": [event(f"{job_id}-ev-2"), event(f"{job_id}-ev-1")]})

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.calls if k == kind)


def make_poller(service: FakeService) -> JobPoller:
    return JobPoller(service)  # type: ignore[arg-type]


async def ask(poller: JobPoller, job_ids: list[str], *, interval: float = 60.0, due: float | None = None) -> list[Any]:
    when = time.time() if due is None else due
    return await asyncio.gather(
        *(poller.observe(j, None, due=when, window=0.0, interval=interval) for j in job_ids), return_exceptions=True
    )


async def test_one_list_serves_every_wait_it_shows() -> None:
    service = FakeService(250)
    poller = make_poller(service)
    ids = [j["id"] for j in service.jobs]
    seen = await ask(poller, ids)
    assert [o.job.id for o in seen] == ids
    assert all(o.job.status.value == "running" for o in seen)
    assert poller.rounds == 1  # the waits starting together were gathered into one round
    assert service.count("list") == 3  # 250 jobs: three pages of 100, and nothing read by id
    assert service.count("get") == 0


async def test_later_rounds_read_the_remembered_pages_together() -> None:
    service = FakeService(450)
    poller = make_poller(service)
    ids = [j["id"] for j in service.jobs]
    await ask(poller, ids)
    first_walk = [after for kind, after in service.calls if kind == "list"]
    assert first_walk[0] is None  # walked page by page from the top, each cursor from the page before
    assert len(first_walk) == 5
    service.calls.clear()
    service.most_in_flight = 0
    await ask(poller, ids)
    assert sorted(after or "" for kind, after in service.calls if kind == "list") == sorted(a or "" for a in first_walk)
    assert service.most_in_flight > 1  # the five pages were read at once, not one after another


async def test_a_job_the_list_does_not_show_is_read_by_id_only_when_due() -> None:
    service = FakeService(30, unlisted=("ftjob-old",))
    poller = make_poller(service)
    seen = await ask(poller, ["ftjob-00003", "ftjob-old"])
    assert [o.job.id for o in seen] == ["ftjob-00003", "ftjob-old"]
    assert service.count("get") == 1
    # Not due yet (its window is open, so it shares the round of a due wait): the list does not show it,
    # so it is not read by id now; it is answered by a later round, by its due time.
    service.calls.clear()
    now = time.time()
    early = asyncio.ensure_future(poller.observe("ftjob-old", None, due=now + 0.3, window=0.3, interval=60))
    (due_now,) = await ask(poller, ["ftjob-00001"])
    assert due_now.job.id == "ftjob-00001"
    assert not early.done()
    assert service.count("get") == 0
    answer = await early
    assert answer.job.id == "ftjob-old"
    assert time.time() <= now + 0.3 + 0.1
    assert service.count("get") == 1


async def test_a_job_no_one_has_is_an_error_for_its_wait_only() -> None:
    service = FakeService(5)
    poller = make_poller(service)
    missing, present = await ask(poller, ["ftjob-nope", "ftjob-00002"])
    assert isinstance(missing, NotFoundError)
    assert present.job.id == "ftjob-00002"


async def test_event_reads_keep_to_a_share_of_the_jobs_per_interval() -> None:
    service = FakeService(1000)
    poller = make_poller(service)
    ids = [j["id"] for j in service.jobs]
    interval = 0.2
    for _ in range(5):
        await ask(poller, ids, interval=interval)
        await asyncio.sleep(interval)
    # Over about 5 intervals (plus the rounds' own time): at most 10 event reads an interval, and a full
    # bucket to start with; never one per job.
    elapsed_intervals = 5 + 1
    assert 10 <= service.count("events") <= 10 * (elapsed_intervals + 1)
    assert service.count("list") == 5 * 10


async def test_ended_and_changed_jobs_get_their_events_first() -> None:
    service = FakeService(1000)
    poller = make_poller(service)
    ids = [j["id"] for j in service.jobs]
    await ask(poller, ids, interval=60)
    for memory in poller.memory.values():  # as if every job's lines had been read while it was running
        memory.logged_status, memory.events_read = "running", time.time()
    service.set_status("ftjob-00500", "succeeded")
    service.set_status("ftjob-00007", "validating_files")
    service.calls.clear()
    poller.tokens, poller._refilled = 2.0, time.time()  # two reads left this interval
    seen = {o.job.id: o for o in await ask(poller, ids, interval=60)}
    assert sorted(j for kind, j in service.calls if kind == "events") == ["ftjob-00007", "ftjob-00500"]
    assert [e.id for e in seen["ftjob-00500"].events] == ["ftjob-00500-ev-1", "ftjob-00500-ev-2"]
    assert seen["ftjob-00500"].job.status.value == "succeeded"
    assert seen["ftjob-00001"].events == []  # no budget left: its state now, its lines later


async def test_a_single_wait_reads_its_events_every_poll() -> None:
    service = FakeService(3)
    poller = make_poller(service)
    for _ in range(4):
        (seen,) = await ask(poller, ["ftjob-00001"], interval=0.05)
        assert [e.id for e in seen.events] == ["ftjob-00001-ev-1", "ftjob-00001-ev-2"]
        await asyncio.sleep(0.05)
    assert service.count("events") == 4


async def test_a_failed_list_reaches_every_wait_of_the_round() -> None:
    service = FakeService(300)
    service.fail_lists = FineTuningConnectionError("Connection refused")
    poller = make_poller(service)
    answers = await ask(poller, [j["id"] for j in service.jobs])
    assert all(isinstance(a, FineTuningConnectionError) for a in answers)
    service.fail_lists = None
    answers = await ask(poller, ["ftjob-00001"])
    assert answers[0].job.id == "ftjob-00001"  # the poller goes on


async def test_a_list_the_service_refuses_for_good_fails_no_wait_its_jobs_are_read_by_id() -> None:
    """A stale cursor (400) says nothing of any job: the due jobs are read by id, and the pages forgotten."""
    from airflow_provider_finetune.exceptions import BadRequestError

    service = FakeService(5)
    poller = make_poller(service)
    ids = [j["id"] for j in service.jobs]
    await ask(poller, ids)  # the pages are remembered
    service.fail_lists = BadRequestError(400, "The pagination token is invalid or expired")
    service.calls.clear()
    answers = await ask(poller, ids)
    assert [a.job.id for a in answers] == ids
    assert service.count("get") == 5
    service.fail_lists = None
    service.calls.clear()
    await ask(poller, ids)
    assert [after for kind, after in service.calls if kind == "list"] == [None]  # walked afresh from the top


async def test_a_cancelled_wait_does_not_disturb_the_others() -> None:
    service = FakeService(10)
    poller = make_poller(service)
    now = time.time()
    gone = asyncio.ensure_future(poller.observe("ftjob-00001", None, due=now + 0.2, window=0.0, interval=60))
    kept = asyncio.ensure_future(poller.observe("ftjob-00002", None, due=now + 0.2, window=0.0, interval=60))
    await asyncio.sleep(0.05)
    gone.cancel()
    assert (await kept).job.id == "ftjob-00002"
    assert gone.cancelled()


async def test_the_poller_forgets_jobs_nobody_asks_about(monkeypatch: pytest.MonkeyPatch) -> None:
    service = FakeService(20)
    poller = make_poller(service)
    await ask(poller, ["ftjob-00001", "ftjob-00002"])
    assert set(poller.memory) == {"ftjob-00001", "ftjob-00002"}
    poller.clock = lambda: time.time() + FORGET_AFTER + 1
    await ask(poller, ["ftjob-00003"], due=poller.clock())
    assert set(poller.memory) == {"ftjob-00003"}


async def test_first_reads_of_a_big_sweep_walk_the_list_rather_than_read_each_job() -> None:
    """A thousand jobs seen for the first time, asked for a few at a time: pages, not a thousand reads by id."""
    service = FakeService(1000)
    poller = make_poller(service)
    ids = [j["id"] for j in reversed(service.jobs)]  # oldest first: the last pages of the list
    waits = []
    for i in range(0, 1000, 50):
        waits += [
            asyncio.ensure_future(poller.observe(j, None, due=time.time(), window=0.0, interval=60))
            for j in ids[i : i + 50]
        ]
        await asyncio.sleep(0.05)
    answers = await asyncio.gather(*waits)
    assert {a.job.id for a in answers} == set(ids)
    assert poller.rounds > 1
    assert service.count("get") == 0
    assert service.count("list") <= 6 * (1000 // LIST_PAGE_SIZE)


async def test_one_connection_lookup_for_the_triggers_starting_together(
    monkeypatch: pytest.MonkeyPatch, connection: dict[str, Any]
) -> None:
    lookups = 0
    original = FineTuningHook.asettings

    async def counted(self: FineTuningHook) -> Any:
        nonlocal lookups
        lookups += 1
        return await original(self)

    monkeypatch.setattr(FineTuningHook, "asettings", counted)
    hooks = [FineTuningHook() for _ in range(200)]
    settings = await asyncio.gather(*(h.ashared_settings() for h in hooks))
    assert lookups == 1
    assert len({s.fingerprint() for s in settings}) == 1
    assert all(h.settings is s for h, s in zip(hooks, settings, strict=True))
    await FineTuningHook().ashared_settings(max_age=0.0)  # too old: looked up again
    assert lookups == 2
    pollers = {id(await poller_module.shared_poller(h)) for h in hooks[:5]}
    assert len(pollers) == 1


async def test_a_failed_connection_lookup_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_FLAKY", json.dumps({"conn_type": "finetune", "password": "sk-x"}))
    calls = 0
    original = FineTuningHook.asettings

    async def flaky(self: FineTuningHook) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise FineTuningConnectionError("secrets backend unreachable")
        return await original(self)

    monkeypatch.setattr(FineTuningHook, "asettings", flaky)
    with pytest.raises(FineTuningConnectionError):
        await FineTuningHook("finetune_flaky").ashared_settings()
    assert (await FineTuningHook("finetune_flaky").ashared_settings()).api_key == "sk-x"


class JobsThatEnd(FakeService):
    """Jobs that log one event per tick while they run, then the two events of a successful end.

    Events are paged newest first from ``after``, as the service pages them.
    """

    def __init__(self, ends: dict[str, int], *, events: int = 0) -> None:
        super().__init__(0)
        self.jobs = [job(j, "running", created_at=1_700_000_000 + i) for i, j in enumerate(reversed(list(ends)))]
        self.ends = ends
        self.events: dict[str, list[dict[str, Any]]] = {j: [] for j in ends}  # newest first
        for job_id in ends:
            for _ in range(events):
                self._log(job_id, f"step {len(self.events[job_id]) + 1}")
        self.ticks = 0

    def _log(self, job_id: str, message: str) -> None:
        self.events[job_id].insert(0, event(f"{job_id}-ev-{len(self.events[job_id]) + 1:04d}", message))

    def tick(self) -> None:
        self.ticks += 1
        for job_id, end in self.ends.items():
            if self.ticks < end:
                self._log(job_id, f"step {self.ticks}")
            elif self.ticks == end:
                self._log(job_id, "New fine-tuned model created")
                self._log(job_id, "The job has successfully completed")
                self.set_status(job_id, "succeeded")

    async def alist_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[FineTuningJobEvent]:
        self.calls.append(("events", job_id))
        await self._io()
        ids = [e["id"] for e in self.events[job_id]]
        start = ids.index(after) + 1 if after else 0
        chunk = self.events[job_id][start : start + (limit or 20)]
        return Page[FineTuningJobEvent].model_validate({"data": chunk, "has_more": start + len(chunk) < len(ids)})


async def wait_all(poller: JobPoller, job_ids: list[str], interval: float, **kwargs: Any) -> dict[str, Outcome]:
    log = logging.getLogger("tests.poller.waits")
    outcomes = await asyncio.gather(
        *(poller.wait(j, watch(j, poll_interval=interval, log=log, **kwargs), poll_interval=interval) for j in job_ids)
    )
    return dict(zip(job_ids, outcomes, strict=True))


def lines_of(caplog: pytest.LogCaptureFixture, job_id: str) -> list[str]:
    records = [r for r in caplog.records if r.name == "tests.poller.waits"]
    return [line.removeprefix(f"[{job_id}] ") for line in progress_lines(records) if line.startswith(f"[{job_id}] ")]


async def test_every_ended_job_logs_all_its_events_before_its_wait_fires(caplog: pytest.LogCaptureFixture) -> None:
    """A hundred and twenty waits, four event reads per interval: a third of the jobs end at once, three times.

    Most jobs have their events read by no poll before they end, and forty end in the same round: each one
    still logs every event it had, in order, once, before its wait fires.
    """
    caplog.set_level(logging.INFO, logger="tests.poller.waits")
    ends = {f"ftjob-{i:05d}": (6, 12, 18)[i % 3] for i in range(120)}
    service = JobsThatEnd(ends)
    poller = make_poller(service)

    async def clock() -> None:
        while any(j["status"] == "running" for j in service.jobs):
            await asyncio.sleep(0.05)
            service.tick()

    ticking = asyncio.ensure_future(clock())
    outcomes = await wait_all(poller, list(ends), interval=0.1)
    await ticking
    assert service.count("events") < 3 * len(ends)  # the budget held for the jobs still running
    for job_id in ends:
        everything = service.events[job_id][::-1]  # oldest first
        assert lines_of(caplog, job_id) == [e["message"] for e in everything], job_id
        assert outcomes[job_id].status == "succeeded"
        assert outcomes[job_id].last_event_id == everything[-1]["id"]


async def test_an_ended_job_has_its_events_read_back_to_the_last_one_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More events than a page since the last one logged: every page back to it is read, and all are logged."""
    caplog.set_level(logging.INFO, logger="tests.poller.waits")
    service = JobsThatEnd({"ftjob-00001": 1}, events=130)
    service.tick()  # the job ends: 132 events, and the wait has logged only the first
    first = service.events["ftjob-00001"][-1]["id"]
    outcomes = await wait_all(make_poller(service), ["ftjob-00001"], interval=60, last_event_id=first)
    everything = service.events["ftjob-00001"][::-1]
    assert lines_of(caplog, "ftjob-00001") == [e["message"] for e in everything[1:]]
    assert len(everything[1:]) > 2 * MAX_LINES_PER_POLL
    assert outcomes["ftjob-00001"].last_event_id == everything[-1]["id"]
    assert service.count("events") == 2  # the newest page, then one page of the largest size back to it


async def test_a_lone_wait_reads_its_events_on_every_poll_however_short_its_pauses() -> None:
    """Near the estimated finish a wait polls four times an interval, with jittered pauses: each poll reads."""
    service = FakeService(3)
    poller = make_poller(service)
    for _ in range(5):
        (seen,) = await ask(poller, ["ftjob-00001"], interval=10.0)
        assert [e.id for e in seen.events] == ["ftjob-00001-ev-1", "ftjob-00001-ev-2"]
        await asyncio.sleep(0.02)
    assert service.count("events") == 5


class EventlessService(FakeService):
    """A service that keeps no event log (its backend says so once the connection is read)."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.settings = object()  # the connection has been read
        self.backend = type("Backend", (), {"supports": staticmethod(lambda capability: capability != "events")})()


async def test_a_service_without_events_has_none_read_and_its_waits_still_end() -> None:
    service = EventlessService(3)
    poller = make_poller(service)
    assert poller.events is False
    first = await ask(poller, ["ftjob-00000", "ftjob-00001", "ftjob-00002"])
    assert all(not seen.events for seen in first)
    service.set_status("ftjob-00001", "succeeded")
    second = await ask(poller, ["ftjob-00001"])
    assert second[0].job.status.value == "succeeded"
    assert service.count("events") == 0


class Counted:
    """Counts the futures and tasks the running loop makes (a wrapper on the loop's own methods)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        loop = asyncio.get_running_loop()
        self.futures = self.tasks = 0
        make_future, make_task = loop.create_future, loop.create_task

        def create_future() -> asyncio.Future[Any]:
            self.futures += 1
            return make_future()

        def create_task(coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            self.tasks += 1
            return make_task(coro, **kwargs)

        monkeypatch.setattr(loop, "create_future", create_future)
        monkeypatch.setattr(loop, "create_task", create_task)


async def test_a_waiting_trigger_allocates_no_future_or_task_per_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hundred waits of a dozen polls each: one future per wait, for its outcome; then a round's, not a poll's."""
    service = JobsThatEnd({f"ftjob-{i:05d}": 12 for i in range(200)})
    poller = make_poller(service)
    answers = 0

    def counting(steps: Any) -> Any:
        """The wait's rules, counting the polls answered."""
        nonlocal answers
        step = next(steps)
        while True:
            reply = yield step
            answers += reply is not None
            try:
                step = steps.send(reply)
            except StopIteration as done:
                return done.value

    async def clock() -> None:
        while any(j["status"] == "running" for j in service.jobs):
            await asyncio.sleep(0.05)
            service.tick()

    ticking = asyncio.ensure_future(clock())
    counted = Counted(monkeypatch)
    outcomes = await asyncio.gather(
        *(poller.wait(j, counting(watch(j, poll_interval=0.05)), poll_interval=0.05) for j in service.ends)
    )
    await ticking
    assert all(o.status == "succeeded" for o in outcomes)
    assert answers >= 200 * 6
    # Besides one per wait: each request's own (the fake service sleeps, the gate may be waited for), the test
    # clock's sleeps, and a round's future to sleep on; tasks for pages and for the readers of single jobs (at
    # most CONCURRENCY a round, fewer than the event reads), and the 200 tasks of the waits (gather). None per poll.
    assert counted.futures <= 200 + 2 * len(service.calls) + service.ticks + 2 * poller.rounds
    assert counted.tasks <= 200 + 2 * service.count("list") + service.count("events") + 2 * poller.rounds


async def test_jobs_ending_together_queue_their_reads_for_a_few_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hundred jobs end in the same round: their two hundred event reads are made by at most CONCURRENCY
    tasks, each read waiting its turn on a queue, not each holding a task (and its coroutine) meanwhile."""
    service = JobsThatEnd({f"ftjob-{i:05d}": 1 for i in range(200)})
    poller = make_poller(service)
    service.tick()  # every job ends before the first poll
    counted = Counted(monkeypatch)
    outcomes = await wait_all(poller, list(service.ends), interval=60.0)
    assert {o.status for o in outcomes.values()} == {"succeeded"}
    assert service.count("events") >= 200  # every ended job's events were read
    assert service.most_in_flight <= poller_module.CONCURRENCY
    assert poller.rounds == 1
    # The round's: its task, one per page of the list, and the readers; none per job.
    pages = service.count("list")
    assert counted.tasks - len(service.ends) <= 1 + pages + poller_module.CONCURRENCY


async def test_a_wait_logs_in_the_context_of_its_trigger(caplog: pytest.LogCaptureFixture) -> None:
    """The poller takes each wait's steps: its lines still carry what the trigger's task bound (Airflow's ids)."""
    import contextvars

    trigger_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trigger_id", default=None)
    seen: list[tuple[str, str | None]] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), trigger_id.get()))

    log = logging.getLogger("tests.poller.context")
    log.addHandler(recorder := Recorder())
    log.setLevel(logging.INFO)
    service = JobsThatEnd({"ftjob-00001": 3, "ftjob-00002": 4})
    poller = make_poller(service)

    async def trigger(job_id: str) -> Outcome:
        trigger_id.set(f"trigger-of-{job_id}")
        return await poller.wait(job_id, watch(job_id, poll_interval=0.05, log=log), poll_interval=0.05)

    async def clock() -> None:
        while any(j["status"] == "running" for j in service.jobs):
            await asyncio.sleep(0.05)
            service.tick()

    try:
        ticking = asyncio.ensure_future(clock())
        outcomes = await asyncio.gather(trigger("ftjob-00001"), trigger("ftjob-00002"))
        await ticking
    finally:
        log.removeHandler(recorder)
    assert [o.status for o in outcomes] == ["succeeded", "succeeded"]
    assert len([line for message, _ in seen for line in message.splitlines()]) >= 6
    for message, bound in seen:
        for line in message.splitlines():
            assert bound == f"trigger-of-{line[1:12]}", message


async def test_a_job_read_by_another_name_of_it_answers_its_wait_and_no_other_wait_fails() -> None:
    """Bedrock reads a job by its name and answers its record, whose id is the ARN: the wait is answered."""
    service = FakeService(3, unlisted=("arn:aws:bedrock:us-east-1:1:model-customization-job/x/ft-abc",))
    arn = next(iter(service.unlisted))
    real = service.aget_job

    async def by_name(job_id: str) -> FineTuningJob:
        return await real(arn if job_id == "ft-abc" else job_id)

    service.aget_job = by_name  # type: ignore[method-assign]
    poller = make_poller(service)
    listed = [j["id"] for j in service.jobs]
    seen = await ask(poller, ["ft-abc", *listed])
    assert not [o for o in seen if isinstance(o, BaseException)], seen
    assert seen[0].job.id == arn
    assert [o.job.id for o in seen[1:]] == listed
