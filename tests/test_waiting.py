"""The shared wait rules, driven step by step: statuses, deadline, errors, progress lines."""

from __future__ import annotations

import logging
from dataclasses import replace

import httpx
import pytest

from airflow_provider_finetune.exceptions import (
    AuthenticationError,
    FineTuningConnectionError,
    InternalServerError,
    NotFoundError,
)
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.hooks.waits import wait_sync
from airflow_provider_finetune.models import FineTuningJob, FineTuningJobEvent
from airflow_provider_finetune.rules.waiting import (
    EVENTS_PAGE_MAX,
    MAX_LINES_PER_POLL,
    WAIT_ERROR,
    WAIT_TIMEOUT,
    Observation,
    Pause,
    Poll,
    describe_event,
    newer_events,
    watch,
)
from tests.hooks.conftest import FakeAPI, api, connection, event, hook, job, page
from tests.logged import progress_lines as lines

__all__ = ["api", "connection", "hook"]  # the hook's fixtures, for the wait on the worker


def seen(status: str, *events: dict, **fields) -> Observation:
    return Observation(
        FineTuningJob.model_validate(job(status=status, **fields)),
        [FineTuningJobEvent.model_validate(e) for e in events],
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(replies: list, clock: Clock | None = None, **kwargs):
    """Feed replies to the watcher; return (outcome, polls, pauses)."""
    clock = clock or Clock()
    kwargs.setdefault("rng", lambda: 0.0)
    steps = watch("ftjob-1", clock=clock, log=logging.getLogger("test.wait"), **kwargs)
    polls: list[Poll] = []
    pauses: list[float] = []
    step = next(steps)
    pending = list(replies)
    try:
        while True:
            if isinstance(step, Pause):
                pauses.append(step.seconds)
                clock.now += step.seconds
                step = steps.send(None)
            else:
                polls.append(step)
                step = steps.send(pending.pop(0))
    except StopIteration as done:
        return done.value, polls, pauses


@pytest.mark.parametrize("final", ["succeeded", "failed", "cancelled"])
def test_waits_through_every_non_terminal_status(final: str) -> None:
    replies = [seen(s) for s in ("validating_files", "queued", "running", "pausing", "paused", "brand_new", final)]
    outcome, polls, pauses = run(replies, poll_interval=30)
    assert outcome.status == final
    assert len(polls) == 7
    assert pauses == [30] * 6


def test_a_target_status_ends_the_wait() -> None:
    outcome, polls, _ = run([seen("queued"), seen("running")], targets={"running"})
    assert (outcome.status, len(polls)) == ("running", 2)


def test_deadline_is_absolute_and_the_last_pause_is_shortened() -> None:
    clock = Clock()
    outcome, polls, pauses = run([seen("running")] * 10, clock=clock, deadline=clock.now + 100, poll_interval=30)
    assert outcome.status == WAIT_TIMEOUT
    assert pauses == [30, 30, 30, 10]
    assert len(polls) == 5


def test_transient_errors_are_tolerated_then_reset() -> None:
    flaky = [FineTuningConnectionError("down"), InternalServerError(503, "busy"), seen("running")]
    outcome, polls, _ = run([*flaky, *flaky, seen("succeeded")], max_consecutive_errors=3)
    assert outcome.status == "succeeded"
    assert len(polls) == 7


def test_too_many_errors_in_a_row_end_the_wait() -> None:
    outcome, polls, _ = run([FineTuningConnectionError("down")] * 5, max_consecutive_errors=3)
    assert outcome.status == WAIT_ERROR
    assert len(polls) == 3
    assert "3 polls" in outcome.message


@pytest.mark.parametrize("error", [NotFoundError(404, "no such job"), AuthenticationError(401, "bad key")])
def test_errors_that_retrying_cannot_fix_end_the_wait_at_once(error: Exception) -> None:
    outcome, polls, _ = run([error])
    assert outcome.status == WAIT_ERROR
    assert len(polls) == 1
    assert str(error) in outcome.message


def test_events_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.wait")
    replies = [
        seen("running", event("ev-1", "first"), event("ev-2", "second")),
        seen("running"),
        seen("succeeded", event("ev-3", "third")),
    ]
    outcome, polls, _ = run(replies)
    assert [p.after_event for p in polls] == [None, "ev-2", "ev-2"]
    assert outcome.last_event_id == "ev-3"
    assert [line.split("] ")[1] for line in lines(caplog.records)] == ["first", "second", "third"]
    assert len(caplog.records) == 2  # one record per poll with events


def test_newer_events_stop_at_the_last_seen() -> None:
    events = [FineTuningJobEvent.model_validate(event(f"ev-{i}")) for i in (5, 4, 3, 2)]
    assert [e.id for e in newer_events(events, "ev-3")] == ["ev-4", "ev-5"]
    assert [e.id for e in newer_events(events, None)] == ["ev-2", "ev-3", "ev-4", "ev-5"]


def test_metrics_event_becomes_a_progress_line() -> None:
    the_job = FineTuningJob.model_validate(job(status="running", estimated_finish=4102444800))
    metrics = FineTuningJobEvent.model_validate(
        event(
            "ev-9",
            "Step 12/60: training loss=0.52",
            type="metrics",
            data={"step": 12, "total_steps": 60, "train_loss": 0.5234, "valid_loss": 0.61, "full_valid_loss": 0.6},
        )
    )
    line = describe_event(the_job, metrics)
    assert line.startswith("[ftjob-1] step 12/60 train_loss=0.5234 valid_loss=0.6100")
    assert "ETA 00:00:00 UTC" in line


def test_failure_outcome_names_the_error() -> None:
    failed = seen(
        "failed",
        error={"code": "invalid_training_file", "message": "line 3: not JSON", "param": "training_file"},
    )
    outcome, _, _ = run([failed])
    assert outcome.status == "failed"
    assert "[invalid_training_file] line 3: not JSON (param: training_file)" in outcome.message


def test_checkpoint_event_becomes_a_checkpoint_line() -> None:
    the_job = FineTuningJob.model_validate(job(status="running"))
    created = FineTuningJobEvent.model_validate(
        event(
            "ev-5",
            "Checkpoint created at step 30",
            data={"step": 30, "fine_tuned_model_checkpoint": "ft:m:o::x:ckpt-step-30"},
        )
    )
    assert describe_event(the_job, created) == "[ftjob-1] checkpoint at step 30: ft:m:o::x:ckpt-step-30"


def test_pauses_are_jittered_and_never_longer_than_the_interval() -> None:
    draws = iter([0.0, 0.5, 0.99])
    _, _, pauses = run([seen("running")] * 3 + [seen("succeeded")], poll_interval=100, rng=lambda: next(draws))
    assert pauses == [100.0, 92.5, pytest.approx(85.15)]


def test_polls_faster_near_the_estimated_finish() -> None:
    clock = Clock()
    near = seen("running", estimated_finish=int(clock.now) + 20)
    far = seen("running", estimated_finish=int(clock.now) + 10_000)
    _, _, pauses = run([far, near, seen("succeeded")], clock=clock, poll_interval=60)
    assert pauses[0] == 60
    assert pauses[1] == 15  # a quarter of the interval, the estimate (in 20 s - 60 s = past) being near


def test_the_wait_rules_do_not_depend_on_the_poller() -> None:
    """The poller builds on the wait rules; the rules import nothing of the triggers, not even for typing."""
    import ast
    import inspect

    from airflow_provider_finetune.rules import waiting

    tree = ast.parse(inspect.getsource(waiting))
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if name.startswith("airflow_provider_finetune.triggers")]


