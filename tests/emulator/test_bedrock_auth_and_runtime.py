"""The Bedrock dialect's authentication (SigV4 checked by botocore, bearer API keys), fault injection,
custom models, deployments and Converse, driven by boto3's ``bedrock`` and ``bedrock-runtime`` clients."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from airflow_provider_finetune.emulator import FaultConfig, ManualClock
from tests.bedrock_fixtures import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    BedrockEmulator,
    bedrock,
    conversation_records,
    make_bedrock,
    moto_s3,
)

__all__ = ["bedrock", "make_bedrock", "moto_s3"]  # fixtures, used by name


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = exc.value.response
    return int(response["ResponseMetadata"]["HTTPStatusCode"]), str(response["Error"]["Code"])


def signed(emu: BedrockEmulator, method: str, path: str, body: bytes = b"", **overrides: Any) -> httpx.Response:
    """Send a request signed by botocore's signer (as the provider's backend does), with ``overrides`` to the
    signing inputs: ``secret``, ``region``, ``service``, ``access_key``, and ``tamper`` (bytes sent instead)."""
    url = emu.control_url + path
    request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
    credentials = Credentials(overrides.get("access_key", ACCESS_KEY_ID), overrides.get("secret", SECRET_ACCESS_KEY))
    SigV4Auth(credentials, overrides.get("service", "bedrock"), overrides.get("region", emu.region)).add_auth(request)
    headers = dict(request.headers.items())
    return httpx.request(method, url, headers=headers, content=overrides.get("tamper", body), timeout=10)


# -- authentication --------------------------------------------------------------------------------------


def test_a_signed_request_is_accepted(bedrock: BedrockEmulator) -> None:
    answer = bedrock.client().list_model_customization_jobs()
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert answer["modelCustomizationJobSummaries"] == []


def test_a_wrong_secret_is_an_invalid_signature(bedrock: BedrockEmulator) -> None:
    with pytest.raises(ClientError) as caught:
        bedrock.client(secret="not-the-secret").list_model_customization_jobs()
    assert error_of(caught) == (403, "InvalidSignatureException")


def test_an_unknown_access_key_is_unrecognized(bedrock: BedrockEmulator) -> None:
    client = boto3.session.Session().client(
        "bedrock",
        region_name=bedrock.region,
        endpoint_url=bedrock.control_url,
        aws_access_key_id="AKIAUNKNOWN000000000",
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=Config(retries={"total_max_attempts": 1}),
    )
    with pytest.raises(ClientError) as caught:
        client.list_model_customization_jobs()
    assert error_of(caught) == (403, "UnrecognizedClientException")


def test_a_tampered_body_is_an_invalid_signature(bedrock: BedrockEmulator) -> None:
    good = signed(bedrock, "GET", "/model-customization-jobs")
    assert good.status_code == 200, good.text
    assert good.headers["x-amzn-RequestId"]
    tampered = signed(bedrock, "POST", "/model-customization-jobs", b'{"jobName": "a"}', tamper=b'{"jobName": "b"}')
    assert tampered.status_code == 403
    assert tampered.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
    assert "signature we calculated does not match" in tampered.json()["message"]


@pytest.mark.parametrize(("override", "message"), [({"region": "eu-west-1"}, "region"), ({"service": "s3"}, "service")])
def test_a_credential_scoped_elsewhere_is_refused(
    bedrock: BedrockEmulator, override: dict[str, str], message: str
) -> None:
    answer = signed(bedrock, "GET", "/model-customization-jobs", **override)
    assert answer.status_code == 403
    assert answer.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
    assert message in answer.json()["message"]


def test_a_request_signed_twenty_minutes_ago_has_expired(
    bedrock: BedrockEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import botocore.auth

    now = botocore.auth.get_current_datetime()
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now - datetime.timedelta(minutes=20))
    with pytest.raises(ClientError) as caught:
        bedrock.client().list_model_customization_jobs()
    assert error_of(caught) == (403, "InvalidSignatureException")
    assert "Signature expired" in caught.value.response["Error"]["Message"]


def test_no_authorization_is_a_missing_token(bedrock: BedrockEmulator) -> None:
    answer = httpx.get(bedrock.control_url + "/model-customization-jobs", timeout=10)
    assert answer.status_code == 403
    assert answer.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert answer.json() == {"message": "Missing Authentication Token"}


def test_a_bedrock_api_key_is_accepted_as_bearer(bedrock: BedrockEmulator) -> None:
    # botocore sends a bearer token (AWS_BEARER_TOKEN_BEDROCK) only over HTTPS: the header is sent as it would.
    raw = httpx.get(
        bedrock.control_url + "/model-customization-jobs",
        headers={"Authorization": f"Bearer {bedrock.api_key}"},
        timeout=10,
    )
    assert raw.status_code == 200
    wrong = httpx.get(
        bedrock.control_url + "/model-customization-jobs", headers={"Authorization": "Bearer ABSK-wrong"}, timeout=10
    )
    assert wrong.status_code == 403
    assert wrong.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
    assert "ABSK-wrong" not in wrong.text


@pytest.mark.parametrize(("key", "code"), [(None, None), ("ABSK-wrong", "UnrecognizedClientException")])
def test_boto3_with_a_bearer_key(bedrock: BedrockEmulator, key: str | None, code: str | None) -> None:
    # A boto3 client whose requests carry the API key instead of a signature (botocore's own bearer auth wants
    # HTTPS); its answers are parsed by botocore.
    client = bedrock.client(secret="unused-for-bearer")

    def to_bearer(request: Any, **_: Any) -> None:
        del request.headers["X-Amz-Date"]
        request.headers["Authorization"] = f"Bearer {key or bedrock.api_key}"

    client.meta.events.register("before-send.bedrock.ListModelCustomizationJobs", to_bearer)
    if code is None:
        assert client.list_model_customization_jobs()["modelCustomizationJobSummaries"] == []
        return
    with pytest.raises(ClientError) as caught:
        client.list_model_customization_jobs()
    assert error_of(caught) == (403, code)


# -- faults ----------------------------------------------------------------------------------------------


def test_throttling_is_a_throttling_exception(make_bedrock: Callable[..., BedrockEmulator]) -> None:
    emu = make_bedrock(faults=FaultConfig(rate_limit_rate=1.0, match="/bedrock/"))
    with pytest.raises(ClientError) as caught:
        emu.client().list_model_customization_jobs()
    assert error_of(caught) == (429, "ThrottlingException")
    assert emu.server.emulator.counters.faults["429"] == 1


def test_a_dropped_connection_reaches_boto3_as_a_connection_error(
    make_bedrock: Callable[..., BedrockEmulator],
) -> None:
    emu = make_bedrock(faults=FaultConfig(drop_rate=1.0, match="/bedrock/"))
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        emu.client().list_model_customization_jobs()
    assert emu.server.emulator.counters.faults["drop"] == 1


def test_server_errors_and_lost_create_answers(make_bedrock: Callable[..., BedrockEmulator]) -> None:
    emu = make_bedrock(
        faults=FaultConfig(error_rate=1.0, after_processing=True, match="POST /bedrock/model-customization-jobs$")
    )
    uri = emu.put_jsonl("lost/train.jsonl", conversation_records())
    with pytest.raises(ClientError) as caught:
        emu.client().create_model_customization_job(**emu.job_body("lost-answer", uri))
    status, code = error_of(caught)
    assert (status, code) in (
        (500, "InternalServerException"),
        (502, "InternalServerException"),
        (503, "ServiceUnavailableException"),
    )
    # The job was made although its answer was lost: the name now finds it.
    assert emu.client().get_model_customization_job(jobIdentifier="lost-answer")["status"] == "InProgress"


# -- custom models, deployments, Converse ----------------------------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=time.time())


def test_deployment_creating_active_converse_and_delete(
    make_bedrock: Callable[..., BedrockEmulator], clock: ManualClock
) -> None:
    emu = make_bedrock(clock=clock, speed=1.0)
    client = emu.client()
    records = conversation_records(8)
    body = emu.job_body("deployable", emu.put_jsonl("dep/train.jsonl", records))
    body["validationDataConfig"] = {
        "validators": [{"s3Uri": emu.put_jsonl("dep/valid.jsonl", conversation_records(2, start=20))}]
    }
    job_arn = client.create_model_customization_job(**body)["jobArn"]
    with pytest.raises(ClientError) as caught:
        client.get_custom_model(modelIdentifier="deployable-model")
    assert error_of(caught) == (404, "ResourceNotFoundException")
    clock.advance(300.0)
    job = client.get_model_customization_job(jobIdentifier=job_arn)
    assert job["status"] == "Completed"
    assert job["validationMetrics"][0]["validationLoss"] > 0

    model = client.get_custom_model(modelIdentifier=job["outputModelArn"])
    assert model["modelName"] == "deployable-model"
    assert model["jobArn"] == job_arn
    assert model["modelStatus"] == "Active"
    assert model["trainingMetrics"] == job["trainingMetrics"]
    assert client.get_custom_model(modelIdentifier="deployable-model")["modelArn"] == job["outputModelArn"]
    listed = client.list_custom_models(nameContains="deployable")["modelSummaries"]
    assert [item["modelArn"] for item in listed] == [job["outputModelArn"]]
    assert listed[0]["baseModelName"] == "amazon.nova-micro-v1"

    # Bedrock writes the step-wise metrics to the output location.
    root = f"s3://{emu.bucket}/output/model-customization-job-{job_arn.rsplit('/', 1)[1]}"
    training_csv = emu.read_s3(root + "/training_artifacts/step_wise_training_metrics.csv").decode().splitlines()
    assert training_csv[0] == "step_number,epoch_number,training_loss"
    assert len(training_csv) > 2
    validation_csv = emu.read_s3(
        root + "/validation_artifacts/post_fine_tuning_validation/validation/validation_metrics.csv"
    ).decode()
    assert validation_csv.startswith("step_number,epoch_number,validation_loss,perplexity\n")

    deployment_arn = client.create_custom_model_deployment(
        modelDeploymentName="adder", modelArn=job["outputModelArn"], clientRequestToken="deploy-once"
    )["customModelDeploymentArn"]
    again = client.create_custom_model_deployment(
        modelDeploymentName="adder", modelArn=job["outputModelArn"], clientRequestToken="deploy-once"
    )["customModelDeploymentArn"]
    assert again == deployment_arn
    with pytest.raises(ClientError) as caught:  # the name in use, without the token
        client.create_custom_model_deployment(modelDeploymentName="adder", modelArn=job["outputModelArn"])
    assert error_of(caught) == (400, "ValidationException")
    assert caught.value.response["Error"]["Message"] == "The provided deployment name is currently in use."
    assert deployment_arn.startswith("arn:aws:bedrock:us-east-1:123456789012:custom-model-deployment/")
    deployment = client.get_custom_model_deployment(customModelDeploymentIdentifier=deployment_arn)
    assert deployment["status"] == "Creating"
    runtime = emu.client("bedrock-runtime")
    question = {"role": "user", "content": [{"text": "What is 3 + 3?"}]}
    with pytest.raises(ClientError) as caught:
        runtime.converse(modelId=deployment_arn, messages=[question])
    assert error_of(caught) == (429, "ModelNotReadyException")

    clock.advance(10.0)
    assert client.get_custom_model_deployment(customModelDeploymentIdentifier="adder")["status"] == "Active"
    summaries = client.list_custom_model_deployments(statusEquals="Active")["modelDeploymentSummaries"]
    assert [item["customModelDeploymentArn"] for item in summaries] == [deployment_arn]

    answer = runtime.converse(modelId=deployment_arn, messages=[question], inferenceConfig={"maxTokens": 50})
    assert answer["output"]["message"] == {"role": "assistant", "content": [{"text": "6"}]}
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"]["totalTokens"] == answer["usage"]["inputTokens"] + answer["usage"]["outputTokens"]
    with pytest.raises(ClientError) as caught:
        runtime.converse(modelId=job["outputModelArn"], messages=[question])
    assert error_of(caught) == (400, "ValidationException")

    client.list_custom_model_deployments(nameContains="add", sortOrder="Ascending", maxResults=1)
    client.delete_custom_model_deployment(customModelDeploymentIdentifier=deployment_arn)
    with pytest.raises(ClientError) as caught:
        client.get_custom_model_deployment(customModelDeploymentIdentifier=deployment_arn)
    assert error_of(caught) == (404, "ResourceNotFoundException")
    with pytest.raises(ClientError) as caught:
        runtime.converse(modelId=deployment_arn, messages=[question])
    assert error_of(caught) == (404, "ResourceNotFoundException")
    # Every answer above conformed to botocore's output shapes (the fixture's check).
    assert set(emu.checked) >= {
        "CreateModelCustomizationJob",
        "GetModelCustomizationJob",
        "GetCustomModel",
        "ListCustomModels",
        "CreateCustomModelDeployment",
        "GetCustomModelDeployment",
        "ListCustomModelDeployments",
        "DeleteCustomModelDeployment",
        "Converse",
    }


# -- command line ----------------------------------------------------------------------------------------


def test_the_command_line_sets_the_bedrock_dialect(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_finetune.emulator.__main__ import build_parser, config_from_args

    monkeypatch.setenv("FINETUNE_EMULATOR_AWS_SECRET_ACCESS_KEY", "secret-from-env")
    monkeypatch.setenv("FINETUNE_EMULATOR_BEDROCK_API_KEY", "ABSK-from-env")
    args = build_parser().parse_args(
        [
            "--aws-access-key-id",
            "AKIAFROMFLAG00000000",
            "--aws-region",
            "eu-west-1",
            "--aws-account-id",
            "210987654321",
            "--s3-endpoint-url",
            "http://127.0.0.1:5000",
            "--deployment-seconds",
            "2",
            "--bedrock-max-active-jobs",
            "3",
        ]
    )
    config = config_from_args(args).bedrock
    assert (config.access_key_id, config.secret_access_key, config.api_key) == (
        "AKIAFROMFLAG00000000",
        "secret-from-env",
        "ABSK-from-env",
    )
    assert (config.region, config.account_id, config.s3_endpoint_url, config.deployment_seconds) == (
        "eu-west-1",
        "210987654321",
        "http://127.0.0.1:5000",
        2.0,
    )
    assert config.max_active_jobs == 3
    assert "secret-from-env" not in repr(config)
    assert "ABSK-from-env" not in repr(config)


def test_the_routes_are_the_service_models_operations() -> None:
    import botocore.session

    from airflow_provider_finetune.emulator.dialects.bedrock.dialect import OPERATIONS

    session = botocore.session.get_session()
    for prefix, method, template, operation, _ in OPERATIONS:
        model = session.get_service_model(prefix.strip("/")).operation_model(operation)
        assert (model.http["method"], model.http["requestUri"]) == (method, template), operation
