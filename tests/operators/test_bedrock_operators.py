"""The create operator, its trigger and the Bedrock operators against a fake Bedrock checked by botocore's model."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.core.client import close_shared_async_clients
from airflow_provider_finetune.exceptions import (
    ChangedRequestError,
    FineTuningError,
    FineTuningJobFailed,
    InvalidRequestError,
)
from airflow_provider_finetune.operators.bedrock import (
    BedrockCustomModelDeploymentDeleteOperator,
    BedrockCustomModelDeploymentOperator,
    BedrockTrainingDataOperator,
)
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
from tests.backends.bedrock_fake import ROLE_ARN, FakeBedrock, connect_bedrock, serve_fake_bedrock
from tests.operators.conftest import FakeStateStore, FakeTI

MODEL = "amazon.nova-lite-v1:0:300k"
TRAIN = "s3://training-bucket/data/train.jsonl"
OPTIONS = {"role_arn": ROLE_ARN, "output_s3_uri": "s3://training-bucket/output/"}
MODEL_ARN = "arn:aws:bedrock:us-east-1:123456789012:custom-model/amazon.nova-lite-v1:0:300k/abcdef012345"


@pytest.fixture
def fake_bedrock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBedrock]:
    connect_bedrock(monkeypatch)
    with serve_fake_bedrock() as fake:
        yield fake


def context() -> dict[str, Any]:
    return {"ti": FakeTI(), "task_state_store": FakeStateStore()}


def finetune(**kwargs: Any) -> FineTuningJobOperator:
    return FineTuningJobOperator(
        task_id="fine_tune",
        model=MODEL,
        training_file=TRAIN,
        service_options=OPTIONS,
        finetune_conn_id="ft_bedrock_test",
        poll_interval=0.01,
        **kwargs,
    )


def run_to(fake: FakeBedrock, *steps: tuple[str, dict[str, Any]]) -> None:
    """Move the job on by one step at each read of it by ARN (the wait's polls)."""
    queue = list(steps)

    def step(job: dict[str, Any]) -> None:
        if queue:
            status, fields = queue.pop(0)
            fake.advance(job["jobArn"], status, **fields)

    fake.before_get = step


def test_a_cost_cap_on_bedrock_is_estimated_from_its_epoch_count_before_the_create(fake_bedrock: FakeBedrock) -> None:
    from airflow_provider_finetune.rules.budget import BudgetExceededError

    def capped(max_cost: float, **options: Any) -> FineTuningJobOperator:
        return FineTuningJobOperator(
            task_id="fine_tune",
            model=MODEL,
            training_file=TRAIN,
            service_options={**OPTIONS, **options},
            finetune_conn_id="ft_bedrock_test",
            poll_interval=0.01,
            max_cost=max_cost,
            price_per_million_tokens=8.0,
            training_tokens=50_000,
            training_examples=100,
        )

    # Bedrock's default epochs differ by model and follow no published rule: the estimate needs the count.
    with pytest.raises(InvalidRequestError, match=r"service_options\.hyperparameters\.epochCount") as refused:
        capped(1.0).execute(context())
    assert refused.value.field == "service_options.hyperparameters.epochCount"
    two = {"hyperparameters": {"epochCount": 2}}
    with pytest.raises(BudgetExceededError, match=r"50,000 tokens per epoch x 2 epochs x 8 per million"):
        capped(0.5, **two).execute(context())  # 0.8 above 0.5
    assert fake_bedrock.jobs == {}
    run_to(fake_bedrock, ("Completed", {}))
    ctx = context()
    capped(1.0, **two).execute(ctx)
    assert len(fake_bedrock.jobs) == 1
    assert ctx["ti"].xcoms["estimated_cost"] == pytest.approx(0.8)


def test_the_create_operator_fine_tunes_on_bedrock_and_pushes_metrics(fake_bedrock: FakeBedrock) -> None:
    run_to(fake_bedrock, ("InProgress", {}), ("InProgress", {}), ("Completed", {}))
    ctx = context()
    model = finetune().execute(ctx)
    (arn,) = fake_bedrock.jobs
    assert model == fake_bedrock.jobs[arn]["outputModelArn"]
    xcoms = ctx["ti"].xcoms
    assert xcoms["job_id"] == arn
    assert xcoms["status"] == "succeeded"
    assert xcoms["training_metrics"] == {"trainingLoss": 0.25}
    assert xcoms["validation_metrics"] == [{"validationLoss": 0.3}]
    assert xcoms["checkpoints"] == []
    # a retry of the task (the state store kept) reattaches: still one job
    assert finetune().execute(ctx) == model
    assert fake_bedrock.creates_made == 1


def test_a_failed_job_fails_the_task_with_its_failure_message(fake_bedrock: FakeBedrock) -> None:
    run_to(fake_bedrock, ("Failed", {"failureMessage": "Invalid record at line 3 of train.jsonl"}))
    with pytest.raises(FineTuningJobFailed, match=r"Invalid record at line 3 of train\.jsonl"):
        finetune().execute(context())


def test_killing_the_task_stops_the_job(fake_bedrock: FakeBedrock) -> None:
    op = finetune(wait_for_completion=False)
    op.execute(context())
    op.on_kill()
    (job,) = fake_bedrock.jobs.values()
    assert job["status"] == "Stopping"
    assert fake_bedrock.operations[-1] == "StopModelCustomizationJob"


def test_no_cap_on_the_wait_but_the_task_timeout() -> None:
    op = finetune()
    assert op.timeout is None  # unlike the amazon provider's 2.5 hours, the wait has no cap of its own


def test_the_deferred_wait_and_its_cancel_on_kill(fake_bedrock: FakeBedrock) -> None:
    from airflow.exceptions import TaskDeferred

    op = finetune(deferrable=True)
    ctx = context()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    trigger = deferred.value.trigger
    _classpath, kwargs = trigger.serialize()
    assert "secret" not in json.dumps(kwargs).lower()
    run_to(fake_bedrock, ("InProgress", {}), ("Completed", {}))

    async def wait() -> dict[str, Any]:
        try:
            async for event in trigger.run():
                return dict(event.payload)
        finally:
            await close_shared_async_clients()
        raise AssertionError("no event")

    event = asyncio.run(wait())
    assert event["status"] == "succeeded"
    assert op.execute_complete(ctx, event) == next(iter(fake_bedrock.jobs.values()))["outputModelArn"]

    # A second task, killed while deferred: the trigger's on_kill stops its job.
    op2 = FineTuningJobOperator(
        task_id="fine_tune_2",
        model=MODEL,
        training_file=TRAIN,
        service_options=OPTIONS,
        finetune_conn_id="ft_bedrock_test",
        deferrable=True,
    )
    fake_bedrock.before_get = None
    with pytest.raises(TaskDeferred) as deferred2:
        op2.execute({"ti": FakeTI(task_id="fine_tune_2"), "task_state_store": FakeStateStore()})

    async def kill() -> None:
        try:
            await deferred2.value.trigger.on_kill()
        finally:
            await close_shared_async_clients()

    asyncio.run(kill())
    statuses = sorted(j["status"] for j in fake_bedrock.jobs.values())
    assert statuses == ["Completed", "Stopping"]


def test_bedrock_options_are_refused_on_another_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FT_OPENAI_X",
        json.dumps({"conn_type": "finetune", "host": "http://localhost:9/v1", "password": "sk-test-12345"}),
    )
    op = FineTuningJobOperator(
        task_id="t",
        model="gpt-4o-mini",
        training_file="file-1",
        service_options=OPTIONS,
        finetune_conn_id="ft_openai_x",
    )
    with pytest.raises(InvalidRequestError, match="service_options: OpenAI takes no options of its own"):
        op.execute(context())


