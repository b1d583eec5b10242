"""A scripted Azure OpenAI at the HTTP transport: every request checked against the surface's published spec.

:class:`FakeAzure` is the Azure counterpart of ``tests/hooks/conftest.py``'s ``FakeAPI``: one respx route takes
every request to the fake endpoint, validates it with :func:`tests.conformance.validate_request` against the
document of the connection's surface (``azure-2024-10-21``, ``azure-2025-04-01-preview`` or ``azure-v1``) and
answers with an Azure-shaped body that is itself checked against the same document
(:func:`tests.emulator.azure_spec.validate_azure_response`), so that the test data cannot drift from the spec.
A request that does not conform is recorded and answered ``400``; the fixture fails the test at teardown with
every problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import respx

from airflow_provider_finetune.core.client import RetryPolicy
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from tests.conformance import validate_request
from tests.emulator.azure_spec import validate_azure_response

ENDPOINT = "https://res.openai.azure.com"
KEY = "azure-conformance-key-0123"
CREATED = 1721764800


@dataclass(frozen=True)
class Surface:
    """One Azure surface: the connection that reaches it and the spec document that describes it."""

    name: str  # the version key of tests.emulator.azure_spec
    spec: str  # the spec key of tests.conformance
    base_path: str
    extra: dict[str, Any]

    @property
    def authoring(self) -> bool:
        return self.name != "v1"


SURFACES = {
    "2024-10-21": Surface(
        "2024-10-21", "azure-2024-10-21", "/openai", {"service": "azure", "api_version": "2024-10-21"}
    ),
    "2025-04-01-preview": Surface(
        "2025-04-01-preview",
        "azure-2025-04-01-preview",
        "/openai",
        {"service": "azure", "api_version": "2025-04-01-preview"},
    ),
    "v1": Surface("v1", "azure-v1", "/openai/v1", {"service": "azure"}),
}


# -- spec-shaped answers ------------------------------------------------------------------------------------


def job(surface: Surface, status: str = "running", job_id: str = "ftjob-1", **fields: Any) -> dict[str, Any]:
    """A job as the surface answers it (authoring: ``organisation_id``, ``-1`` defaults; v1: OpenAI's fields)."""
    if surface.authoring:
        body: dict[str, Any] = {
            "object": "fine_tuning.job",
            "id": job_id,
            "model": "gpt-4o-mini-2024-07-18",
            "created_at": CREATED,
            "status": status,
            "training_file": "file-train",
            "validation_file": "file-valid",
            "result_files": [],
            "organisation_id": "org-1",
            "hyperparameters": {"n_epochs": -1, "batch_size": -1, "learning_rate_multiplier": 1.0},
            "seed": 42,
            "suffix": "weekly",
        }
    else:
        body = {
            "object": "fine_tuning.job",
            "id": job_id,
            "model": "gpt-4o-mini-2024-07-18",
            "created_at": CREATED,
            "error": None,
            "fine_tuned_model": None,
            "finished_at": None,
            "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
            "organization_id": "org-1",
            "result_files": [],
            "status": status,
            "trained_tokens": None,
            "training_file": "file-train",
            "validation_file": None,
            "seed": 42,
            "metadata": None,
        }
    return {**body, **fields}


def page(surface: Surface, items: list[dict[str, Any]], *, files: bool = False) -> dict[str, Any]:
    """A list answer; the authoring file list has no ``has_more`` (its schema declares none)."""
    body: dict[str, Any] = {"object": "list", "data": items}
    if not (files and surface.authoring):
        body["has_more"] = False
    if files and not surface.authoring:
        body |= {"first_id": items[0]["id"] if items else None, "last_id": items[-1]["id"] if items else None}
    return body


def event(surface: Surface, event_id: str = "ftevent-1", level: str = "info") -> dict[str, Any]:
    body = {
        "object": "fine_tuning.job.event",
        "id": event_id,
        "created_at": CREATED,
        "level": level,
        "message": "Training started.",
        "type": "message",
    }
    return body


def checkpoint(surface: Surface, step: int = 10) -> dict[str, Any]:
    metrics: dict[str, float] = {"step": float(step), "train_loss": 0.5, "valid_loss": 0.7}
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": f"ftckpt-{step}",
        "created_at": CREATED,
        "fine_tuned_model_checkpoint": f"gpt-4o-mini-2024-07-18.ft-1-{step}",
        "fine_tuning_job_id": "ftjob-1",
        "metrics": metrics,
        "step_number": step,
    }


