"""Once-only creation where the client chooses the job's id: the rules, driven against an in-memory service."""

from __future__ import annotations

import re
from typing import Any

import pytest

from airflow_provider_finetune.core.client import RetryPolicy, Sleep
from airflow_provider_finetune.exceptions import (
    ChangedRequestError,
    ConflictError,
    FineTuningError,
    UnsafeToRetryError,
)
from airflow_provider_finetune.models import FineTuningJob
from airflow_provider_finetune.rules.once import (
    NO_STATE_STORE,
    CancelJob,
    CreateJob,
    GetJob,
    JobIdentity,
    ListJobs,
    ReadState,
    WriteState,
    client_job_id,
    ensure_job,
)

BODY = {"model": "base-model", "training_file": "file-train"}
TAG = "dag.task.run.-1"


class Service:
    """Jobs by client-chosen id; ``lose`` answers of creates are lost after the job was made."""

    def __init__(self, *, lose: int = 0, lie: bool = False) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.creates: list[str] = []
        self.cancels: list[str] = []
        self.lose = lose
        self.lie = lie

    def job(self, job_id: str) -> FineTuningJob:
        record = self.jobs[job_id]
        own = "someone-else" if self.lie else job_id
        return FineTuningJob.model_validate({"id": f"jobs/{job_id}", "client_job_id": own, **record})

    def add(self, job_id: str, status: str) -> None:
        self.jobs[job_id] = {"status": status, "model": BODY["model"]}

    def answer(self, step: Any) -> Any:
        if isinstance(step, GetJob):
            job_id = step.job_id.removeprefix("jobs/")
            return self.job(job_id) if job_id in self.jobs else None
        if isinstance(step, CreateJob):
            assert step.job_id is not None
            self.creates.append(step.job_id)
            if step.job_id in self.jobs:
                return ConflictError(409, f"job {step.job_id} already exists")
            self.add(step.job_id, "queued")
            if self.lose:
                self.lose -= 1
                return UnsafeToRetryError("POST", "jobs", TimeoutError("read timed out"))
            return self.job(step.job_id)
        if isinstance(step, CancelJob):
            self.cancels.append(step.job_id)
            self.jobs[step.job_id.removeprefix("jobs/")]["status"] = "cancelled"
            return self.job(step.job_id.removeprefix("jobs/"))
        raise AssertionError(f"unexpected step {step!r}")


def run(service: Service, store: dict[str, Any] | None = None, body: dict[str, Any] = BODY, **kwargs: Any):
    steps = ensure_job(
        body,
        JobIdentity(TAG),
        job_metadata=False,
        metadata_filter=False,
        policy=RetryPolicy(max_retries=2),
        now=1_000.0,
        job_ids=client_job_id,
        **kwargs,
    )
    outcome: Any = None
    while True:
        try:
            step = steps.send(outcome)
        except StopIteration as done:
            return done.value
        assert not isinstance(step, ListJobs), "a client-chosen id needs no list walk"
        if isinstance(step, ReadState):
            outcome = NO_STATE_STORE if store is None else store.get(step.key)
        elif isinstance(step, WriteState):
            outcome = None
            if store is not None:
                store[step.key] = step.value
        elif isinstance(step, Sleep):
            outcome = None
        else:
            outcome = service.answer(step)


def test_the_id_is_the_same_for_every_try_and_fits_every_services_rules() -> None:
    first = client_job_id(TAG, "rq-abc", 0)
    assert first == client_job_id(TAG, "rq-abc", 0)
    assert first != client_job_id(TAG, "rq-abd", 0)
    assert first != client_job_id(TAG, "rq-abc", 1)
    assert first != client_job_id("dag.task.run.0", "rq-abc", 0)
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,39}", first)


def test_a_new_task_instance_creates_once_under_generation_zero() -> None:
    service = Service()
    job, created = run(service)
    assert created
    assert service.creates == [job.model_extra["client_job_id"]]
    assert service.creates[0].endswith("-0")


def test_a_retry_reattaches_to_its_running_job_without_a_create() -> None:
    service = Service()
    first, _ = run(service)
    again, created = run(service)
    assert (again.id, created) == (first.id, False)
    assert len(service.creates) == 1


def test_a_lost_create_answer_is_resolved_by_the_id_and_never_sent_again() -> None:
    service = Service(lose=1)
    job, created = run(service)
    assert not created
    assert len(service.creates) == 1
    assert len(service.jobs) == 1
    assert job.status == "queued"


def test_an_id_in_use_is_looked_up_not_worked_around() -> None:
    job_id = client_job_id(TAG, _fingerprint(), 0)

    # A job made under the id appears between the lookup and the create (another try racing this one).
    class Racing(Service):
        def answer(self, step: Any) -> Any:
            if isinstance(step, CreateJob) and not self.jobs:
                self.add(job_id, "running")
            return super().answer(step)

    racing = Racing()
    job, created = run(racing)
    assert (job.model_extra["client_job_id"], created) == (job_id, False)
    assert len(racing.jobs) == 1
    assert racing.creates == [job_id]


def test_after_a_failed_job_the_next_generation_is_created() -> None:
    service = Service()
    service.add(client_job_id(TAG, _fingerprint(), 0), "failed")
    service.add(client_job_id(TAG, _fingerprint(), 1), "cancelled")
    job, created = run(service)
    assert created
    assert job.model_extra["client_job_id"].endswith("-2")


def test_a_job_whose_own_id_says_otherwise_is_never_adopted() -> None:
    service = Service(lie=True)
    service.add(client_job_id(TAG, _fingerprint(), 0), "running")
    with pytest.raises(FineTuningError, match="it is not this task instance's"):
        run(service)
    assert not service.creates


def test_a_changed_request_cancels_the_job_the_state_store_names_and_creates_anew() -> None:
    service = Service()
    store: dict[str, Any] = {}
    old, _ = run(service, store)
    changed = {**BODY, "training_file": "file-new"}
    job, created = run(service, store, body=changed)
    assert created
    assert service.cancels == [old.id]
    assert store["job_id"] == job.id != old.id


def test_a_changed_request_fails_when_asked_and_leaves_the_job() -> None:
    service = Service()
    store: dict[str, Any] = {}
    old, _ = run(service, store)
    with pytest.raises(ChangedRequestError, match=old.id):
        run(service, store, body={**BODY, "training_file": "file-new"}, on_changed_request="fail")
    assert not service.cancels
    assert len(service.creates) == 1


def _fingerprint() -> str:
    from airflow_provider_finetune.rules.once import tagged_body

    return tagged_body(BODY, TAG, job_metadata=False)[1]