# -- deployments ---------------------------------------------------------------------------------------------


def deploy(**kwargs: Any) -> BedrockCustomModelDeploymentOperator:
    return BedrockCustomModelDeploymentOperator(
        task_id="deploy", model_arn=MODEL_ARN, finetune_conn_id="ft_bedrock_test", poll_interval=0.01, **kwargs
    )


def activate_after(fake: FakeBedrock, reads: int) -> None:
    """Make every deployment active once it has been read ``reads`` times."""
    original = fake._get_custom_model_deployment
    counts: dict[str, int] = {}

    def get(params: dict[str, Any]) -> httpx.Response:
        found = fake._deployment(params["customModelDeploymentIdentifier"])
        if found is not None:
            counts[found["customModelDeploymentArn"]] = counts.get(found["customModelDeploymentArn"], 0) + 1
            if counts[found["customModelDeploymentArn"]] > reads:
                found["status"] = "Active"
        return original(params)

    fake._get_custom_model_deployment = get  # type: ignore[method-assign]


def test_the_deployment_operator_waits_until_active_and_returns_the_arn(fake_bedrock: FakeBedrock) -> None:
    activate_after(fake_bedrock, 2)
    ctx = context()
    arn = deploy().execute(ctx)
    (deployment,) = fake_bedrock.deployments.values()
    assert arn == deployment["customModelDeploymentArn"]
    assert deployment["modelArn"] == MODEL_ARN
    assert ctx["ti"].xcoms["deployment_arn"] == arn
    # a retry finds it by its name: one deployment
    assert deploy().execute(context()) == arn
    assert len(fake_bedrock.deployments) == 1


