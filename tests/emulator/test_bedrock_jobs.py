"""The emulator's Bedrock control plane, driven by boto3's own ``bedrock`` client over real HTTP, S3 in moto."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from airflow_provider_finetune.emulator import ManualClock
from tests.bedrock_fixtures import BedrockEmulator, bedrock, conversation_records, make_bedrock, moto_s3

__all__ = ["bedrock", "make_bedrock", "moto_s3"]  # fixtures, used by name


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=time.time())


@pytest.fixture
def manual(make_bedrock: Callable[..., BedrockEmulator], clock: ManualClock) -> BedrockEmulator:
    """An emulator on a clock that moves only when the test says, at speed 1 (10 s of deployment, 5 s of stop)."""
    return make_bedrock(clock=clock, speed=1.0)


def create(emu: BedrockEmulator, name: str, records: list[Any] | None = None, **overrides: Any) -> str:
    uri = emu.put_jsonl(f"{name}/train.jsonl", records if records is not None else conversation_records())
    answer = emu.client().create_model_customization_job(**emu.job_body(name, uri, **overrides))
    return str(answer["jobArn"])


def test_create_answers_201_with_the_job_arn(bedrock: BedrockEmulator) -> None:
    uri = bedrock.put_jsonl("a/train.jsonl", conversation_records())
    answer = bedrock.client().create_model_customization_job(**bedrock.job_body("first-job", uri))
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert answer["ResponseMetadata"]["RequestId"]
    assert answer["jobArn"].startswith(
        "arn:aws:bedrock:us-east-1:123456789012:model-customization-job/amazon.nova-micro-v1:0:128k/"
    )
    assert len(answer["jobArn"].rsplit("/", 1)[1]) == 12


def test_get_by_arn_and_by_name_until_completed(bedrock: BedrockEmulator) -> None:
    arn = create(bedrock, "job-by-name")
    client = bedrock.client()
    by_arn = client.get_model_customization_job(jobIdentifier=arn)
    by_name = client.get_model_customization_job(jobIdentifier="job-by-name")
    assert by_arn["jobArn"] == by_name["jobArn"] == arn
    assert by_arn["jobName"] == "job-by-name"
    assert by_arn["roleArn"] == bedrock.role_arn
    assert by_arn["baseModelArn"] == "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-micro-v1:0:128k"
    assert by_arn["hyperParameters"]["epochCount"] == "2"
    deadline = time.monotonic() + 10
    while (job := client.get_model_customization_job(jobIdentifier=arn))["status"] == "InProgress":
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    assert job["status"] == "Completed", job
    assert {detail["status"] for detail in job["statusDetails"].values()} == {"Completed"}
    assert job["outputModelArn"].startswith("arn:aws:bedrock:us-east-1:123456789012:custom-model/amazon.nova-micro")
    assert job["outputModelName"] == "job-by-name-model"
    assert job["trainingMetrics"]["trainingLoss"] > 0
    assert job["endTime"] >= job["creationTime"]


def test_phases_and_status_details(manual: BedrockEmulator, clock: ManualClock) -> None:
    arn = create(manual, "phases")
    client = manual.client()

    def details() -> tuple[str, ...]:
        job = client.get_model_customization_job(jobIdentifier=arn)
        found = job["statusDetails"]
        return (
            job["status"],
            found["validationDetails"]["status"],
            found["dataProcessingDetails"]["status"],
            found["trainingDetails"]["status"],
        )

    assert details() == ("InProgress", "InProgress", "NotStarted", "NotStarted")
    clock.advance(3.0)
    assert details() == ("InProgress", "Completed", "InProgress", "NotStarted")
    clock.advance(5.0)
    assert details() == ("InProgress", "Completed", "Completed", "InProgress")
    clock.advance(200.0)
    assert details() == ("Completed", "Completed", "Completed", "Completed")


def test_stop_goes_through_stopping_to_stopped(manual: BedrockEmulator, clock: ManualClock) -> None:
    arn = create(manual, "to-stop")
    client = manual.client()
    clock.advance(10.0)
    answer = client.stop_model_customization_job(jobIdentifier=arn)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    job = client.get_model_customization_job(jobIdentifier=arn)
    assert job["status"] == "Stopping"
    assert job["statusDetails"]["trainingDetails"]["status"] == "Stopping"
    assert "endTime" not in job
    client.stop_model_customization_job(jobIdentifier="to-stop")  # idempotent
    clock.advance(5.0)
    job = client.get_model_customization_job(jobIdentifier=arn)
    assert job["status"] == "Stopped"
    assert job["statusDetails"]["validationDetails"]["status"] == "Completed"
    assert job["statusDetails"]["trainingDetails"]["status"] == "Stopped"
    assert "endTime" in job
    assert "outputModelArn" not in job


def test_a_completed_job_cannot_be_stopped(manual: BedrockEmulator, clock: ManualClock) -> None:
    arn = create(manual, "done")
    clock.advance(300.0)
    with pytest.raises(ClientError) as caught:
        manual.client().stop_model_customization_job(jobIdentifier=arn)
    assert error_code(caught) == "ValidationException"


def test_list_filters_sorts_and_pages(manual: BedrockEmulator, clock: ManualClock) -> None:
    client = manual.client()
    arns = []
    for index in range(5):
        arns.append(create(manual, f"listed-{index}"))
        clock.advance(1.0)
    create(manual, "other-name")
    client.stop_model_customization_job(jobIdentifier=arns[0])

    seen: list[str] = []
    kwargs: dict[str, Any] = {"nameContains": "listed", "maxResults": 2, "sortOrder": "Ascending"}
    pages = 0
    while True:
        page = client.list_model_customization_jobs(**kwargs)
        pages += 1
        seen += [summary["jobArn"] for summary in page["modelCustomizationJobSummaries"]]
        if "nextToken" not in page:
            break
        kwargs["nextToken"] = page["nextToken"]
    assert seen == arns
    assert pages == 3

    newest_first = client.list_model_customization_jobs(nameContains="listed")["modelCustomizationJobSummaries"]
    assert [item["jobArn"] for item in newest_first] == arns[::-1]
    stopping = client.list_model_customization_jobs(statusEquals="Stopping")["modelCustomizationJobSummaries"]
    assert [item["jobName"] for item in stopping] == ["listed-0"]
    created = client.get_model_customization_job(jobIdentifier=arns[2])["creationTime"]
    after = client.list_model_customization_jobs(creationTimeAfter=created, nameContains="listed")
    assert [item["jobArn"] for item in after["modelCustomizationJobSummaries"]] == arns[3:][::-1]
    before = client.list_model_customization_jobs(creationTimeBefore=created, nameContains="listed")
    assert [item["jobArn"] for item in before["modelCustomizationJobSummaries"]] == arns[:2][::-1]

    paginator = client.get_paginator("list_model_customization_jobs")
    everything = [
        item["jobName"]
        for page in paginator.paginate(PaginationConfig={"PageSize": 4})
        for item in page["modelCustomizationJobSummaries"]
    ]
    assert sorted(everything) == sorted([f"listed-{index}" for index in range(5)] + ["other-name"])

    with pytest.raises(ClientError) as caught:
        client.list_model_customization_jobs(nextToken="not-a-token")
    assert error_code(caught) == "ValidationException"


def test_missing_job_is_resource_not_found(bedrock: BedrockEmulator) -> None:
    with pytest.raises(ClientError) as caught:
        bedrock.client().get_model_customization_job(jobIdentifier="no-such-job")
    assert error_code(caught) == "ResourceNotFoundException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_a_malformed_identifier_is_a_validation_exception(bedrock: BedrockEmulator) -> None:
    with pytest.raises(ClientError) as caught:
        bedrock.client().get_model_customization_job(jobIdentifier="not a name!")
    assert error_code(caught) == "ValidationException"
    assert "jobIdentifier" in caught.value.response["Error"]["Message"]


def test_a_role_of_another_account_is_access_denied(bedrock: BedrockEmulator) -> None:
    uri = bedrock.put_jsonl("role/train.jsonl", conversation_records())
    body = bedrock.job_body("other-role", uri, roleArn="arn:aws:iam::999999999999:role/Elsewhere")
    with pytest.raises(ClientError) as caught:
        bedrock.client().create_model_customization_job(**body)
    assert error_code(caught) == "AccessDeniedException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_same_client_request_token_makes_one_job(bedrock: BedrockEmulator) -> None:
    uri = bedrock.put_jsonl("token/train.jsonl", conversation_records())
    body = bedrock.job_body("tokened", uri, clientRequestToken="run-2024-01-01-task-a")
    client = bedrock.client()
    first = client.create_model_customization_job(**body)["jobArn"]
    again = client.create_model_customization_job(**body)["jobArn"]
    assert again == first
    assert bedrock.server.emulator.counters.jobs_created == 1
    listed = client.list_model_customization_jobs(nameContains="tokened")["modelCustomizationJobSummaries"]
    assert len(listed) == 1
    assert client.get_model_customization_job(jobIdentifier=first)["clientRequestToken"] == "run-2024-01-01-task-a"
    changed = {**body, "hyperParameters": {"epochCount": "3"}}
    with pytest.raises(ClientError) as caught:
        client.create_model_customization_job(**changed)
    assert error_code(caught) == "ConflictException"


def test_concurrent_creates_with_one_token_make_one_job(bedrock: BedrockEmulator) -> None:
    # The data is read from S3 between the checks and the creation: creates racing through it still make one job.
    uri = bedrock.put_jsonl("race/train.jsonl", conversation_records())
    body = bedrock.job_body("raced", uri, clientRequestToken="same-token-raced")
    clients = [bedrock.client(max_pool_connections=1 + index) for index in range(4)]  # one client per thread
    with ThreadPoolExecutor(4) as pool:
        arns = set(pool.map(lambda client: client.create_model_customization_job(**body)["jobArn"], clients))
    assert len(arns) == 1
    assert bedrock.server.emulator.counters.jobs_created == 1


def test_a_job_name_in_use_is_refused_as_aws_does(bedrock: BedrockEmulator) -> None:
    create(bedrock, "taken")
    with pytest.raises(ClientError) as caught:
        create(bedrock, "taken", customModelName="another-model")
    # AWS's answer, which Airflow's BedrockCustomizeModelOperator matches on (its message, exactly).
    assert error_code(caught) == "ValidationException"
    assert caught.value.response["Error"]["Message"] == "The provided job name is currently in use."
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as caught:
        create(bedrock, "not-taken", customModelName="taken-model")
    assert error_code(caught) == "ValidationException"
    assert caught.value.response["Error"]["Message"] == "The provided model name is currently in use."
    assert bedrock.server.emulator.counters.jobs_created == 1


def test_a_model_name_is_held_by_a_job_that_may_make_the_model_and_by_the_model(
    manual: BedrockEmulator, clock: ManualClock
) -> None:
    """A custom model is made only when its job completes; a stopped or failed job makes none and holds no name."""
    client = manual.client()

    def model_name_in_use(job_name: str, model_name: str) -> bool:
        try:
            create(manual, job_name, customModelName=model_name)
        except ClientError as caught:
            refused = caught.response["Error"]["Message"]
        else:
            return False
        assert refused == "The provided model name is currently in use."
        return True

    stopped = create(manual, "held-stopped", customModelName="shared-stopped")
    assert model_name_in_use("held-stopped-2", "shared-stopped")  # in progress: it will make that model
    clock.advance(10.0)
    client.stop_model_customization_job(jobIdentifier=stopped)
    assert model_name_in_use("held-stopped-3", "shared-stopped")  # stopping: not ended yet
    clock.advance(5.0)
    assert client.get_model_customization_job(jobIdentifier=stopped)["status"] == "Stopped"
    assert not model_name_in_use("held-stopped-4", "shared-stopped")  # stopped: no model, the name is free again

    failed = create(manual, "held-failed", ["{not json"], customModelName="shared-failed")
    clock.advance(3.0)
    assert client.get_model_customization_job(jobIdentifier=failed)["status"] == "Failed"
    assert not model_name_in_use("held-failed-2", "shared-failed")

    clock.advance(300.0)  # the jobs made after the stopped and the failed one complete: their models hold the names
    for name in ("shared-stopped", "shared-failed"):
        model = client.get_custom_model(modelIdentifier=name)
        assert model["jobName"] in ("held-stopped-4", "held-failed-2")
        assert model_name_in_use(f"{model['jobName']}-again", name)
    names = [s["modelName"] for s in client.list_custom_models()["modelSummaries"]]
    assert sorted(names) == ["shared-failed", "shared-stopped"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"jobName": "bad name!"}, "jobName"),
        ({"roleArn": "not-a-role"}, "roleArn"),
        ({"outputDataConfig": {"s3Uri": "http://bucket/x"}}, "outputDataConfig.s3Uri"),
        ({"baseModelIdentifier": "amazon.unknown-v1:0"}, "amazon.unknown-v1:0"),
        ({"customizationType": "CONTINUED_PRE_TRAINING"}, "CONTINUED_PRE_TRAINING"),
        ({"customizationType": "DISTILLATION"}, "distillationConfig"),
        ({"hyperParameters": {"epochCount": "9"}}, "epochCount"),
        ({"hyperParameters": {"batchSize": "8"}}, "batchSize"),
    ],
)
def test_a_bad_request_is_a_validation_exception_naming_the_field(
    bedrock: BedrockEmulator, overrides: dict[str, Any], field: str
) -> None:
    uri = bedrock.put_jsonl("bad/train.jsonl", conversation_records())
    with pytest.raises(ClientError) as caught:
        bedrock.client().create_model_customization_job(**bedrock.job_body("bad-request", uri, **overrides))
    assert error_code(caught) == "ValidationException"
    assert field in caught.value.response["Error"]["Message"]
    assert bedrock.server.emulator.counters.jobs_created == 0


@pytest.mark.parametrize(
    ("records", "reason"),
    [
        (["not json at all"], "line 1: not valid JSON"),
        ([*conversation_records(2), {"prompt": "a", "completion": "b"}], "line 3: unexpected key 'completion'"),
        (
            [
                {
                    "schemaVersion": "bedrock-conversation-2024",
                    "messages": [{"role": "user", "content": [{"text": "hi"}]}],
                }
            ],
            "line 1: the last message must be an assistant message",
        ),
    ],
)
def test_bad_training_data_fails_the_job_in_validation(
    manual: BedrockEmulator, clock: ManualClock, records: list[Any], reason: str
) -> None:
    arn = create(manual, "bad-data", records)
    client = manual.client()
    assert client.get_model_customization_job(jobIdentifier=arn)["status"] == "InProgress"
    clock.advance(3.0)
    job = client.get_model_customization_job(jobIdentifier=arn)
    assert job["status"] == "Failed"
    assert job["statusDetails"]["validationDetails"]["status"] == "Failed"
    assert job["statusDetails"]["trainingDetails"]["status"] == "NotStarted"
    assert f"s3://{manual.bucket}/bad-data/train.jsonl: {reason}" in job["failureMessage"]
    assert "outputModelArn" not in job


def test_a_missing_training_object_fails_the_job(manual: BedrockEmulator, clock: ManualClock) -> None:
    uri = f"s3://{manual.bucket}/nowhere/train.jsonl"
    arn = manual.client().create_model_customization_job(**manual.job_body("missing-data", uri))["jobArn"]
    clock.advance(3.0)
    job = manual.client().get_model_customization_job(jobIdentifier=arn)
    assert job["status"] == "Failed"
    assert f"the object {uri} does not exist" in job["failureMessage"]


def test_other_customization_types(manual: BedrockEmulator, clock: ManualClock) -> None:
    client = manual.client()
    cpt_uri = manual.put_jsonl("cpt/train.jsonl", [{"input": f"Plain text number {i}."} for i in range(5)])
    cpt = client.create_model_customization_job(
        **manual.job_body(
            "cpt",
            cpt_uri,
            baseModelIdentifier="amazon.titan-text-express-v1:0:8k",
            customizationType="CONTINUED_PRE_TRAINING",
            hyperParameters={"epochCount": "1", "batchSize": "2"},
        )
    )["jobArn"]
    prompts = [
        {"schemaVersion": "bedrock-conversation-2024", "messages": [{"role": "user", "content": [{"text": f"Q{i}"}]}]}
        for i in range(4)
    ]
    distill = client.create_model_customization_job(
        **manual.job_body(
            "distill",
            manual.put_jsonl("distill/train.jsonl", prompts),
            customizationType="DISTILLATION",
            hyperParameters={},
            customizationConfig={
                "distillationConfig": {"teacherModelConfig": {"teacherModelIdentifier": "amazon.nova-pro-v1:0"}}
            },
        )
    )["jobArn"]
    rft_records = [
        {"messages": [{"role": "user", "content": f"Is {i} even?"}], "reference_answer": {"even": i % 2 == 0}}
        for i in range(4)
    ]
    rft = client.create_model_customization_job(
        **manual.job_body(
            "rft",
            manual.put_jsonl("rft/train.jsonl", rft_records),
            baseModelIdentifier="amazon.nova-2-lite-v1:0:256k",
            customizationType="REINFORCEMENT_FINE_TUNING",
            hyperParameters={},
            customizationConfig={
                "rftConfig": {
                    "graderConfig": {
                        "lambdaGrader": {"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:grade"}
                    },
                    "hyperParameters": {"epochCount": 1, "batchSize": 16},
                }
            },
        )
    )["jobArn"]
    clock.advance(300.0)
    for arn, kind in ((cpt, "CONTINUED_PRE_TRAINING"), (distill, "DISTILLATION"), (rft, "REINFORCEMENT_FINE_TUNING")):
        job = client.get_model_customization_job(jobIdentifier=arn)
        assert (job["status"], job["customizationType"]) == ("Completed", kind), job.get("failureMessage")


def test_jobs_beyond_the_quota_are_refused(make_bedrock: Callable[..., BedrockEmulator], clock: ManualClock) -> None:
    emu = make_bedrock(clock=clock, speed=1.0, bedrock={"max_active_jobs": 1})
    create(emu, "within-quota")
    with pytest.raises(ClientError) as caught:
        create(emu, "beyond-quota")
    assert error_code(caught) == "ServiceQuotaExceededException"
    assert "quota of 1" in caught.value.response["Error"]["Message"]
    clock.advance(300.0)  # the first job has completed: room for another
    assert create(emu, "beyond-quota")


def test_jobs_and_tokens_survive_a_restart(make_bedrock: Callable[..., BedrockEmulator], tmp_path: Path) -> None:
    database = str(tmp_path / "emulator.db")
    first = make_bedrock(db_path=database)
    uri = first.put_jsonl("kept/train.jsonl", conversation_records())
    body = first.job_body("kept", uri, clientRequestToken="kept-token")
    arn = first.client().create_model_customization_job(**body)["jobArn"]
    first.server.stop()

    second = make_bedrock(db_path=database)
    client = second.client()
    assert client.get_model_customization_job(jobIdentifier="kept")["jobArn"] == arn
    assert client.create_model_customization_job(**body)["jobArn"] == arn  # the token is remembered
    with pytest.raises(ClientError) as caught:
        client.create_model_customization_job(**{**body, "clientRequestToken": "another-token"})
    assert caught.value.response["Error"]["Message"] == "The provided job name is currently in use."
