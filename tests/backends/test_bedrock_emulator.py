"""The Bedrock backend against the emulator's Bedrock dialect and moto's S3, over real HTTP, sync and async.

The emulator recomputes every SigV4 signature with botocore and checks every request against botocore's
``bedrock`` model; its jobs read their training data from moto's S3.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from airflow_provider_finetune.core.client import RetryPolicy, close_shared_async_clients
from airflow_provider_finetune.core.statuses import FineTuningJobStatus
from airflow_provider_finetune.emulator.config import FaultConfig
from airflow_provider_finetune.exceptions import FineTuningJobFailed
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.rules.once import JobIdentity
from tests.bedrock_fixtures import BedrockEmulator, bedrock, conversation_records, make_bedrock, moto_s3
from tests.hook_doors import async_call

__all__ = ["bedrock", "make_bedrock", "moto_s3"]  # fixtures, used by name

MODEL = "amazon.nova-micro-v1:0:128k"


def connect(monkeypatch: pytest.MonkeyPatch, emulator: BedrockEmulator, *, key: bool = False) -> FineTuningHook:
    """A Bedrock connection to the emulator, signing with an Airflow AWS connection (or its Bedrock API key)."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_BEDROCK_EMU",
        json.dumps(
            {
                "conn_type": "aws",
                "login": emulator.access_key_id,
                "password": emulator.secret_access_key,
                "extra": {"region_name": emulator.region, "endpoint_url": emulator.s3_endpoint_url},
            }
        ),
    )
    conn: dict[str, Any] = {
        "conn_type": "finetune",
        "host": emulator.control_url,
        "extra": {"service": "bedrock", "region_name": emulator.region, "aws_conn_id": "aws_bedrock_emu"},
    }
    if key:
        conn["password"] = emulator.api_key
    monkeypatch.setenv("AIRFLOW_CONN_FT_BEDROCK_EMU", json.dumps(conn))
    return FineTuningHook("ft_bedrock_emu", retry_policy=RetryPolicy(initial_delay=0.01, max_delay=0.05, jitter=0))


def options(emulator: BedrockEmulator, **more: Any) -> dict[str, Any]:
    return {
        "role_arn": emulator.role_arn,
        "output_s3_uri": f"s3://{emulator.bucket}/output/",
        "hyperparameters": {"epochCount": 2},
        **more,
    }


def wait_until_done(hook: FineTuningHook, job_id: str) -> Any:
    import time

    for _ in range(400):
        job = hook.get_job(job_id)
        if job.status.is_terminal():
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


@pytest.mark.integration
def test_the_whole_lifecycle_through_the_hook_sync(monkeypatch: pytest.MonkeyPatch, bedrock: BedrockEmulator) -> None:
    hook = connect(monkeypatch, bedrock)
    train = bedrock.put_jsonl("data/train.jsonl", conversation_records(12))
    job, created = hook.ensure_job(
        {"model": MODEL, "training_file": train}, identity=JobIdentity("ti-emu-sync"), service_options=options(bedrock)
    )
    assert created
    assert job.id.startswith("arn:aws:bedrock:")
    done = wait_until_done(hook, job.id)
    assert done.status is FineTuningJobStatus.SUCCEEDED
    assert done.fine_tuned_model
    assert ":custom-model/" in done.fine_tuned_model
    assert done.model_extra
    assert "training_metrics" in done.model_extra
    again, created = hook.ensure_job(
        {"model": MODEL, "training_file": train}, identity=JobIdentity("ti-emu-sync"), service_options=options(bedrock)
    )
    assert not created
    assert again.id == job.id
    assert [j.id for j in hook.iter_jobs()] == [job.id]


@pytest.mark.integration
def test_the_whole_lifecycle_through_the_hook_async_with_an_api_key(
    monkeypatch: pytest.MonkeyPatch, bedrock: BedrockEmulator
) -> None:
    hook = connect(monkeypatch, bedrock, key=True)
    train = bedrock.put_jsonl("data/train.jsonl", conversation_records(12))

    async def lifecycle() -> tuple[Any, Any]:
        try:
            job, _ = await async_call(
                hook,
                "ensure_job",
                {"model": MODEL, "training_file": train},
                identity=JobIdentity("ti-emu-async"),
                service_options=options(bedrock),
            )
            for _ in range(400):
                read = await hook.aget_job(job.id)
                if read.status.is_terminal():
                    break
                await asyncio.sleep(0.05)
            states = await hook.alist_job_states(limit=10)
            return read, states
        finally:
            await close_shared_async_clients()

    read, states = asyncio.run(lifecycle())
    assert read.status is FineTuningJobStatus.SUCCEEDED
    assert [s.id for s in states.data] == [read.id]