def file_obj(surface: Surface, file_id: str = "file-train", name: str = "train.jsonl") -> dict[str, Any]:
    return {
        "object": "file",
        "id": file_id,
        "bytes": 64,
        "created_at": CREATED,
        "filename": name,
        "purpose": "fine-tune",
        "status": "processed",
    }


def upload(status: str = "pending", file: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "object": "upload",
        "id": "upload-1",
        "bytes": 100,
        "created_at": CREATED,
        "expires_at": CREATED + 7200,
        "filename": "big.jsonl",
        "purpose": "fine-tune",
        "status": status,
    }
    if file is not None:
        body["file"] = file
    return body


def chat_completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": CREATED,
        "model": "gpt-4o-mini-ft",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "yes", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
    }


Answer = tuple[int, Any, dict[str, str]]


def default_answers(surface: Surface) -> dict[str, Callable[[httpx.Request], Answer]]:
    """operationId -> the answer, for every operation a backend call reaches."""
    created = 201 if surface.authoring else 200
    where = {"Location": f"{ENDPOINT}{surface.base_path}/fine_tuning/jobs/ftjob-1"}

    def fixed(status: int, body: Any, headers: dict[str, str] | None = None) -> Callable[[httpx.Request], Answer]:
        return lambda request: (status, body, headers or {})

    if surface.authoring:
        answers = {
            "FineTuning_Create": fixed(created, job(surface, "pending"), where),
            "FineTuning_List": fixed(200, page(surface, [job(surface)])),
            "FineTuning_Get": fixed(200, job(surface)),
            "FineTuning_Cancel": fixed(200, job(surface, "cancelled")),
            "FineTuning_Pause": fixed(200, job(surface, "paused")),
            "FineTuning_Resume": fixed(200, job(surface, "resuming")),
            "FineTuning_GetEvents": fixed(200, page(surface, [event(surface, level="warning")])),
            "FineTuning_GetCheckpoints": fixed(200, page(surface, [checkpoint(surface)])),
            "Files_Upload": fixed(201, file_obj(surface), {"Location": f"{ENDPOINT}/openai/files/file-train"}),
            "Files_List": fixed(200, page(surface, [file_obj(surface)], files=True)),
            "Files_Get": fixed(200, file_obj(surface)),
            "Files_Delete": fixed(200, {"object": "file", "id": "file-train", "deleted": True}),
            "Files_GetContent": fixed(200, b'{"messages": []}\n'),
            "UploadFile_Start": fixed(200, upload(), {"Location": f"{ENDPOINT}/openai/uploads/upload-1"}),
            "UploadFile_Part": fixed(
                200, {"object": "upload.part", "id": "part-1", "created_at": CREATED, "upload_id": "upload-1"}
            ),
            "UploadFile_Complete": fixed(200, upload("completed", file_obj(surface, "file-big", "big.jsonl"))),
            "UploadFile_Cancel": fixed(200, upload("cancelled")),
        }
    else:
        answers = {
            "createFineTuningJob": fixed(created, job(surface, "validating_files")),
            "listPaginatedFineTuningJobs": fixed(200, page(surface, [job(surface)])),
            "retrieveFineTuningJob": fixed(200, job(surface)),
            "cancelFineTuningJob": fixed(200, job(surface, "cancelled")),
            "pauseFineTuningJob": fixed(200, job(surface, "paused")),
            "resumeFineTuningJob": fixed(200, job(surface, "running")),
            "listFineTuningEvents": fixed(200, page(surface, [event(surface, level="warn")])),
            "listFineTuningJobCheckpoints": fixed(200, page(surface, [checkpoint(surface)])),
            "createFile": fixed(200, file_obj(surface)),
            "listFiles": fixed(200, page(surface, [file_obj(surface)], files=True)),
            "retrieveFile": fixed(200, file_obj(surface)),
            "deleteFile": fixed(200, {"object": "file", "id": "file-train", "deleted": True}),
            "downloadFile": fixed(200, b'{"messages": []}\n'),
            "createChatCompletion": fixed(200, chat_completion()),
        }
    return answers