def test_the_poll_that_ends_the_wait_logs_every_event_it_read(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.wait")
    many = [event(f"ev-{i}", f"line {i}") for i in range(1, 31)]
    run([seen("running", *many[:25]), seen("succeeded", *many[25:])])
    shown = caplog.records[0].getMessage().splitlines()
    # While the job runs, a poll shows its newest lines and counts the others ...
    assert shown[0] == f"[ftjob-1] {MAX_LINES_PER_POLL} events ({25 - MAX_LINES_PER_POLL} earlier not shown):"
    assert shown[1:] == [f"[ftjob-1] line {i}" for i in range(26 - MAX_LINES_PER_POLL, 26)]
    assert len(lines(caplog.records)) == MAX_LINES_PER_POLL + 5
    caplog.clear()
    caplog.set_level(logging.INFO, logger="test.wait")
    outcome, _, _ = run([seen("running", many[0]), seen("succeeded", *many[1:])])
    # ... the poll that sees it end shows every line it read: the job's last lines are its outcome.
    assert lines(caplog.records) == [f"[ftjob-1] line {i}" for i in range(1, 31)]
    assert outcome.last_event_id == "ev-30"


def test_a_job_that_ends_with_100_unread_events_is_logged_in_one_record(caplog: pytest.LogCaptureFixture) -> None:
    """One log record per poll: in the triggerer each record is a synchronous send to its supervisor."""
    caplog.set_level(logging.INFO, logger="test.wait")
    many = [event(f"ev-{i}", f"line {i}") for i in range(1, 101)]
    run([seen("running"), seen("succeeded", *many)])
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().splitlines() == [
        "[ftjob-1] 100 events:",
        *(f"[ftjob-1] line {i}" for i in range(1, 101)),
    ]


def test_a_poll_with_one_new_event_logs_it_as_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.wait")
    run([seen("running", event("ev-1", "line 1")), seen("succeeded")])
    assert [r.getMessage() for r in caplog.records] == ["[ftjob-1] line 1"]


def test_a_wait_for_a_target_status_asks_for_its_events_in_full_once_there() -> None:
    _, polls, _ = run([seen("queued"), seen("running")], targets={"running"})
    assert all("running" in poll.ends and "succeeded" in poll.ends for poll in polls)


def test_a_worker_wait_reads_back_every_event_of_a_job_that_ended(
    hook: FineTuningHook, api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.wait")
    events = [event(f"ev-{i}", f"line {i}") for i in range(150, 0, -1)]  # newest first
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="succeeded", fine_tuned_model="ft:x"))
    reads = api.on(
        "GET",
        "fine_tuning/jobs/ftjob-1/events",
        page(events[:EVENTS_PAGE_MAX], has_more=True),
        page(events[EVENTS_PAGE_MAX:], has_more=False),
    )
    steps = watch("ftjob-1", last_event_id="ev-5", log=logging.getLogger("test.wait"))
    outcome = wait_sync(hook, "ftjob-1", steps, sleep=lambda _: None)
    assert outcome.status == "succeeded"
    records = [r for r in caplog.records if r.name == "test.wait"]  # not the connection's own notices
    assert lines(records) == [f"[ftjob-1] line {i}" for i in range(6, 151)]
    assert len(records) == 1  # the whole end of the job, read in two pages, in one record
    assert reads.call_count == 2
    assert reads.calls[0].request.url.params["limit"] == str(EVENTS_PAGE_MAX)
    assert reads.calls[1].request.url.params["after"] == f"ev-{150 - EVENTS_PAGE_MAX + 1}"


