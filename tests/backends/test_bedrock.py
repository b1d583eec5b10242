"""The Bedrock backend through the hook: every request checked against botocore's ``bedrock`` model and signature.

The fake (:mod:`tests.backends.bedrock_fake`) recomputes each SigV4 signature with botocore and validates each
request against the operation's input shape, and fails the test at teardown on any that breaks it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.backends.bedrock import (
    BEDROCK_STATUSES,
    CUSTOM_MODEL_NAME,
    BedrockBackend,
    canonical_status,
    client_request_token,
    generation_model_name,
    job_from_bedrock,
)
from airflow_provider_finetune.core.client import ConnectionSettings, RetryPolicy, close_shared_async_clients
from airflow_provider_finetune.core.statuses import FineTuningJobStatus
from airflow_provider_finetune.exceptions import (
    BadRequestError,
    ConflictError,
    FineTuningError,
    InvalidRequestError,
    NotFoundError,
    QuotaExceededError,
    RateLimitError,
    UnsupportedCapabilityError,
)
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJob, build_request
from airflow_provider_finetune.rules.once import JobIdentity, client_job_id
from tests.backends.bedrock_fake import (
    ACCESS_KEY,
    API_KEY,
    ENDPOINT,
    ROLE_ARN,
    FakeBedrock,
    aws_error,
    connect_bedrock,
    serve_fake_bedrock,
)
from tests.hook_doors import async_call, sync_call

MODEL = "amazon.nova-lite-v1:0:300k"
TRAIN = "s3://training-bucket/data/train.jsonl"
VALID = "s3://training-bucket/data/valid.jsonl"
OPTIONS: dict[str, Any] = {
    "role_arn": ROLE_ARN,
    "output_s3_uri": "s3://training-bucket/output/",
    "hyperparameters": {"epochCount": 2, "learningRate": 0.00001, "learningRateWarmupSteps": 10},
    "job_tags": {"team": "ml"},
    "model_tags": {"stage": "candidate"},
    "vpc": {"subnet_ids": ["subnet-0abc"], "security_group_ids": ["sg-0abc"]},
    "kms_key_id": "alias/bedrock-models",
}
TAG = "ti-bedrock-test"


@pytest.fixture
def fake_bedrock() -> Iterator[FakeBedrock]:
    with serve_fake_bedrock() as fake:
        yield fake


def _policy() -> RetryPolicy:
    return RetryPolicy(initial_delay=0, max_delay=0, jitter=0)


def connect(monkeypatch: pytest.MonkeyPatch, *, key: bool = False, token: str | None = None) -> FineTuningHook:
    hook: FineTuningHook = connect_bedrock(monkeypatch, key=key, token=token)
    return hook


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> FineTuningHook:
    return connect(monkeypatch)


def ensure(hook: FineTuningHook, **changes: Any) -> tuple[FineTuningJob, bool]:
    request = {"model": MODEL, "training_file": TRAIN, "validation_file": VALID}
    return hook.ensure_job(request, identity=JobIdentity(TAG), service_options={**OPTIONS, **changes})


# -- create, once-only by the job's name and token ---------------------------------------------------------


def test_create_sends_the_bedrock_request_named_by_the_task_instance(
    hook: FineTuningHook, fake_bedrock: FakeBedrock
) -> None:
    job, created = ensure(hook)
    assert created
    assert fake_bedrock.operations == ["GetModelCustomizationJob", "CreateModelCustomizationJob"]
    (body,) = fake_bedrock.bodies("CreateModelCustomizationJob")
    name = body["jobName"]
    assert name.startswith("ft-")
    assert name.endswith("-0")
    assert body["clientRequestToken"] == client_request_token(name)
    assert body["customModelName"] == name
    assert body["baseModelIdentifier"] == MODEL
    assert body["trainingDataConfig"] == {"s3Uri": TRAIN}
    assert body["validationDataConfig"] == {"validators": [{"s3Uri": VALID}]}
    assert body["hyperParameters"] == {"epochCount": "2", "learningRate": "0.00001", "learningRateWarmupSteps": "10"}
    assert body["jobTags"] == [{"key": "team", "value": "ml"}]
    assert body["customModelTags"] == [{"key": "stage", "value": "candidate"}]
    assert body["vpcConfig"] == {"subnetIds": ["subnet-0abc"], "securityGroupIds": ["sg-0abc"]}
    assert body["customModelKmsKeyId"] == "alias/bedrock-models"
    assert job.id == next(iter(fake_bedrock.jobs))
    assert job.model_extra
    assert job.model_extra["client_job_id"] == name


def test_a_retry_reattaches_to_the_job_by_its_name(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    first, _ = ensure(hook)
    again, created = ensure(hook)
    assert not created
    assert again.id == first.id
    assert fake_bedrock.creates_made == 1
    assert fake_bedrock.operations[-2:] == ["GetModelCustomizationJob", "GetModelCustomizationJob"]


def test_a_lost_create_answer_is_resolved_by_the_name(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    def made_but_lost(request: httpx.Request) -> httpx.Response:
        fake_bedrock._create_model_customization_job(json.loads(request.content))
        raise httpx.ReadTimeout("answer lost", request=request)

    fake_bedrock.fault("CreateModelCustomizationJob", made_but_lost)
    job, created = ensure(hook)
    assert not created
    assert fake_bedrock.creates_made == 1
    assert len(fake_bedrock.jobs) == 1
    assert job.id == next(iter(fake_bedrock.jobs))


def test_a_5xx_on_create_looks_the_name_up_before_sending_again(
    hook: FineTuningHook, fake_bedrock: FakeBedrock
) -> None:
    fake_bedrock.fault("CreateModelCustomizationJob", lambda r: aws_error(500, "InternalServerException", "oops"))
    _, created = ensure(hook)
    assert created
    assert fake_bedrock.operations == [
        "GetModelCustomizationJob",
        "CreateModelCustomizationJob",
        "GetModelCustomizationJob",
        "CreateModelCustomizationJob",
    ]
    assert fake_bedrock.creates_made == 1
    tokens = {b["clientRequestToken"] for b in fake_bedrock.bodies("CreateModelCustomizationJob")}
    assert len(tokens) == 1  # the same token both times: Bedrock itself would not make a second job


def test_throttling_on_create_is_retried_with_the_same_token(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    fake_bedrock.fault("CreateModelCustomizationJob", lambda r: aws_error(429, "ThrottlingException", "Rate exceeded"))
    _, created = ensure(hook)
    assert created
    assert fake_bedrock.creates_made == 1
    assert fake_bedrock.operations.count("CreateModelCustomizationJob") == 2


def test_a_name_in_use_is_found_and_reattached_never_suffixed(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    first, _ = ensure(hook)
    lag = lambda r: aws_error(404, "ResourceNotFoundException", "lag")  # noqa: E731
    # The lookup misses the job (a read that lags): the same name and token make Bedrock answer the same job.
    fake_bedrock.fault("GetModelCustomizationJob", lag)
    again, _ = ensure(hook)
    assert again.id == first.id
    assert len(fake_bedrock.jobs) == 1
    # ... and once the token is forgotten, the name in use meets Bedrock's "The provided job name is currently in
    # use." (a ValidationException, 400): a conflict, looked up by the name and reattached to.
    fake_bedrock.tokens.clear()
    fake_bedrock.fault("GetModelCustomizationJob", lag)
    again, created = ensure(hook)
    assert not created
    assert again.id == first.id
    assert len(fake_bedrock.jobs) == 1
    names = {b["jobName"] for b in fake_bedrock.bodies("CreateModelCustomizationJob")}
    assert len(names) == 1  # never a timestamp suffix
    assert again.model_extra
    assert again.model_extra["client_job_id"] in names


def test_after_a_failed_job_the_next_generation_has_a_new_name(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    first, _ = ensure(hook)
    fake_bedrock.advance(first.id, "Failed", failureMessage="bad data")
    second, created = ensure(hook)
    assert created
    assert second.id != first.id
    names = [b["jobName"] for b in fake_bedrock.bodies("CreateModelCustomizationJob")]
    assert [n[-2:] for n in names] == ["-0", "-1"]


@pytest.mark.parametrize("ending", ["Failed", "Stopped"])
def test_after_a_failed_or_stopped_job_a_given_model_name_gets_the_generation(
    ending: str, hook: FineTuningHook, fake_bedrock: FakeBedrock
) -> None:
    first, _ = ensure(hook, custom_model_name="support-model")
    fake_bedrock.advance(first.id, ending)
    second, created = ensure(hook, custom_model_name="support-model")
    assert created
    fake_bedrock.advance(second.id, ending)
    third, created = ensure(hook, custom_model_name="support-model")
    assert created
    assert len({first.id, second.id, third.id}) == 3
    bodies = fake_bedrock.bodies("CreateModelCustomizationJob")
    assert [b["customModelName"] for b in bodies] == ["support-model", "support-model-1", "support-model-2"]
    assert [b["jobName"][-2:] for b in bodies] == ["-0", "-1", "-2"]
    read = hook.get_job(third.id)
    assert read.model_extra
    assert read.model_extra["output_model_name"] == "support-model-2"


@pytest.mark.parametrize(
    ("given", "generation", "expected"),
    [
        ("support-model", 0, "support-model"),
        ("support-model", 1, "support-model-1"),
        ("support_model_", 3, "support_model-3"),
        ("m" * 63, 0, "m" * 63),
        ("m" * 63, 12, "m" * 60 + "-12"),
        ("m" * 59 + "-a-b", 7, "m" * 59 + "-a-7"),
        ("m" * 60 + "_ab", 49, "m" * 60 + "-49"),
    ],
)
def test_the_model_name_of_a_generation_stays_the_users_within_bedrocks_rules(
    given: str, generation: int, expected: str
) -> None:
    assert CUSTOM_MODEL_NAME.fullmatch(given)
    made = generation_model_name(given, generation)
    assert made == expected
    assert len(made) <= 63
    assert CUSTOM_MODEL_NAME.fullmatch(made)


def test_a_job_whose_own_name_is_not_ours_is_never_adopted(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    ensure(hook)
    (arn,) = fake_bedrock.jobs
    fake_bedrock.jobs[arn]["jobName"] = "someone-elses-job"
    fake_bedrock.fault(
        "GetModelCustomizationJob",
        lambda r: httpx.Response(200, json={**fake_bedrock.jobs[arn]}),
    )
    with pytest.raises(FineTuningError, match="not adopted"):
        ensure(hook)


# -- reading jobs --------------------------------------------------------------------------------------------


def test_a_completed_job_reads_as_succeeded_with_its_model_and_metrics(
    hook: FineTuningHook, fake_bedrock: FakeBedrock
) -> None:
    job, _ = ensure(hook)
    fake_bedrock.advance(job.id, "Completed")
    done = hook.get_job(job.id)
    assert done.status is FineTuningJobStatus.SUCCEEDED
    assert done.fine_tuned_model == fake_bedrock.jobs[job.id]["outputModelArn"]
    assert done.model_extra is not None
    assert done.model_extra["training_metrics"] == {"trainingLoss": 0.25}
    assert done.model_extra["validation_metrics"] == [{"validationLoss": 0.3}]
    assert done.training_file == TRAIN
    assert done.validation_file == VALID


def test_a_failed_job_carries_its_failure_message(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    job, _ = ensure(hook)
    fake_bedrock.advance(job.id, "Failed", failureMessage="Training data line 3 is not valid JSON")
    failed = hook.get_job(job.id)
    assert failed.status is FineTuningJobStatus.FAILED
    assert failed.error is not None
    assert failed.error.message == "Training data line 3 is not valid JSON"


@pytest.mark.parametrize(
    ("status", "details", "expected"),
    [
        ("InProgress", {"validationDetails": {"status": "InProgress"}}, "validating_files"),
        (
            "InProgress",
            {"validationDetails": {"status": "Completed"}, "dataProcessingDetails": {"status": "InProgress"}},
            "validating_files",
        ),
        (
            "InProgress",
            {
                "validationDetails": {"status": "Completed"},
                "dataProcessingDetails": {"status": "Completed"},
                "trainingDetails": {"status": "NotStarted"},
            },
            "queued",
        ),
        ("InProgress", {"trainingDetails": {"status": "InProgress"}}, "running"),
        ("InProgress", None, "running"),
        ("Completed", None, "succeeded"),
        ("Failed", None, "failed"),
        ("Stopping", None, "cancelling"),
        ("Stopped", None, "cancelled"),
        ("Paused", None, "Paused"),
    ],
)
def test_statuses_and_status_details_map_onto_the_canonical_statuses(status: str, details: Any, expected: str) -> None:
    assert canonical_status(status, details) == expected
    parsed = FineTuningJobStatus(expected)
    assert parsed.is_terminal() == (expected in ("succeeded", "failed", "cancelled"))


def test_every_bedrock_status_is_mapped() -> None:
    shape = __import__("tests.backends.bedrock_fake", fromlist=["service_model"]).service_model()
    assert set(BEDROCK_STATUSES) == set(shape.shape_for("ModelCustomizationJobStatus").enum)


def test_list_pages_by_next_token_newest_first(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    for n in range(3):
        fake_bedrock._create_model_customization_job(
            {
                "jobName": f"job-{n}",
                "customModelName": f"model-{n}",
                "roleArn": ROLE_ARN,
                "trainingDataConfig": {"s3Uri": TRAIN},
                "outputDataConfig": {"s3Uri": "s3://training-bucket/out/"},
            }
        )
    jobs = list(hook.iter_jobs(limit=2))
    assert len(jobs) == 3
    params = [dict(r.url.params) for r in fake_bedrock.requests]
    assert params[0] == {"maxResults": "2", "sortBy": "CreationTime", "sortOrder": "Descending"}
    assert params[1]["nextToken"] == "2"
    states = sync_call(hook, "list_job_states", limit=10)
    assert {s.id for s in states.data} == set(fake_bedrock.jobs)


def test_cancel_stops_the_job(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    job, _ = ensure(hook)
    stopped = hook.cancel_job(job.id)
    assert stopped.status is FineTuningJobStatus.CANCELLING
    assert fake_bedrock.operations[-1] == "StopModelCustomizationJob"
    assert hook.get_job(job.id).status is FineTuningJobStatus.CANCELLING


# -- errors --------------------------------------------------------------------------------------------------


def test_validation_exception_names_the_field(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    fake_bedrock.fault(
        "GetModelCustomizationJob",
        lambda r: aws_error(
            400, "ValidationException", "1 validation error detected: Value 'x' at 'jobIdentifier' failed"
        ),
    )
    with pytest.raises(BadRequestError) as err:
        hook.get_job("some-job")
    assert err.value.param == "jobIdentifier"
    assert err.value.code == "ValidationException"


def test_service_quota_is_its_own_error_and_not_retried(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    fake_bedrock.fault(
        "CreateModelCustomizationJob",
        lambda r: aws_error(400, "ServiceQuotaExceededException", "Too many jobs in progress"),
    )
    with pytest.raises(QuotaExceededError, match="Too many jobs"):
        ensure(hook)
    assert fake_bedrock.operations.count("CreateModelCustomizationJob") == 1
    assert fake_bedrock.creates_made == 0


def test_throttling_is_a_rate_limit_and_retried(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    job, _ = ensure(hook)
    fake_bedrock.fault(
        "GetModelCustomizationJob", *[lambda r: aws_error(429, "ThrottlingException", "Rate exceeded")] * 2
    )
    assert hook.get_job(job.id).id == job.id
    fake_bedrock.fault(
        "GetModelCustomizationJob", *[lambda r: aws_error(429, "ThrottlingException", "Rate exceeded")] * 9
    )
    with pytest.raises(RateLimitError):
        hook.get_job(job.id)


def test_an_unknown_job_is_not_found(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    with pytest.raises(NotFoundError):
        hook.get_job("no-such-job")


# -- refused before any request ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "field", "use"),
    [
        ({"suffix": "weekly"}, "suffix", "service_options.custom_model_name"),
        ({"seed": 3}, "seed", "no seed"),
        ({"metadata": {"a": "b"}}, "metadata", "service_options.job_tags"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}},
            "method.supervised.hyperparameters",
            "service_options.hyperparameters",
        ),
        ({"method": {"type": "dpo"}}, "method.type", "customization_type"),
        (
            {
                "method": {
                    "type": "reinforcement",
                    "reinforcement": {
                        "grader": {
                            "type": "string_check",
                            "name": "g",
                            "input": "{{sample.output_text}}",
                            "reference": "x",
                            "operation": "eq",
                        }
                    },
                }
            },
            "method.type",
            "lambda_grader_arn",
        ),
        ({"training_file": "file-abc"}, "training_file", "s3://"),
    ],
)
def test_openai_options_that_mean_something_else_are_refused_naming_the_bedrock_option(
    hook: FineTuningHook, fake_bedrock: FakeBedrock, request_fields: dict[str, Any], field: str, use: str
) -> None:
    request = {"model": MODEL, "training_file": TRAIN, **request_fields}
    with pytest.raises(InvalidRequestError) as err:
        hook.ensure_job(request, identity=JobIdentity(TAG), service_options=OPTIONS)
    assert err.value.field == field
    assert use in str(err.value)
    assert fake_bedrock.requests == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"role_arn": "not-a-role"}, "service_options.role_arn"),
        ({"output_s3_uri": "https://bucket/x"}, "service_options.output_s3_uri"),
        ({"customization_type": "IMPORTED"}, "service_options.customization_type"),
        ({"learning_rate": 1}, "service_options.learning_rate"),
        ({"hyperparameters": {"epochCount": 6}}, "service_options.hyperparameters.epochCount"),
        ({"hyperparameters": {"batchSize": 8}}, "service_options.hyperparameters.batchSize"),
        ({"hyperparameters": {"learningRate": "fast"}}, "service_options.hyperparameters.learningRate"),
        ({"job_tags": {"bad!key": "v"}}, "service_options.job_tags"),
        ({"vpc": {"subnet_ids": [], "security_group_ids": ["sg-1"]}}, "service_options.vpc.subnet_ids"),
        ({"customization_type": "DISTILLATION"}, "service_options.teacher_model"),
        ({"customization_type": "REINFORCEMENT_FINE_TUNING"}, "service_options.lambda_grader_arn"),
        ({"teacher_model": "amazon.nova-pro-v1:0"}, "service_options.teacher_model"),
        ({"custom_model_name": "a" * 64}, "service_options.custom_model_name"),
    ],
)
def test_unknown_or_out_of_range_options_are_refused_naming_the_field(
    hook: FineTuningHook, fake_bedrock: FakeBedrock, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as err:
        ensure(hook, **changes)
    assert err.value.field == field, str(err.value)
    assert field in str(err.value)
    assert fake_bedrock.requests == []


def test_options_are_required(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    with pytest.raises(InvalidRequestError, match="role_arn and output_s3_uri"):
        hook.ensure_job({"model": MODEL, "training_file": TRAIN}, identity=JobIdentity(TAG))
    assert fake_bedrock.requests == []


def test_distillation_and_reinforcement_fine_tuning_requests(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    hook.ensure_job(
        {"model": "amazon.nova-micro-v1:0:128k", "training_file": TRAIN},
        identity=JobIdentity("ti-distil"),
        service_options={
            "role_arn": ROLE_ARN,
            "output_s3_uri": "s3://training-bucket/out/",
            "customization_type": "DISTILLATION",
            "teacher_model": "amazon.nova-pro-v1:0",
            "max_response_length_for_inference": 1000,
        },
    )
    lambda_arn = "arn:aws:lambda:us-east-1:123456789012:function:grade-answers"
    hook.ensure_job(
        {"model": "amazon.nova-lite-v1:0:300k", "training_file": TRAIN},
        identity=JobIdentity("ti-rft"),
        service_options={
            "role_arn": ROLE_ARN,
            "output_s3_uri": "s3://training-bucket/out/",
            "customization_type": "REINFORCEMENT_FINE_TUNING",
            "lambda_grader_arn": lambda_arn,
            "reasoning_effort": "medium",
            "hyperparameters": {"epochCount": 2, "batchSize": 64, "learningRate": 0.0001, "trainingSamplePerPrompt": 4},
        },
    )
    distil, rft = fake_bedrock.bodies("CreateModelCustomizationJob")
    assert distil["customizationConfig"] == {
        "distillationConfig": {
            "teacherModelConfig": {
                "teacherModelIdentifier": "amazon.nova-pro-v1:0",
                "maxResponseLengthForInference": 1000,
            }
        }
    }
    assert rft["customizationConfig"]["rftConfig"] == {
        "graderConfig": {"lambdaGrader": {"lambdaArn": lambda_arn}},
        "hyperParameters": {
            "epochCount": 2,
            "batchSize": 64,
            "learningRate": 0.0001,
            "trainingSamplePerPrompt": 4,
            "reasoningEffort": "medium",
        },
    }
    assert "hyperParameters" not in rft


def test_what_bedrock_lacks_is_refused_before_any_request(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    for call in (
        lambda: hook.pause_job("job"),
        lambda: hook.resume_job("job"),
        lambda: hook.list_events("job"),
        lambda: sync_call(hook, "list_checkpoints", "job"),
        lambda: sync_call(hook, "list_checkpoint_permissions", "ckpt"),
        lambda: hook.validate_grader({"type": "string_check"}),
        lambda: sync_call(hook, "create_upload", "a.jsonl", 10),
        lambda: hook.find_job_by_tag(TAG),
    ):
        with pytest.raises(UnsupportedCapabilityError):
            call()
    with pytest.raises(InvalidRequestError, match="no files API"):
        hook.upload_file(b'{"a": 1}\n')
    assert fake_bedrock.requests == []
    assert hook.backend.file_reference == "s3_uri"


# -- credentials ---------------------------------------------------------------------------------------------


def test_a_bedrock_api_key_is_sent_as_a_bearer_token(
    monkeypatch: pytest.MonkeyPatch, fake_bedrock: FakeBedrock
) -> None:
    fake_bedrock.auth = "key"
    hook = connect(monkeypatch, key=True)
    job, _ = ensure(hook)
    assert hook.get_job(job.id).id == job.id
    assert API_KEY not in repr(hook.backend.settings)


def test_assumed_role_credentials_sign_with_their_session_token(
    monkeypatch: pytest.MonkeyPatch, fake_bedrock: FakeBedrock
) -> None:
    fake_bedrock.session_token = "FwoGZXIvYXdzEXAMPLEsessiontoken"
    hook = connect(monkeypatch, token=fake_bedrock.session_token)
    ensure(hook)
    assert all(r.headers["x-amz-security-token"] == fake_bedrock.session_token for r in fake_bedrock.requests)


def test_a_wrong_secret_is_refused_by_the_signature_check(
    monkeypatch: pytest.MonkeyPatch, fake_bedrock: FakeBedrock
) -> None:
    hook = connect(monkeypatch)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_BEDROCK_TEST",
        json.dumps({"conn_type": "aws", "login": ACCESS_KEY, "password": "wrong-secret", "extra": {}}),
    )
    with pytest.raises(FineTuningError):
        hook.get_job("job")
    assert fake_bedrock.problems == ["the signature does not match"]
    fake_bedrock.problems.clear()


def test_without_the_amazon_provider_one_line_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "airflow.providers.amazon.aws.hooks.base_aws", None)
    hook = connect(monkeypatch)
    with pytest.raises(InvalidRequestError, match=r"pip install 'airflow-provider-finetune\[amazon\]'"):
        hook.get_job("job")


def test_a_connection_without_host_needs_a_region() -> None:
    from airflow.models import Connection

    from airflow_provider_finetune.hooks.connection import settings_from_connection

    conn = Connection(conn_id="x", conn_type="finetune", extra=json.dumps({"service": "bedrock"}))
    with pytest.raises(InvalidRequestError, match="region_name"):
        settings_from_connection(conn)
    conn = Connection(
        conn_id="x", conn_type="finetune", extra=json.dumps({"service": "bedrock", "region_name": "eu-west-1"})
    )
    settings = settings_from_connection(conn)
    assert settings.base_url == "https://bedrock.eu-west-1.amazonaws.com"
    assert BedrockBackend(settings).region == "eu-west-1"
    assert BedrockBackend(settings).auth_kind == "sigv4"


def test_async_lifecycle_signs_without_blocking_the_loop(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    async def lifecycle() -> tuple[FineTuningJob, FineTuningJob, set[str]]:
        loop_thread = threading.get_ident()
        threads: set[str] = set()
        job, _ = await async_call(
            hook,
            "ensure_job",
            {"model": MODEL, "training_file": TRAIN},
            identity=JobIdentity(TAG),
            service_options=OPTIONS,
        )
        read = await hook.aget_job(job.id)
        stopped = await hook.acancel_job(job.id)
        credentials = hook.backend.auth().credentials  # type: ignore[union-attr]
        threads.add("loop" if threading.get_ident() == loop_thread else "other")
        assert credentials is not None
        await close_shared_async_clients()
        return read, stopped, threads

    read, stopped, _ = asyncio.run(lifecycle())
    assert read.status is FineTuningJobStatus.VALIDATING_FILES
    assert stopped.status is FineTuningJobStatus.CANCELLING
    assert fake_bedrock.operations[-1] == "StopModelCustomizationJob"


def test_async_credentials_load_and_refresh_in_a_thread() -> None:
    from airflow_provider_finetune.backends.aws import AwsCredentials

    seen: list[int] = []

    class Refreshable:
        def __init__(self) -> None:
            self.due = True

        def refresh_needed(self) -> bool:
            return self.due

        def get_frozen_credentials(self) -> Any:
            seen.append(threading.get_ident())
            return type("Frozen", (), {"access_key": "AK", "secret_key": "SK", "token": "T"})()

    source = AwsCredentials("aws_x", "us-east-1")
    source._credentials = Refreshable()

    async def read() -> int:
        await source.afrozen()
        source._credentials.due = False
        await source.afrozen()
        return threading.get_ident()

    loop_thread = asyncio.run(read())
    assert seen[0] != loop_thread  # the refresh ran in a thread
    assert seen[1] == loop_thread  # fresh credentials are read on the loop, with no I/O


def test_job_from_bedrock_keeps_the_name_as_the_ownership_proof() -> None:
    job = FineTuningJob.model_validate(
        job_from_bedrock(
            {
                "jobArn": "arn:aws:bedrock:us-east-1:123456789012:model-customization-job/x.y/abcdefabcdef",
                "jobName": "ft-1",
                "status": "InProgress",
                "creationTime": "2026-12-01T02:00:00Z",
            }
        )
    )
    assert job.model_extra is not None
    assert job.model_extra["client_job_id"] == "ft-1"
    assert job.created_at == 1796090400


def test_the_job_name_is_the_house_client_id() -> None:
    settings = ConnectionSettings(base_url=ENDPOINT, service="bedrock", region_name="us-east-1")
    name = BedrockBackend(settings).client_job_id("ti-x", "rq-1", 0)
    assert name == client_job_id("ti-x", "rq-1", 0)


def test_a_name_in_use_is_a_conflict_and_other_validation_errors_are_not(
    hook: FineTuningHook, fake_bedrock: FakeBedrock
) -> None:
    in_use = aws_error(400, "ValidationException", "The provided job name is currently in use.")
    fake_bedrock.fault(
        "GetModelCustomizationJob", lambda r: in_use, lambda r: aws_error(400, "ValidationException", "x")
    )
    with pytest.raises(ConflictError):
        hook.get_job("job-x")
    with pytest.raises(BadRequestError) as err:
        hook.get_job("job-x")
    assert not isinstance(err.value, ConflictError)


def test_conflict_exception_is_a_conflict_error(hook: FineTuningHook, fake_bedrock: FakeBedrock) -> None:
    fake_bedrock.fault("StopModelCustomizationJob", lambda r: aws_error(400, "ConflictException", "busy"))
    with pytest.raises(ConflictError):
        hook.cancel_job("job-x")


def test_every_call_of_the_backend_is_a_bedrock_operation_and_conforms(hook: FineTuningHook) -> None:
    """Each call the backend can build reaches one operation of botocore's model, with a request that conforms."""
    from tests.backends.bedrock_fake import request_problems

    backend = hook.backend
    assert isinstance(backend, BedrockBackend)
    request = build_request(
        CreateFineTuningJobRequest, {"model": MODEL, "training_file": TRAIN, "validation_file": VALID}
    )
    body = backend.job_body(request, OPTIONS)
    arn = "arn:aws:bedrock:us-east-1:123456789012:model-customization-job/amazon.nova-lite-v1:0:300k/abcdefabcdef"
    model_arn = "arn:aws:bedrock:us-east-1:123456789012:custom-model/amazon.nova-lite-v1:0:300k/abcdefabcdef"
    calls = {
        "CreateModelCustomizationJob": backend.create_prepared_job(body, job_id="ft-abc-0"),
        "GetModelCustomizationJob": backend.job_call("GET", arn),
        "ListModelCustomizationJobs": backend.list_jobs("token-2", 50, None),
        "StopModelCustomizationJob": backend.job_call("POST", "ft-abc-0", "cancel"),
        "CreateCustomModelDeployment": backend.create_deployment("weekly", model_arn, tags={"team": "ml"}),
        "GetCustomModelDeployment": backend.get_deployment("weekly"),
        "DeleteCustomModelDeployment": backend.delete_deployment("weekly"),
    }
    with httpx.Client(base_url=ENDPOINT + "/") as client:
        for operation, call in calls.items():
            reached, problems, _ = request_problems(call.build(client))
            assert reached == operation
            assert problems == [], problems
    assert not calls["CreateModelCustomizationJob"].idempotent
    assert not calls["CreateCustomModelDeployment"].idempotent


def test_the_validator_refuses_what_botocore_refuses() -> None:
    from tests.backends.bedrock_fake import service_model, validate_against_shape

    shape = service_model().operation_model("CreateModelCustomizationJob").input_shape
    problems = validate_against_shape(
        shape,
        {
            "jobName": "bad name!",
            "roleArn": ROLE_ARN,
            "baseModelIdentifier": MODEL,
            "trainingDataConfig": {"s3Uri": TRAIN},
            "outputDataConfig": {"s3Uri": "s3://b/"},
            "hyperParameters": {"epochCount": 2},
            "customizationType": "DPO",
            "nope": 1,
        },
    )
    text = "\n".join(problems)
    assert "customModelName: required member missing" in text
    assert "jobName: 'bad name!' does not match" in text
    assert "hyperParameters.epochCount: expected a string" in text
    assert "customizationType: 'DPO' is not one of" in text
    assert "outputDataConfig.s3Uri: 's3://b/' does not match" in text
    assert "nope: not a member" in text