@pytest.mark.integration
def test_a_failed_job_fails_the_task_with_its_failure_message(
    monkeypatch: pytest.MonkeyPatch, bedrock: BedrockEmulator
) -> None:
    from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
    from tests.operators.conftest import FakeStateStore, FakeTI

    connect(monkeypatch, bedrock)
    train = bedrock.put_jsonl("data/bad.jsonl", ["{not json", *map(json.dumps, conversation_records(3))])
    op = FineTuningJobOperator(
        task_id="fine_tune",
        model=MODEL,
        training_file=train,
        service_options=options(bedrock),
        finetune_conn_id="ft_bedrock_emu",
        poll_interval=0.05,
    )
    with pytest.raises(FineTuningJobFailed) as err:
        op.execute({"ti": FakeTI(), "task_state_store": FakeStateStore()})
    job = FineTuningHook("ft_bedrock_emu").get_job(err.value.job_id)
    assert job.error is not None
    assert job.error.message
    assert job.error.message in str(err.value)


@pytest.mark.integration
def test_killing_the_task_stops_the_job(monkeypatch: pytest.MonkeyPatch, make_bedrock: Any) -> None:
    from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
    from tests.operators.conftest import FakeStateStore, FakeTI

    emulator = make_bedrock(speed=1.0)  # slow enough to be killed while it runs
    hook = connect(monkeypatch, emulator)
    train = emulator.put_jsonl("data/train.jsonl", conversation_records(12))
    op = FineTuningJobOperator(
        task_id="fine_tune",
        model=MODEL,
        training_file=train,
        service_options=options(emulator),
        finetune_conn_id="ft_bedrock_emu",
        wait_for_completion=False,
    )
    op.execute({"ti": FakeTI(), "task_state_store": FakeStateStore()})
    op.on_kill()
    assert op.job_id is not None
    job = hook.get_job(op.job_id)
    assert job.status in (FineTuningJobStatus.CANCELLING, FineTuningJobStatus.CANCELLED)
    assert job.model_extra
    assert job.model_extra["bedrock_status"] in ("Stopping", "Stopped")


# -- fault drills: one job each, no task failed by a transient fault -----------------------------------------

DRILLS = {
    "throttling": FaultConfig(seed=3, rate_limit_rate=0.3, retry_after=0.01),
    "5xx": FaultConfig(seed=5, error_rate=0.3),
    "dropped connections": FaultConfig(seed=7, drop_rate=0.3),
    "lost create answers": FaultConfig(
        seed=9, error_rate=0.5, after_processing=True, match="POST .*customization-jobs$"
    ),
}


