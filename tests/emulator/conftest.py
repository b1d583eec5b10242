from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer, ManualClock
from tests.conformance import load_spec, validate_response

API_KEY = "sk-emulator-test-5ecret"
ADMIN_KEY = "sk-admin-test-5ecret"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

GRADER = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "operation": "eq",
}


@functools.cache
def _operations() -> list[tuple[str, re.Pattern[str], str]]:
    table = []
    for template, item in load_spec()["paths"].items():
        pattern = re.compile("^/v1" + re.sub(r"\{[^/}]+\}", "[^/]+", template) + "$")
        for method, operation in item.items():
            if isinstance(operation, dict) and "operationId" in operation:
                table.append((method.upper(), pattern, operation["operationId"]))
    return table


def operation_of(method: str, path: str) -> str | None:
    """The spec's operationId for a request, or None for paths the spec does not describe."""
    for candidate, pattern, operation_id in _operations():
        if candidate == method and pattern.match(path):
            return operation_id
    return None


class SpecChecker:
    """Checks every answer of the emulator: x-request-id, and the body against the spec's schemas."""

    def __init__(self) -> None:
        self.checked: list[tuple[str, int]] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        assert response.headers.get("x-request-id", "").startswith("req_"), response.request.url
        path = response.request.url.path
        operation = operation_of(response.request.method, path)
        if path.startswith("/v1/") and response.status_code >= 400:
            # Every error has the API's shape, on paths the spec describes or not.
            validate_response("retrieveFineTuningJob", response.status_code, response.json())
        if operation is None:
            return
        payload: Any = response.content if operation == "downloadFile" else response.json()
        validate_response(operation, response.status_code, payload)
        self.checked.append((operation, response.status_code))


def training_lines(count: int = 12, *, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You add numbers."},
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": f"{2 * i}"},
            ]
        }
        for i in range(start, start + count)
    ]


def jsonl(lines: list[Any]) -> bytes:
    return ("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n").encode()


def dpo_lines(count: int = 10) -> list[dict[str, Any]]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"Say hello to {i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"Hello, {i}!"}],
            "non_preferred_output": [{"role": "assistant", "content": f"Go away, {i}."}],
        }
        for i in range(count)
    ]


def rft_lines(count: int = 10) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": f"Is {i} even?"}], "label": "yes" if i % 2 == 0 else "no"}
        for i in range(count)
    ]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_server(clock: ManualClock) -> Iterator[Callable[..., EmulatorServer]]:
    """Start emulators (stopped at the end of the test); keyword arguments go to EmulatorConfig."""
    started: list[EmulatorServer] = []

    def make(**overrides: Any) -> EmulatorServer:
        settings: dict[str, Any] = {"api_key": API_KEY, "admin_key": ADMIN_KEY, "clock": clock, "seed": 7}
        settings.update(overrides)
        server = EmulatorServer(EmulatorConfig(**settings)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., EmulatorServer]) -> EmulatorServer:
    return make_server()


@pytest.fixture
def checker() -> SpecChecker:
    return SpecChecker()


@pytest.fixture
def client(server: EmulatorServer, checker: SpecChecker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=AUTH, event_hooks={"response": [checker]}, timeout=10) as http:
        yield http


@pytest.fixture
def admin(server: EmulatorServer, checker: SpecChecker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=ADMIN, event_hooks={"response": [checker]}, timeout=10) as http:
        yield http


def upload(client: httpx.Client, lines: list[Any], name: str = "train.jsonl", purpose: str = "fine-tune") -> str:
    response = client.post("/files", files={"file": (name, jsonl(lines))}, data={"purpose": purpose})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def create_job(client: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("model", "gpt-4o-mini")
    response = client.post("/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def error_of(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json()["error"])
