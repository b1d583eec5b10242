"""The early-stopping rule with no I/O: what counts as an evaluation, when patience runs out, and the wait
that applies it, driven step by step (the worker's wait and the trigger's run the same generator)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.models import FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent
from airflow_provider_finetune.rules.early_stopping import (
    EARLY_STOPPED,
    EarlyStopping,
    Progress,
    checkpoint_evaluations,
    event_evaluations,
    stop_action,
)
from airflow_provider_finetune.rules.waiting import Observation, Pause, Poll, watch
from tests.hooks.conftest import event, job

# -- the rule ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "field"),
    [
        ({"patience": 0}, "early_stopping.patience"),
        ({"patience": "three"}, "early_stopping.patience"),
        ({"patience": True}, "early_stopping.patience"),
        ({"mode": "lowest"}, "early_stopping.mode"),
        ({"min_delta": -0.1}, "early_stopping.min_delta"),
        ({"action": "delete"}, "early_stopping.action"),
        ({"metric": ""}, "early_stopping.metric"),
        ({"patients": 3}, "early_stopping.patients"),
        ("valid_loss", "early_stopping"),
    ],
)
def test_a_bad_option_is_refused_naming_its_field(option: Any, field: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        EarlyStopping.of(option)
    assert refused.value.field == field
    assert field in str(refused.value)


def test_an_option_rendered_by_a_template_is_read_as_numbers() -> None:
    rule = EarlyStopping.of(
        {"patience": "4", "min_delta": "0.01", "mode": "max", "metric": "valid_mean_token_accuracy"}
    )
    assert rule == EarlyStopping("valid_mean_token_accuracy", "max", 4, 0.01, "cancel")
    assert EarlyStopping.of(rule.to_json()) == rule  # what the trigger's kwargs carry
    assert EarlyStopping.of(None) is None


def test_patience_counts_evaluations_without_improvement_since_the_best() -> None:
    rule = EarlyStopping(patience=2)
    progress = Progress().add(rule, [(1, 1.0), (2, 0.8), (3, 0.9)])
    assert (progress.best, progress.best_step, progress.since_best) == (0.8, 2, 1)
    assert not progress.out_of_patience(rule)
    progress = progress.add(rule, [(4, 0.85)])
    assert progress.out_of_patience(rule)
    # A new best resets the count.
    assert progress.add(rule, [(5, 0.7)]).since_best == 0


def test_an_evaluation_read_again_is_not_counted_twice() -> None:
    rule = EarlyStopping(patience=2)
    once = Progress().add(rule, [(1, 1.0), (2, 1.1)])
    again = once.add(rule, [(1, 1.0), (2, 1.1)])
    assert again == once
    assert again.evaluations == 2


def test_min_delta_and_mode() -> None:
    loss = EarlyStopping(min_delta=0.05, patience=1)
    assert Progress().add(loss, [(1, 1.0), (2, 0.97)]).out_of_patience(loss)  # better, but not by min_delta
    accuracy = EarlyStopping(metric="valid_mean_token_accuracy", mode="max", patience=1)
    progress = Progress().add(accuracy, [(1, 0.5), (2, 0.6)])
    assert (progress.best, progress.since_best) == (0.6, 0)
    assert progress.add(accuracy, [(3, 0.55)]).out_of_patience(accuracy)


def test_a_job_with_no_checkpoint_is_never_stopped() -> None:
    rule = EarlyStopping(patience=1)
    progress = Progress().add(rule, [(1, 1.0), (2, 2.0)])
    assert progress.out_of_patience(rule)
    assert not progress.should_stop(rule)


def test_evaluations_are_metrics_events_and_checkpoints_that_carry_the_metric() -> None:
    rule = EarlyStopping()
    events = [
        FineTuningJobEvent.model_validate(e)
        for e in (
            metrics("ev-1", 1, valid_loss=1.2),
            metrics("ev-2", 2, train_loss=0.9),  # no validation metric at this step
            event("ev-3", "Checkpoint created", data={"step": 2, "fine_tuned_model_checkpoint": "ft:x:ckpt-2"}),
            metrics("ev-4", 3, valid_loss=float("nan")),
            metrics("ev-5", 4, valid_loss=1.1),
        )
    ]
    assert list(event_evaluations(rule, events)) == [(1, 1.2), (4, 1.1)]
    checkpoints = [checkpoint(8, valid_loss=0.9), checkpoint(4, valid_loss=1.0), checkpoint(6, train_loss=0.3)]
    assert checkpoint_evaluations(rule, checkpoints) == [(4, 1.0), (8, 0.9)]


def test_pause_only_where_the_service_can() -> None:
    assert stop_action(EarlyStopping(action="pause"), can_pause=True) == "pause"
    assert stop_action(EarlyStopping(action="pause"), can_pause=False) == "cancel"
    assert stop_action(EarlyStopping(), can_pause=True) == "cancel"


# -- the wait ---------------------------------------------------------------------------------------------


def metrics(event_id: str, step: int, **values: float) -> dict[str, Any]:
    return event(event_id, f"Step {step}", type="metrics", data={"step": step, **values})


def checkpoint(step: int, **values: float) -> FineTuningJobCheckpoint:
    return FineTuningJobCheckpoint.model_validate(
        {
            "object": "fine_tuning.job.checkpoint",
            "id": f"ftckpt_{step}",
            "created_at": 1721764800,
            "fine_tuned_model_checkpoint": f"ft:gpt-4o-mini-2024-07-18:org::abc:ckpt-step-{step}",
            "fine_tuning_job_id": "ftjob-1",
            "metrics": {"step": step, **values},
            "step_number": step,
        }
    )


def seen(status: str, *events: dict[str, Any], checkpoints: list[FineTuningJobCheckpoint] | None = None) -> Observation:
    return Observation(
        FineTuningJob.model_validate(job(status=status)),
        [FineTuningJobEvent.model_validate(e) for e in events],
        checkpoints,
    )


def drive(replies: list[Observation], **kwargs: Any) -> tuple[Any, list[Poll]]:
    steps = watch("ftjob-1", log=logging.getLogger("test.early"), rng=lambda: 0.0, clock=lambda: 0.0, **kwargs)
    polls: list[Poll] = []
    step = next(steps)
    pending = list(replies)
    try:
        while True:
            if isinstance(step, Pause):
                step = steps.send(None)
            else:
                polls.append(step)
                step = steps.send(pending.pop(0))
    except StopIteration as done:
        return done.value, polls


CHECKPOINT_EVENT = event("ev-c", "Checkpoint created", data={"step": 2, "fine_tuned_model_checkpoint": "ft:x:ckpt-2"})
OVERFITTING = [
    seen("running", metrics("ev-1", 1, valid_loss=1.0), metrics("ev-2", 2, valid_loss=0.8), CHECKPOINT_EVENT),
    seen("running", metrics("ev-3", 3, valid_loss=0.9)),
    seen("running", metrics("ev-4", 4, valid_loss=0.95), metrics("ev-5", 5, valid_loss=1.0)),
    seen("running"),
]


def test_a_job_that_stops_improving_ends_the_wait_early_stopped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.early")
    outcome, polls = drive(OVERFITTING, early_stopping=EarlyStopping(patience=3))
    assert outcome.status == EARLY_STOPPED
    assert len(polls) == 3
    # Every poll asks for all the events since the last (the first: the job's whole history).
    assert [(p.after_event, p.history, p.checkpoints) for p in polls] == [
        (None, True, False),
        ("ev-c", True, False),
        ("ev-3", True, False),
    ]
    assert outcome.early_stopping == {
        "best": 0.8,
        "best_step": 2,
        "since_best": 3,
        "evaluations": 5,
        "last_step": 5,
        "checkpointed": True,
    }
    assert "valid_loss has not improved on its best (0.8000 at step 2) for 3 evaluation(s)" in outcome.message
    assert outcome.payload()["early_stopping"]["best_step"] == 2
    assert outcome.message in caplog.text


def test_without_the_rule_the_same_job_is_waited_for_to_its_end() -> None:
    outcome, polls = drive([*OVERFITTING[:3], seen("succeeded")])
    assert outcome.status == "succeeded"
    assert not any(p.history for p in polls)


def test_a_restarted_wait_reads_the_history_once_and_decides_the_same() -> None:
    """A trigger re-created on another triggerer starts from its kwargs: its first read is the whole history."""
    everything = [e for o in OVERFITTING for e in o.events]
    outcome, polls = drive([Observation(OVERFITTING[0].job, everything)], early_stopping=EarlyStopping(patience=3))
    assert len(polls) == 1
    assert outcome.status == EARLY_STOPPED
    assert outcome.early_stopping["best_step"] == 2


def test_patience_that_runs_out_before_any_checkpoint_waits_for_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.early")
    replies = [
        seen("running", metrics("ev-1", 1, valid_loss=0.5), metrics("ev-2", 2, valid_loss=0.9)),
        seen("running", metrics("ev-3", 3, valid_loss=0.95)),
        seen("running", metrics("ev-4", 4, valid_loss=0.96)),
        seen("running", event("ev-5", "Checkpoint", data={"step": 4, "fine_tuned_model_checkpoint": "ft:x:c4"})),
    ]
    outcome, polls = drive(replies, early_stopping=EarlyStopping(patience=1))
    assert outcome.status == EARLY_STOPPED
    assert len(polls) == 4
    # Said once, when patience ran out, not at each poll after.
    assert caplog.text.count("training goes on until it makes a checkpoint to return") == 1


def test_a_job_that_ends_first_ends_the_wait_as_usual() -> None:
    outcome, _ = drive([seen("succeeded", metrics("ev-1", 1, valid_loss=1.0))], early_stopping=EarlyStopping())
    assert outcome.status == "succeeded"


def test_a_service_without_events_is_judged_on_its_checkpoints() -> None:
    rule = EarlyStopping(patience=1)
    replies = [
        seen("running", checkpoints=[]),
        seen("running", checkpoints=[checkpoint(4, valid_loss=0.7)]),
        seen("running", checkpoints=[checkpoint(4, valid_loss=0.7), checkpoint(8, valid_loss=0.75)]),
    ]
    outcome, polls = drive(replies, early_stopping=rule, events=False)
    assert [(p.history, p.checkpoints) for p in polls] == [(False, True)] * 3
    assert outcome.status == EARLY_STOPPED
    assert (outcome.early_stopping["best_step"], outcome.early_stopping["since_best"]) == (4, 1)


def test_the_checkpoint_wait_ends_early_stopped_with_the_best_checkpoint() -> None:
    from airflow_provider_finetune.rules.checkpoints import CheckpointCondition, watch_checkpoints

    running = FineTuningJob.model_validate(job(status="running"))
    steps = watch_checkpoints(
        "ftjob-1", CheckpointCondition(min_checkpoints=5), early_stopping=EarlyStopping(patience=2)
    )
    next(steps)
    replies = [
        [checkpoint(4, valid_loss=0.7)],
        [checkpoint(4, valid_loss=0.7), checkpoint(8, valid_loss=0.8)],
        [checkpoint(4, valid_loss=0.7), checkpoint(8, valid_loss=0.8), checkpoint(12, valid_loss=0.75)],
    ]
    reads = 0
    outcome = None
    for checkpoints in replies:
        reads += 1
        try:
            steps.send((running, checkpoints))
        except StopIteration as done:
            outcome = done.value
            break
        next(steps)  # the pause
    assert outcome is not None
    assert reads == 3
    assert outcome.status == EARLY_STOPPED
    assert outcome.checkpoint.step_number == 4
    assert outcome.early_stopping["since_best"] == 2
    assert "for 2 evaluation(s)" in outcome.message


async def test_the_shared_poller_reads_every_event_of_an_early_stopping_wait_on_every_poll() -> None:
    """Forty waits, four event reads per interval for the plain ones: the ten judging every evaluation get
    all their job's events on every poll, the first time back to the job's first event (150 of them)."""
    import asyncio

    from tests.triggers.test_poller import JobsThatEnd, make_poller

    ends = {f"ftjob-{i:05d}": 8 for i in range(40)}
    service = JobsThatEnd(ends, events=150)
    poller = make_poller(service)
    guarded = list(ends)[:10]
    seen: dict[str, list[int]] = {job_id: [] for job_id in guarded}

    def counting(job_id: str, steps: Any) -> Any:
        step = next(steps)
        while True:
            reply = yield step
            if isinstance(reply, Observation):
                seen[job_id].append(len(reply.events))
            try:
                step = steps.send(reply)
            except StopIteration as done:
                return done.value

    async def clock() -> None:
        while any(j["status"] == "running" for j in service.jobs):
            await asyncio.sleep(0.05)
            service.tick()

    def steps(job_id: str) -> Any:
        if job_id in guarded:
            return counting(job_id, watch(job_id, poll_interval=0.05, early_stopping=EarlyStopping()))
        return watch(job_id, poll_interval=0.05)

    def reads(job_id: str) -> int:
        return sum(1 for kind, j in service.calls if kind == "events" and j == job_id)

    ticking = asyncio.ensure_future(clock())
    outcomes = await asyncio.gather(*(poller.wait(j, steps(j), poll_interval=0.05) for j in ends))
    await ticking
    assert {o.status for o in outcomes} == {"succeeded"}
    for job_id in guarded:
        assert seen[job_id][0] >= 150  # the job's history, page after page
        assert sum(seen[job_id]) == len(service.events[job_id])  # then every event once
        assert reads(job_id) >= len(seen[job_id])  # read on every poll
    # The plain waits keep to the budget: fewer reads each than the waits that judge every evaluation.
    plain = list(ends)[10:]
    assert sum(map(reads, plain)) / len(plain) < sum(map(reads, guarded)) / len(guarded)