@pytest.mark.integration
@pytest.mark.parametrize("drill", list(DRILLS))
def test_fault_drill_makes_one_job(
    drill: str, monkeypatch: pytest.MonkeyPatch, make_bedrock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
    from tests.operators.conftest import FakeStateStore, FakeTI

    emulator = make_bedrock(faults=DRILLS[drill])
    connect(monkeypatch, emulator)
    train = emulator.put_jsonl("data/train.jsonl", conversation_records(12))
    op = FineTuningJobOperator(
        task_id="fine_tune",
        model=MODEL,
        training_file=train,
        service_options=options(emulator),
        finetune_conn_id="ft_bedrock_emu",
        poll_interval=0.05,
        max_consecutive_errors=50,
    )
    model = op.execute({"ti": FakeTI(), "task_state_store": FakeStateStore()})  # no transient fault fails it
    faults = sum(emulator.server.emulator.counters.faults.values())
    jobs = emulator.client("bedrock").list_model_customization_jobs()["modelCustomizationJobSummaries"]
    with capsys.disabled():
        print(
            f"\n[bedrock fault drill] {drill}: faults injected {faults}, jobs created {len(jobs)}, "
            f"task succeeded: {model is not None}"
        )
    assert faults > 0  # the drill did meet its faults
    assert len(jobs) == 1
    assert model is not None


@pytest.mark.integration
def test_a_worker_killed_after_the_create_leaves_one_job(
    monkeypatch: pytest.MonkeyPatch, bedrock: BedrockEmulator
) -> None:
    """The first try creates the job and dies before it records anything; the retry finds the job by its name."""
    from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
    from tests.operators.conftest import FakeTI

    connect(monkeypatch, bedrock)
    train = bedrock.put_jsonl("data/train.jsonl", conversation_records(12))

    def make() -> FineTuningJobOperator:
        return FineTuningJobOperator(
            task_id="fine_tune",
            model=MODEL,
            training_file=train,
            service_options=options(bedrock),
            finetune_conn_id="ft_bedrock_emu",
            poll_interval=0.05,
        )

    class Killed(BaseException):
        pass

    first = make()

    def die(*args: Any, **kwargs: Any) -> None:
        raise Killed

    monkeypatch.setattr(first, "_push_job", die)  # killed right after the create answered
    with pytest.raises(Killed):
        first.execute({"ti": FakeTI(try_number=1)})  # Airflow 3.1: no state store survives
    model = make().execute({"ti": FakeTI(try_number=2)})
    jobs = bedrock.client("bedrock").list_model_customization_jobs()["modelCustomizationJobSummaries"]
    print(f"\n[bedrock fault drill] worker killed after create: jobs created {len(jobs)}")
    assert len(jobs) == 1
    assert model


# -- a user-given custom model name across a task instance's jobs ------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("ending", ["stopped", "failed"])
def test_a_retry_after_a_stopped_or_failed_job_makes_a_new_job_under_the_users_model_name(
    ending: str, monkeypatch: pytest.MonkeyPatch, make_bedrock: Any
) -> None:
    """The first job of a task instance is stopped (or fails on bad data, fixed in place before the retry); the
    retry makes a new job with the same ``custom_model_name`` given, and that job completes under a model name
    recognisably the user's."""
    from airflow_provider_finetune.emulator import ManualClock
    from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
    from tests.operators.conftest import FakeStateStore, FakeTI

    clock = ManualClock(start=time.time())
    emulator = make_bedrock(clock=clock, speed=1.0)
    hook = connect(monkeypatch, emulator)
    records = conversation_records(12)
    first_data = ["{not json", *map(json.dumps, records)] if ending == "failed" else records
    train = emulator.put_jsonl("data/train.jsonl", first_data)
    store = FakeStateStore()

    def attempt(try_number: int) -> FineTuningJobOperator:
        op = FineTuningJobOperator(
            task_id="fine_tune",
            model=MODEL,
            training_file=train,
            service_options=options(emulator, custom_model_name="support-model"),
            finetune_conn_id="ft_bedrock_emu",
            wait_for_completion=False,
        )
        op.execute({"ti": FakeTI(try_number=try_number), "task_state_store": store})
        assert op.job_id is not None
        return op

    first = attempt(1)
    if ending == "stopped":
        first.on_kill()
    clock.advance(600.0)
    assert first.job_id is not None
    ended = hook.get_job(first.job_id)
    assert ended.status is (FineTuningJobStatus.CANCELLED if ending == "stopped" else FineTuningJobStatus.FAILED)
    assert ended.model_extra
    assert ended.model_extra["output_model_name"] == "support-model"
    if ending == "failed":
        emulator.put_jsonl("data/train.jsonl", records)  # the data is fixed where it is: the same request

    second = attempt(2)  # before, Bedrock's answer was "The provided model name is currently in use.", every try
    assert second.job_id is not None
    assert second.job_id != first.job_id
    clock.advance(600.0)
    done = hook.get_job(second.job_id)
    assert done.status is FineTuningJobStatus.SUCCEEDED
    assert done.model_extra
    assert done.model_extra["output_model_name"] == "support-model-1"
    client = emulator.client("bedrock")
    model = client.get_custom_model(modelIdentifier="support-model-1")
    assert model["modelArn"] == done.fine_tuned_model
    jobs = client.list_model_customization_jobs()["modelCustomizationJobSummaries"]
    assert [job["customModelName"] for job in jobs] == ["support-model-1", "support-model"]
    # A third try reattaches to the completed job: no third job.
    third = attempt(3)
    assert third.job_id == second.job_id
    assert len(client.list_model_customization_jobs()["modelCustomizationJobSummaries"]) == 2
