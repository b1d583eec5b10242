"""Bedrock's OpenAI-compatible endpoint ("Mantle", the ``bedrock-mantle`` preset): its key, SigV4, its capabilities."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from airflow_provider_finetune.core.client import RetryPolicy
from airflow_provider_finetune.exceptions import InvalidRequestError, UnsupportedCapabilityError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from tests.backends.bedrock_fake import ACCESS_KEY, API_KEY, REGION, SECRET_KEY, signature_problem
from tests.hook_doors import sync_call

MANTLE = f"https://bedrock-mantle.{REGION}.api.aws/v1"
JOB = {
    "object": "fine_tuning.job",
    "id": "ftjob-mantle-1",
    "model": "openai.gpt-oss-20b",
    "created_at": 1796090400,
    "status": "queued",
    "training_file": "file-1",
}


@pytest.fixture
def mantle() -> Iterator[list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST" and request.url.path.endswith("/fine_tuning/jobs"):
            return httpx.Response(200, json={**JOB, **json.loads(request.content)})
        return httpx.Response(200, json=JOB)

    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        router.route(url__startswith=MANTLE).mock(side_effect=answer)
        yield seen


def connect(monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], password: str | None = None) -> FineTuningHook:
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_MANTLE",
        json.dumps({"conn_type": "aws", "login": ACCESS_KEY, "password": SECRET_KEY, "extra": {}}),
    )
    conn: dict[str, Any] = {
        "conn_type": "finetune",
        "host": MANTLE,
        "extra": {"service": "openai-compatible", "preset": "bedrock-mantle", **extra},
    }
    if password:
        conn["password"] = password
    monkeypatch.setenv("AIRFLOW_CONN_FT_MANTLE", json.dumps(conn))
    return FineTuningHook("ft_mantle", retry_policy=RetryPolicy(initial_delay=0, max_delay=0, jitter=0))


def test_mantle_with_a_bedrock_api_key(monkeypatch: pytest.MonkeyPatch, mantle: list[httpx.Request]) -> None:
    hook = connect(monkeypatch, {}, password=API_KEY)
    job = hook.create_job({"model": "openai.gpt-oss-20b", "training_file": "file-1"})
    assert job.id == "ftjob-mantle-1"
    assert mantle[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_mantle_signed_with_sigv4_by_the_same_signer(
    monkeypatch: pytest.MonkeyPatch, mantle: list[httpx.Request]
) -> None:
    hook = connect(monkeypatch, {"auth": "sigv4", "aws_conn_id": "aws_mantle"})
    hook.create_job({"model": "openai.gpt-oss-20b", "training_file": "file-1"})
    hook.get_job("ftjob-mantle-1")
    assert [signature_problem(r) for r in mantle] == [None, None]  # region from the host, service "bedrock"


def test_mantle_capabilities_refuse_before_any_request(
    monkeypatch: pytest.MonkeyPatch, mantle: list[httpx.Request]
) -> None:
    hook = connect(monkeypatch, {}, password=API_KEY)
    with pytest.raises(UnsupportedCapabilityError):
        hook.create_job({"model": "openai.gpt-oss-20b", "training_file": "file-1", "suffix": "weekly"})
    for call in (
        lambda: hook.pause_job("ftjob-1"),
        lambda: hook.resume_job("ftjob-1"),
        lambda: hook.validate_grader({"type": "string_check"}),
        lambda: sync_call(hook, "list_checkpoint_permissions", "ckpt"),
    ):
        with pytest.raises(UnsupportedCapabilityError):
            call()
    assert mantle == []


def test_sigv4_is_only_for_bedrock_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FT_NOT_MANTLE",
        json.dumps({"conn_type": "finetune", "host": "https://gateway/v1", "extra": {"auth": "sigv4"}}),
    )
    with pytest.raises(InvalidRequestError, match="sigv4"):
        FineTuningHook("ft_not_mantle").settings  # noqa: B018
