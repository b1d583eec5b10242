from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from airflow_provider_finetune.core.client import RetryPolicy
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from tests.conformance import validate_request

BASE_URL = "https://api.test/v1"
SECRET = "sk-test-hook-5ecret-abcdef0123"

Reply = httpx.Response | Exception | dict[str, Any] | list[Any]


class FakeAPI:
    """Scripted answers at the HTTP transport; every request is checked against the published spec."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.router = router
        self.requests: list[httpx.Request] = []
        self.operations: list[str] = []

    def on(self, method: str, path: str, *replies: Reply) -> respx.Route:
        """Answer ``method path`` with ``replies`` in turn (the last one repeats)."""
        script = list(replies)

        def answer(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            self.operations.append(validate_request(request, extra_query_params=("api-version",)))
            reply = script.pop(0) if len(script) > 1 else script[0]
            if isinstance(reply, Exception):
                raise reply
            if isinstance(reply, httpx.Response):
                return reply
            return httpx.Response(200, json=reply)

        return self.router.route(method=method, url__regex=rf"^{BASE_URL}/{path}(\?.*)?$").mock(side_effect=answer)

    def sent(self, method: str | None = None) -> list[httpx.Request]:
        return [r for r in self.requests if method is None or r.method == method]


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    conn = {
        "conn_type": "finetune",
        "host": BASE_URL,
        "password": SECRET,
        "extra": {"organization": "org-1", "project": "proj-1", "max_retries": 3},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
    return conn


@pytest.fixture
def hook(connection: dict[str, Any]) -> Iterator[FineTuningHook]:
    hook = FineTuningHook(retry_policy=RetryPolicy(initial_delay=0.0, max_delay=0.0, jitter=0.0))
    yield hook
    hook.close()


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        yield FakeAPI(router)


def job(job_id: str = "ftjob-1", status: str = "queued", **fields: Any) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job",
        "id": job_id,
        "model": "gpt-4o-mini-2024-07-18",
        "created_at": 1721764800,
        "finished_at": None,
        "fine_tuned_model": None,
        "organization_id": "org-1",
        "result_files": [],
        "status": status,
        "validation_file": None,
        "training_file": "file-abc",
        "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
        "trained_tokens": None,
        "error": None,
        "seed": 42,
        "metadata": None,
        **fields,
    }


def page(items: list[dict[str, Any]], has_more: bool = False, **fields: Any) -> dict[str, Any]:
    return {"object": "list", "data": items, "has_more": has_more, **fields}


def event(event_id: str, message: str = "step", **fields: Any) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": event_id,
        "created_at": 1721764800,
        "level": "info",
        "message": message,
        "type": "message",
        "data": {},
        **fields,
    }


def checkpoint(ckpt_id: str, step: int = 10) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": ckpt_id,
        "created_at": 1721764800,
        "fine_tuned_model_checkpoint": f"ft:gpt-4o-mini:org:sfx:abc:ckpt-step-{step}",
        "fine_tuning_job_id": "ftjob-1",
        "metrics": {"step": step, "train_loss": 0.5, "valid_loss": 0.7},
        "step_number": step,
    }


def permission(perm_id: str, project: str = "proj-2") -> dict[str, Any]:
    return {"object": "checkpoint.permission", "id": perm_id, "created_at": 1721764800, "project_id": project}


def file_obj(file_id: str = "file-1", name: str = "train.jsonl", size: int = 10) -> dict[str, Any]:
    return {
        "object": "file",
        "id": file_id,
        "bytes": size,
        "created_at": 1721764800,
        "filename": name,
        "purpose": "fine-tune",
        "status": "processed",
    }


def upload(upload_id: str = "upload_1", status: str = "pending", file: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "object": "upload",
        "id": upload_id,
        "bytes": 100,
        "created_at": 1721764800,
        "expires_at": 1721768400,
        "filename": "big.jsonl",
        "purpose": "fine-tune",
        "status": status,
        "file": file,
    }


GRADER = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "operation": "eq",
}


def grader_result(reward: float = 1.0) -> dict[str, Any]:
    errors = dict.fromkeys(
        [
            "formula_parse_error",
            "sample_parse_error",
            "truncated_observation_error",
            "unresponsive_reward_error",
            "invalid_variable_error",
            "other_error",
            "python_grader_server_error",
            "python_grader_runtime_error",
            "model_grader_server_error",
            "model_grader_refusal_error",
            "model_grader_parse_error",
        ],
        False,
    )
    errors |= {
        "python_grader_server_error_type": None,
        "python_grader_runtime_error_details": None,
        "model_grader_server_error_details": None,
    }
    return {
        "reward": reward,
        "metadata": {
            "name": "exact",
            "type": "string_check",
            "errors": errors,
            "execution_time": 0.01,
            "scores": {},
            "token_usage": None,
            "sampled_model_name": None,
        },
        "sub_rewards": {},
        "model_grader_token_usage_per_model": {},
    }
