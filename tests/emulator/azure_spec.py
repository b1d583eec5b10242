"""Checks of the emulator's Azure answers against the published Azure OpenAI specs (../shared/azure-spec).

The three trimmed documents are read as they are: Swagger 2.0 (``2024-10-21``) and OpenAPI 3.0 (the
preview and v1), their schemas validated as JSON Schema 2020-12 after the OpenAPI 3.0 ``nullable`` rewrite
of :mod:`tests.conformance`. An answer is matched to its operation by surface, ``api-version``, method and
path template; its status must be one the operation declares (``201`` where the spec says ``201``, not
``200``), errors are checked against the ``default`` (error) response, and a declared ``Location`` header
must be present.

On v1, ``FineTuningJob.status`` also accepts ``paused`` and ``pausing`` (its enum lists OpenAI's six values
although its pause operation makes a paused job; the spec's README asks clients to parse leniently).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.conformance import _openapi30_compat, _pointer, _schema_errors, spec_path

#: The spec document of each Azure surface version.
AZURE_SPEC_FILES = {
    "2024-10-21": "azureopenai-authoring-2024-10-21.finetuning.json",
    "2025-04-01-preview": "azureopenai-authoring-2025-04-01-preview.finetuning.yaml",
    "v1": "azureopenai-v1.finetuning.yaml",
}
V1_EXTRA_STATUSES = ("pausing", "paused")
_METHODS = ("get", "put", "post", "delete", "patch")


def azure_spec_dir() -> Path:
    """``azure-spec`` beside the OpenAI spec's directory (both under ../shared)."""
    return spec_path().parent.parent / "azure-spec"


@functools.cache
def load_azure_spec(version: str) -> dict[str, Any]:
    """The raw document of a surface version (``2024-10-21``, ``2025-04-01-preview`` or ``v1``)."""
    path = azure_spec_dir() / AZURE_SPEC_FILES[version]
    text = path.read_text(encoding="utf-8")
    document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    assert isinstance(document, dict), path
    assert "paths" in document, path
    return document


@functools.cache
def _compat(version: str) -> dict[str, Any]:
    document = _openapi30_compat(copy.deepcopy(load_azure_spec(version)))
    if version == "v1":
        status = document["components"]["schemas"]["OpenAI.FineTuningJob"]["properties"]["status"]
        status["enum"] = [*status["enum"], *V1_EXTRA_STATUSES]
    return document


@functools.cache
def _registry(version: str) -> Registry:
    return Registry().with_resource(f"urn:azure-spec:{version}", DRAFT202012.create_resource(_compat(version)))


@functools.cache
def _validator(version: str, pointer: str) -> Draft202012Validator:
    schema = {"$ref": f"urn:azure-spec:{version}#{quote(pointer, safe='/~')}"}
    return Draft202012Validator(schema, registry=_registry(version))


@functools.cache
def _operations(version: str) -> tuple[tuple[str, re.Pattern[str], str, str], ...]:
    """(method, path pattern, template, operationId) of every operation of a version."""
    table = []
    for template, item in load_azure_spec(version)["paths"].items():
        pattern = re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", template) + "$")
        for method in _METHODS:
            if method in item:
                table.append((method.upper(), pattern, template, item[method]["operationId"]))
    # Literal segments first: /files/import before /files/{file-id}.
    table.sort(key=lambda row: row[2].count("{"))
    return tuple(table)


def find_operation(version: str, method: str, path: str) -> tuple[str, str] | None:
    """(template, operationId) of the operation a request is, or ``None`` when the spec has none."""
    for candidate, pattern, template, operation_id in _operations(version):
        if candidate == method and pattern.match(path):
            return template, operation_id
    return None


def _response_schema_pointer(version: str, template: str, method: str, key: str) -> str | None:
    response = load_azure_spec(version)["paths"][template][method.lower()]["responses"][key]
    base = _pointer("paths", template, method.lower(), "responses", key)
    if "schema" in response:  # Swagger 2.0
        return base + "/schema"
    content = response.get("content") or {}
    if "application/json" in content:
        return base + _pointer("content", "application/json", "schema")
    return None


def error_schema_pointer(version: str) -> str:
    """The pointer of a version's error envelope schema."""
    if version == "2024-10-21":
        return "/definitions/ErrorResponse"
    name = "AzureErrorResponse" if version == "v1" else "ErrorResponse"
    return _pointer("components", "schemas", name)


def validate_azure_response(
    version: str, method: str, path: str, status: int, payload: Any, headers: Mapping[str, str]
) -> str:
    """Check one answer of an Azure surface; return its operationId.

    :param version: ``2024-10-21``, ``2025-04-01-preview`` or ``v1``.
    :param path: the request path below the surface's prefix (``/fine_tuning/jobs``).
    :raises AssertionError: the operation or status is not in the spec, or the body or headers do not conform.
    """
    found = find_operation(version, method, path)
    if found is None:
        raise AssertionError(f"{version}: no operation {method} {path} in the spec")
    template, operation_id = found
    responses = load_azure_spec(version)["paths"][template][method.lower()]["responses"]
    key = str(status)
    if key not in responses:
        if status < 400:
            raise AssertionError(f"{version} {operation_id}: status {status} is not declared ({sorted(responses)})")
        key = "default"
    for header in (responses[key].get("headers") or {}) if status < 400 else {}:
        if header.lower() != "apim-request-id":  # declared optional
            assert header.lower() in {name.lower() for name in headers}, f"{operation_id}: no {header} header"
    pointer = _response_schema_pointer(version, template, method, key)
    if pointer is None or payload is None:
        # No JSON schema (a 204, file content) or no JSON body (file content is bytes).
        return operation_id
    problems = _schema_errors(_validator(version, pointer), payload, "body")
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise AssertionError(f"{version} {operation_id} response {status} does not conform:\n{listing}")
    return operation_id


def validate_azure_error(version: str, payload: Any) -> None:
    """Check an error body against a version's error envelope."""
    problems = _schema_errors(_validator(version, error_schema_pointer(version)), payload, "body")
    if problems:
        raise AssertionError(f"{version} error envelope does not conform: {problems}")


class AzureChecker:
    """An httpx response hook: every answer under ``/openai`` carries ``apim-request-id`` and conforms."""

    def __init__(self) -> None:
        self.checked: list[tuple[str, str, int]] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        request = response.request
        path = request.url.path
        assert response.headers.get("apim-request-id"), f"no apim-request-id on {request.method} {path}"
        if path.startswith("/openai/v1/"):
            version: str | None = "v1"
            relative = path[len("/openai/v1") :]
        else:
            version = request.url.params.get("api-version")
            relative = path[len("/openai") :]
        if version not in AZURE_SPEC_FILES:
            # No document says what this version answers: it must still be an Azure error.
            assert response.status_code >= 400, f"{path}: answered {response.status_code} for api-version {version}"
            validate_azure_error("2024-10-21", response.json())
            return
        assert version is not None
        is_json = response.headers.get("content-type", "").startswith("application/json")
        payload = response.json() if is_json and response.content else None
        if find_operation(version, request.method, relative) is None:
            assert response.status_code >= 400, f"{version}: {request.method} {relative} is not in the spec"
            validate_azure_error(version, payload)
            return
        operation = validate_azure_response(
            version, request.method, relative, response.status_code, payload, response.headers
        )
        self.checked.append((version, operation, response.status_code))