def test_a_worker_wait_whose_events_cannot_be_read_still_ends_with_its_job(
    hook: FineTuningHook, api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """The job's state is known: the wait does not fail (nor count an error) over its progress lines; it says why."""
    caplog.set_level(logging.INFO, logger="test.wait")
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="running"), job(status="succeeded", fine_tuned_model="ft:x"))
    gone = httpx.Response(404, json={"error": {"message": "No events for this job", "type": "invalid_request_error"}})
    api.on("GET", "fine_tuning/jobs/ftjob-1/events", gone)
    steps = watch("ftjob-1", poll_interval=0, max_consecutive_errors=1, log=logging.getLogger("test.wait"))
    outcome = wait_sync(hook, "ftjob-1", steps, sleep=lambda _: None)
    assert outcome.status == "succeeded"
    warned = [r.getMessage() for r in caplog.records if r.name == "test.wait" and r.levelno == logging.WARNING]
    assert warned
    assert all("Could not read the events of job ftjob-1: 404" in w for w in warned)


def test_without_an_event_log_each_change_of_status_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.wait")
    replies = [seen("queued"), seen("queued"), seen("running"), seen("running"), seen("succeeded")]
    outcome, _, _ = run(replies, poll_interval=1, events=False)
    assert outcome.status == "succeeded"
    assert [r.getMessage() for r in caplog.records] == [
        "[ftjob-1] status: queued",
        "[ftjob-1] queued -> running",
        "[ftjob-1] running -> succeeded",
    ]


def test_a_worker_wait_on_a_service_without_events_reads_no_events(
    hook: FineTuningHook, api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:

    caplog.set_level(logging.INFO, logger="test.wait")
    hook.backend.capabilities = replace(hook.backend.capabilities, events=False)  # a service that keeps no event log
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="running"), job(status="succeeded", fine_tuned_model="ft:x"))
    steps = watch(
        "ftjob-1", log=logging.getLogger("test.wait"), poll_interval=0, events=hook.backend.supports("events")
    )
    outcome = wait_sync(hook, "ftjob-1", steps, sleep=lambda _: None)
    assert outcome.status == "succeeded"
    assert all("/events" not in r.url.path for r in api.requests)
    assert [r.getMessage() for r in caplog.records] == ["[ftjob-1] status: running", "[ftjob-1] running -> succeeded"]


def test_a_wait_keeps_nothing_of_a_poll_through_its_pause() -> None:
    """What a poll brought (the job, its events, the lines shown) is let go before the pause: kept through it, it
    would outlive young collections and bring on full ones (a triggerer waits on a thousand jobs at once)."""
    steps = watch("ftjob-1", poll_interval=60.0, log=logging.getLogger("tests.waiting.pause"), rng=lambda: 0.0)
    next(steps)
    events = [FineTuningJobEvent.model_validate(event(f"ev-{i}")) for i in (2, 1)]
    pause = steps.send(Observation(FineTuningJob.model_validate(job("ftjob-1", "running")), events))
    assert isinstance(pause, Pause)
    assert steps.gi_frame is not None
    kept = {name: value for name, value in steps.gi_frame.f_locals.items() if isinstance(value, list | Observation)}
    assert kept == {}
