"""Quota refusals against the emulator over real HTTP: each service's words, told apart from a transient rate
limit (which the request core retries) and from a final refusal (never retried); and the rules of a quota wait."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.backends.base import read_openai_error
from airflow_provider_finetune.core.client import ErrorFields
from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.exceptions import (
    FineTuningNotAllowedError,
    QuotaExceededError,
    RateLimitError,
)
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.models import FineTuningJob
from airflow_provider_finetune.rules.once import TASK_TAG_KEY
from airflow_provider_finetune.rules.quota import (
    QUOTA_ERROR,
    QUOTA_READY,
    QUOTA_TIMEOUT,
    CountActive,
    Slots,
    await_quota,
    count_active,
    same_base_model,
)
from airflow_provider_finetune.rules.waiting import Pause
from tests.integration.conftest import API_KEY, Emulator, chat_lines

CREATE = "POST /v1/fine_tuning/jobs"
MODEL = "gpt-4.1-nano-2025-04-14"
LIMITS = {"max_active_jobs": 0, "max_daily_jobs": 0, "refuse_fine_tuning": False, "reported_price": 0.0}


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    """Jobs that stay active for about half a minute: a job made by one test takes its slot until cancelled."""
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, speed=1, seed=11)) as running:
        yield running


def connect(monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, host: str, **extra: str) -> Emulator:
    conn = {"conn_type": "finetune", "host": host, "password": API_KEY, "extra": {**extra, "max_retries": 2}}
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
    emulator = Emulator(server)
    emulator.reset()
    return emulator


def limits(emulator: Emulator, **settings: Any) -> None:
    emulator.faults(**{**LIMITS, **settings})


def cancel_active() -> None:
    hook = FineTuningHook()
    for job in hook.iter_jobs(limit=100):
        if not job.status.is_terminal():
            hook.cancel_job(job.id)


@pytest.fixture
def emulator(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    emulator = connect(monkeypatch, server, server.base_url)
    limits(emulator)
    yield emulator
    limits(emulator)
    cancel_active()


@pytest.fixture
def training_file(emulator: Emulator) -> str:
    return FineTuningHook().upload_file(chat_lines(), filename="train.jsonl").id


def create(training_file: str, model: str = MODEL) -> FineTuningJob:
    return FineTuningHook().create_job({"model": model, "training_file": training_file})


# -- each service's words -----------------------------------------------------------------------------------


def test_openai_active_job_cap_is_a_quota_refusal_sent_once(emulator: Emulator, training_file: str) -> None:
    limits(emulator, max_active_jobs=1)
    create(training_file)
    with pytest.raises(QuotaExceededError) as refused:
        create(training_file)
    err = refused.value
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded"
    assert err.quota == "active fine-tuning jobs for the base model"
    assert f"maximum of 1 active requests (0 running, 1 pending) for the model '{MODEL}'" in err.message
    assert emulator.requests_to(CREATE) == 2  # the refusal was not retried by the request core
    assert emulator.counters()["jobs_created"] == 1
    # Another base model has its own slots.
    create(training_file, "gpt-4.1-mini-2025-04-14")


def test_openai_daily_cap_is_a_quota_refusal(emulator: Emulator, training_file: str) -> None:
    limits(emulator, max_daily_jobs=1)
    model = "gpt-3.5-turbo-0125"  # no other test makes jobs of it today
    FineTuningHook().cancel_job(create(training_file, model).id)  # a cancelled job still counts for the day
    with pytest.raises(QuotaExceededError) as refused:
        create(training_file, model)
    assert refused.value.code == "daily_rate_limit_exceeded"
    assert refused.value.quota == "fine-tuning jobs created per day for the base model"
    assert "maximum of 1 fine-tuning requests per day" in refused.value.message
    assert emulator.requests_to(CREATE) == 2


def test_insufficient_quota_is_final_and_never_retried(emulator: Emulator, training_file: str) -> None:
    limits(emulator, refuse_fine_tuning=True)
    with pytest.raises(FineTuningNotAllowedError) as refused:
        create(training_file)
    assert refused.value.code == "insufficient_quota"
    assert "check your plan and billing details" in str(refused.value)
    assert emulator.requests_to(CREATE) == 1


def test_a_transient_rate_limit_is_still_retried(emulator: Emulator, training_file: str) -> None:
    emulator.faults(**LIMITS, rate_limit_rate=1.0, retry_after=0.0, match=r"^GET /v1/fine_tuning/jobs$")
    with pytest.raises(RateLimitError) as limited:
        FineTuningHook().list_jobs()
    assert not isinstance(limited.value, QuotaExceededError)
    assert sum(emulator.counters()["faults"].values()) == 3  # the first try and max_retries (2) more


@pytest.mark.parametrize(
    ("extra", "route"),
    [
        ({"service": "azure", "api_version": "2024-10-21"}, "POST /openai/fine_tuning/jobs"),
        ({"service": "azure", "api_version": "2025-04-01-preview"}, "POST /openai/fine_tuning/jobs"),
        ({"service": "azure"}, "POST /openai/v1/fine_tuning/jobs"),
    ],
    ids=["authoring", "authoring-preview", "v1"],
)
def test_azure_quota_refusal_on_both_surfaces(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch, extra: dict[str, str], route: str
) -> None:
    emulator = connect(monkeypatch, server, server.base_url.removesuffix("/v1"), **extra)
    limits(emulator, max_active_jobs=1)
    try:
        hook = FineTuningHook()
        training_file = hook.upload_file(chat_lines(), filename="train.jsonl").id
        hook.create_job({"model": "gpt-4o-mini-2024-07-18", "training_file": training_file})
        with pytest.raises(QuotaExceededError) as refused:  # per resource: another base model is refused too
            hook.create_job({"model": MODEL, "training_file": training_file})
        assert refused.value.code == "quotaExceeded"
        assert refused.value.quota == "fine-tuning jobs running and queued on the Azure resource"
        assert "running or queued" in refused.value.message
        assert emulator.requests_to(route) == 2
    finally:
        limits(emulator)
        cancel_active()


# -- what the readers say -----------------------------------------------------------------------------------


def _read(status: int, code: str | None, error_type: str | None) -> ErrorFields:
    body = {"error": {"message": "m", "type": error_type, "param": None, "code": code}}
    return read_openai_error(httpx.Response(status, json=body), body)


@pytest.mark.parametrize(
    ("status", "code", "error_type", "refusal"),
    [
        (429, "daily_rate_limit_exceeded", "invalid_request_error", "quota"),
        (429, "rate_limit_exceeded", "invalid_request_error", "quota"),
        (429, "rate_limit_exceeded", "requests", None),  # an ordinary request rate limit: transient
        (429, "rate_limit_exceeded", "tokens", None),
        (429, "insufficient_quota", "insufficient_quota", "final"),
        (400, "rate_limit_exceeded", "invalid_request_error", None),
        (429, None, None, None),
    ],
)
def test_openai_reader_tells_the_refusals_apart(status: int, code: str, error_type: str, refusal: str | None) -> None:
    assert _read(status, code, error_type).refusal == refusal


# -- the rules of a quota wait, with no I/O -----------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def drive(steps: Any, clock: Clock, answers: list[Any]) -> tuple[list[Any], Any]:
    """Carry out a quota wait: pauses move the clock, counts take the next answer."""
    seen: list[Any] = []
    reply: Any = None
    try:
        step = steps.send(None)
        while True:
            seen.append(step)
            if isinstance(step, Pause):
                clock.now += step.seconds
                reply = None
            else:
                reply = answers.pop(0)
            step = steps.send(reply)
    except StopIteration as done:
        return seen, done.value


def test_a_refused_create_waits_until_the_next_try() -> None:
    clock = Clock()
    steps = await_quota(MODEL, max_active_jobs=None, wake_at=1600.0, deadline=None, interval=60, clock=clock)
    seen, outcome = drive(steps, clock, [])
    assert seen == [Pause(600.0)]
    assert outcome.status == QUOTA_READY


def test_a_full_model_is_looked_at_again_until_a_slot_is_free(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    steps = await_quota(MODEL, max_active_jobs=2, wake_at=clock.now, deadline=None, interval=30, clock=clock)
    with caplog.at_level("INFO"):
        seen, outcome = drive(steps, clock, [Slots(2), Slots(3), Slots(1)])
    assert seen == [CountActive(MODEL), Pause(30.0), CountActive(MODEL), Pause(30.0), CountActive(MODEL)]
    assert outcome.status == QUOTA_READY
    assert f"Waiting for a free slot: 2 of at most 2 fine-tuning jobs are active on {MODEL}" in caplog.text


def test_the_deadline_ends_the_wait_saying_what_it_waited_for() -> None:
    clock = Clock()
    steps = await_quota(MODEL, max_active_jobs=1, wake_at=clock.now, deadline=clock.now + 45, interval=30, clock=clock)
    seen, outcome = drive(steps, clock, [Slots(1), Slots(1)])
    assert seen == [CountActive(MODEL), Pause(30.0), CountActive(MODEL), Pause(15.0)]
    assert outcome.status == QUOTA_TIMEOUT
    assert "1 of at most 1 fine-tuning jobs are active" in outcome.message


def test_own_job_is_never_waited_for_and_a_refused_count_ends_the_wait() -> None:
    clock = Clock()
    ours = await_quota(MODEL, max_active_jobs=1, wake_at=clock.now, deadline=None, interval=30, clock=clock)
    assert drive(ours, clock, [Slots(5, ours=True)])[1].status == QUOTA_READY
    from airflow_provider_finetune.exceptions import AuthenticationError

    refused = await_quota(MODEL, max_active_jobs=1, wake_at=clock.now, deadline=None, interval=30, clock=clock)
    assert drive(refused, clock, [AuthenticationError(401, "bad key")])[1].status == QUOTA_ERROR


def _job(job_id: str, model: str, status: str, tag: str | None = None) -> FineTuningJob:
    return FineTuningJob.model_validate(
        {"id": job_id, "model": model, "status": status, "metadata": {TASK_TAG_KEY: tag} if tag else None}
    )


def test_count_active_counts_the_base_model_and_its_snapshots_but_not_our_own() -> None:
    jobs = [
        _job("a", "gpt-4o-mini-2024-07-18", "running"),
        _job("b", "gpt-4o-mini", "queued"),
        _job("c", "gpt-4o-mini-2024-07-18", "succeeded"),
        _job("d", "gpt-4o-2024-08-06", "running"),
        _job("e", "gpt-4o-mini-2024-07-18", "paused", tag="ti-ours"),
    ]
    assert count_active(jobs, "gpt-4o-mini", tag="ti-ours", own_job_id=None) == Slots(2, ours=True)
    assert count_active(jobs, "gpt-4o-mini", tag="ti-other", own_job_id="a") == Slots(2, ours=True)
    assert same_base_model("gpt-4o-mini-2024-07-18", "gpt-4o-mini")
    assert not same_base_model("gpt-4o-mini-2024-07-18", "gpt-4o")