# -- the fake service ---------------------------------------------------------------------------------------


@dataclass
class FakeAzure:
    """Answers every request to :data:`ENDPOINT`; each must conform to the surface's spec."""

    surface: Surface
    router: respx.MockRouter
    answers: dict[str, Callable[[httpx.Request], Answer]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: Requests no document here describes (the authoring surface's deployment chat completions).
    unvalidated: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.answers = default_answers(self.surface) | self.answers
        self.router.route(host=ENDPOINT.split("://", 1)[1]).mock(side_effect=self._answer)

    def _spec_for(self, request: httpx.Request) -> str | None:
        path = request.url.path
        if path == f"{self.surface.base_path}/chat/completions" and not self.surface.authoring:
            return "azure-v1-full"  # chat completions are outside the trimmed v1 file
        if path.startswith("/openai/deployments/") and self.surface.authoring:
            return None  # the inference API: not among the authoring documents
        return self.surface.spec

    def _answer(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        spec = self._spec_for(request)
        if spec is None:
            self.unvalidated.append(f"{request.method} {request.url.path}")
            return httpx.Response(200, json=chat_completion())
        try:
            operation = validate_request(request, base_path=self.surface.base_path, spec=spec)
        except AssertionError as err:
            self.problems.append(str(err))
            body = {"error": {"code": "invalidPayload", "message": str(err)[:500]}}
            return httpx.Response(400, json=body)
        self.operations.append(operation)
        status, body, headers = self.answers[operation](request)
        headers = {"apim-request-id": f"req-{len(self.requests)}", **headers}
        if spec != "azure-v1-full":  # the canned answer must be what the spec says the service answers
            relative = request.url.path[len(self.surface.base_path) :]
            payload = None if isinstance(body, bytes) else body
            validate_azure_response(self.surface.name, request.method, relative, status, payload, headers)
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers={"content-type": "application/octet-stream", **headers})
        return httpx.Response(status, json=body, headers=headers)


#: The operations the tests of a run reached, per surface (read by the coverage test).
REACHED: dict[str, set[str]] = {name: set() for name in SURFACES}


@pytest.fixture(params=list(SURFACES))
def surface(request: pytest.FixtureRequest) -> Surface:
    """Each Azure surface in turn."""
    return SURFACES[request.param]


@pytest.fixture
def fake_azure(surface: Surface) -> Iterator[FakeAzure]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        fake = FakeAzure(surface, router)
        yield fake
    REACHED[surface.name].update(fake.operations)
    assert not fake.problems, "requests that do not conform to the spec:\n" + "\n".join(fake.problems)


@pytest.fixture
def azure_hook(surface: Surface, monkeypatch: pytest.MonkeyPatch) -> Iterator[FineTuningHook]:
    conn = {"conn_type": "finetune", "host": ENDPOINT, "password": KEY, "extra": surface.extra}
    monkeypatch.setenv("AIRFLOW_CONN_FT_AZURE_SPEC", json.dumps(conn))
    hook = FineTuningHook("ft_azure_spec", retry_policy=RetryPolicy(initial_delay=0, max_delay=0, jitter=0))
    yield hook
    hook.close()