def test_a_lost_deployment_create_makes_one_deployment(fake_bedrock: FakeBedrock) -> None:
    activate_after(fake_bedrock, 0)

    def made_but_lost(request: httpx.Request) -> httpx.Response:
        fake_bedrock._create_custom_model_deployment(json.loads(request.content))
        raise httpx.RemoteProtocolError("connection dropped", request=request)

    fake_bedrock.fault("CreateCustomModelDeployment", made_but_lost)
    deploy().execute(context())
    assert len(fake_bedrock.deployments) == 1


def test_a_deployment_of_another_model_under_the_name_fails(fake_bedrock: FakeBedrock) -> None:
    activate_after(fake_bedrock, 0)
    deploy(deployment_name="weekly").execute(context())
    other = MODEL_ARN.replace("abcdef012345", "999999999999")
    op = BedrockCustomModelDeploymentOperator(
        task_id="deploy", model_arn=other, deployment_name="weekly", finetune_conn_id="ft_bedrock_test"
    )
    with pytest.raises(ChangedRequestError, match="serves"):
        op.execute(context())


def test_a_failed_deployment_fails_the_task(fake_bedrock: FakeBedrock) -> None:
    def fail(params: dict[str, Any]) -> httpx.Response:
        for d in fake_bedrock.deployments.values():
            d["status"], d["failureMessage"] = "Failed", "Insufficient capacity"
        return FakeBedrock._get_custom_model_deployment(fake_bedrock, params)

    fake_bedrock._get_custom_model_deployment = fail  # type: ignore[method-assign]
    with pytest.raises(FineTuningError, match="Insufficient capacity"):
        deploy().execute(context())


@pytest.mark.parametrize("wait_for_active", [True, False])
def test_a_retry_never_reattaches_to_its_failed_deployment(fake_bedrock: FakeBedrock, wait_for_active: bool) -> None:
    """Try 1's deployment failed; try 2 finds it by its name: refused in one line, without Airflow's retries."""
    from airflow_provider_finetune.core.compat import AirflowFailException

    activate_after(fake_bedrock, 99)
    ctx = context()
    arn = deploy(wait_for_active=False).execute(ctx)
    for d in fake_bedrock.deployments.values():
        d["status"], d["failureMessage"] = "Failed", "Insufficient capacity"
    with pytest.raises(FineTuningError, match=r"is Failed: Insufficient capacity; delete it") as refused:
        deploy(wait_for_active=wait_for_active).execute(ctx)
    assert isinstance(refused.value, AirflowFailException)
    assert arn in str(refused.value)
    assert len(fake_bedrock.deployments) == 1


def test_the_deferred_deployment_wait(fake_bedrock: FakeBedrock, caplog: pytest.LogCaptureFixture) -> None:
    from airflow.exceptions import TaskDeferred

    activate_after(fake_bedrock, 1)
    op = deploy(deferrable=True)
    ctx = context()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)

    async def wait() -> dict[str, Any]:
        try:
            async for event in deferred.value.trigger.run():
                return dict(event.payload)
        finally:
            await close_shared_async_clients()
        raise AssertionError("no event")

    # Airflow's structlog logger writes past pytest's capture: the same lines go to a standard logger here.
    deferred.value.trigger._log = logging.getLogger("tests.bedrock.deployment")
    caplog.set_level(logging.INFO, logger="tests.bedrock.deployment")
    event = asyncio.run(wait())
    assert event["status"] == "Active"
    assert op.execute_complete(ctx, event) == ctx["ti"].xcoms["deployment_arn"]
    # Its status lines were written before it fired, off the triggerer's event loop.
    lines = [r for r in caplog.records if "] status: " in r.getMessage()]
    assert [r.getMessage().rsplit(" ", 1)[-1] for r in lines][-1:] == ["Active"]
    assert {r.threadName for r in lines} == {"finetune-trigger-log"}


@pytest.mark.parametrize("limit", [2, 3])
def test_the_worker_s_deployment_wait_bears_failed_reads_up_to_its_limit(fake_bedrock: FakeBedrock, limit: int) -> None:
    """As the deferred wait does: a read that fails after the hook's retries counts; a good read resets the count."""
    from airflow_provider_finetune.core.client import RetryPolicy
    from airflow_provider_finetune.exceptions import InternalServerError
    from tests.backends.bedrock_fake import aws_error

    activate_after(fake_bedrock, 1)
    failing = [lambda r: aws_error(500, "InternalServerException", "try again")] * 4  # one poll: 4 attempts
    # Served: the lookup by name, the read after the create, then two failed polls, then the reads go on.
    served = lambda r: None  # noqa: E731
    fake_bedrock.fault("GetCustomModelDeployment", served, served, *failing, *failing)
    op = deploy(max_consecutive_errors=limit)
    op.hook._retry_policy = RetryPolicy(initial_delay=0, max_delay=0, jitter=0)
    if limit == 2:
        with pytest.raises(InternalServerError, match="try again"):
            op.execute(context())
        return
    assert op.execute(context()).startswith("arn:aws:bedrock:")


def test_deleting_a_deployment_twice_is_fine(fake_bedrock: FakeBedrock) -> None:
    activate_after(fake_bedrock, 0)
    arn = deploy().execute(context())
    BedrockCustomModelDeploymentDeleteOperator(
        task_id="undeploy", deployment=arn, finetune_conn_id="ft_bedrock_test"
    ).execute(context())
    BedrockCustomModelDeploymentDeleteOperator(
        task_id="undeploy", deployment=arn, finetune_conn_id="ft_bedrock_test"
    ).execute(context())
    assert fake_bedrock.deployments == {}


# -- training data in S3 ------------------------------------------------------------------------------------


@pytest.fixture
def s3(fake_bedrock: FakeBedrock) -> Iterator[Any]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="training-bucket")
        yield client


def _lines(records: list[Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def conversation(i: int) -> dict[str, Any]:
    return {
        "schemaVersion": "bedrock-conversation-2024",
        "system": [{"text": "You add numbers."}],
        "messages": [
            {"role": "user", "content": [{"text": f"What is {i} + {i}?"}]},
            {"role": "assistant", "content": [{"text": str(2 * i)}]},
        ],
    }


def test_a_local_file_is_checked_then_written_to_s3(s3: Any, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(_lines([conversation(i) for i in range(3)]))
    ctx = context()
    uri = BedrockTrainingDataOperator(
        task_id="upload",
        source=str(path),
        model=MODEL,
        s3_uri="s3://training-bucket/data/train.jsonl",
        finetune_conn_id="ft_bedrock_test",
    ).execute(ctx)
    assert uri == "s3://training-bucket/data/train.jsonl"
    assert s3.get_object(Bucket="training-bucket", Key="data/train.jsonl")["Body"].read() == path.read_bytes()
    assert ctx["ti"].xcoms["records"] == 3


def test_a_bad_line_names_the_line_and_nothing_is_written(s3: Any, tmp_path: Path) -> None:
    bad = conversation(1)
    bad["messages"] = bad["messages"][:1]  # ends with the user's turn
    path = tmp_path / "train.jsonl"
    path.write_text(_lines([conversation(0), bad]))
    with pytest.raises(InvalidRequestError, match=r"line 2: the last turn must be 'assistant'"):
        BedrockTrainingDataOperator(
            task_id="upload",
            source=str(path),
            model=MODEL,
            s3_uri="s3://training-bucket/data/train.jsonl",
            finetune_conn_id="ft_bedrock_test",
        ).execute(context())
    assert "Contents" not in s3.list_objects_v2(Bucket="training-bucket")


def test_a_file_in_s3_is_checked_where_it_is_streamed(s3: Any) -> None:
    s3.put_object(Bucket="training-bucket", Key="cpt/data.jsonl", Body=_lines([{"input": "text"}] * 3 + [{"text": 1}]))
    op = BedrockTrainingDataOperator(
        task_id="check",
        source="s3://training-bucket/cpt/data.jsonl",
        model="amazon.titan-text-express-v1",
        customization_type="CONTINUED_PRE_TRAINING",
        finetune_conn_id="ft_bedrock_test",
    )
    with pytest.raises(InvalidRequestError, match=r"line 4: unexpected field 'text'"):
        op.execute(context())
    s3.put_object(Bucket="training-bucket", Key="cpt/ok.jsonl", Body=_lines([{"input": "text"}] * 3))
    op.source = "s3://training-bucket/cpt/ok.jsonl"
    assert op.execute(context()) == "s3://training-bucket/cpt/ok.jsonl"


def test_the_bedrock_operators_refuse_another_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FT_OPENAI_Y",
        json.dumps({"conn_type": "finetune", "host": "http://localhost:9/v1", "password": "sk-test-12345"}),
    )
    with pytest.raises(InvalidRequestError, match="needs a Bedrock one"):
        BedrockCustomModelDeploymentOperator(task_id="d", model_arn=MODEL_ARN, finetune_conn_id="ft_openai_y").execute(
            context()
        )
