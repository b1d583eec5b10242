"""Every request the Fireworks backend sends, checked against Fireworks' published request types.

The reference is the installed ``fireworks-ai`` SDK, generated from Fireworks' OpenAPI document: its routes
(read from ``fireworks/resources/*.py``: each ``self._post(... path_template("/v1/accounts/{account_id}/..."))``)
and its ``types/*_params.py`` TypedDicts (the wire name of each field is its ``PropertyInfo`` alias; ``Required``
keys must be there; values must have the declared type, nested TypedDicts and ``Literal`` values included).
:class:`FireworksConformance` is an httpx request hook: attached to the hook's sync and async clients, it
checks each request before it leaves, and the tests fail on any problem it records.
"""

from __future__ import annotations

import collections.abc
import functools
import importlib
import json
import pathlib
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import typing_extensions

fireworks = pytest.importorskip("fireworks")

_ROUTE = re.compile(
    r'self\._(get_api_list|get|post|delete|patch)\(\s*\("https://api\.fireworks\.ai".*?\)\s*\+\s*'
    r'path_template\(\s*"([^"]+)"',
    re.S,
)
_RESOURCES = {
    "datasets.py": "dataset",
    "supervised_fine_tuning_jobs.py": "supervised_fine_tuning_job",
    "dpo_jobs.py": "dpo_job",
    "reinforcement_fine_tuning_jobs.py": "reinforcement_fine_tuning_job",
}
_ACTIONS = {
    "cancel": "cancel",
    "resume": "resume",
    "upload": "upload",
    "getUploadEndpoint": "get_upload_endpoint",
    "validateUpload": "validate_upload",
}


@dataclass(frozen=True)
class Operation:
    """One SDK operation: HTTP method, path pattern, and the TypedDict of its parameters (if the SDK has one)."""

    name: str
    method: str
    pattern: re.Pattern[str]
    params: type | None
    path_keys: frozenset[str]


def _params_class(resource: str, op: str) -> type | None:
    module_name = f"fireworks.types.{resource}_{op}_params"
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    wanted = "".join(part.capitalize() for part in f"{resource}_{op}_params".split("_")).lower()
    for value in vars(module).values():
        if isinstance(value, type) and value.__name__.lower() == wanted:
            return value
    return None


@functools.cache
def operations() -> list[Operation]:
    """The SDK's routes for datasets and the three job collections."""
    root = pathlib.Path(fireworks.__file__).parent / "resources"
    found: dict[tuple[str, str], Operation] = {}
    for filename, resource in _RESOURCES.items():
        for match in _ROUTE.finditer((root / filename).read_text()):
            kind, template = match.groups()
            method = "GET" if kind == "get_api_list" else kind.upper()
            keys = re.findall(r"{(\w+)}", template)
            action = template.rsplit(":", 1)[1] if ":" in template.rsplit("/", 1)[-1] else None
            if action is not None:
                op = _ACTIONS.get(action, action)
            elif len(keys) == 1:
                op = "list" if kind == "get_api_list" else "create"
            else:
                op = {"GET": "get", "DELETE": "delete", "PATCH": "update"}[method]
            regex = "^" + re.sub(r"\\{\w+\\}", "[^/:]+", re.escape(template)) + "$"
            found[(method, template)] = Operation(
                f"{resource}.{op}", method, re.compile(regex), _params_class(resource, op), frozenset(keys)
            )
    # Inference lives apart from the control plane, at the absolute URL the SDK names.
    chat = (root / "chat" / "completions.py").read_text()
    inference = re.search(r'"https://api\.fireworks\.ai(/inference/v1/chat/completions)"', chat)
    assert inference is not None, "the SDK no longer names its chat completions URL"
    params = importlib.import_module("fireworks.types.chat.completion_create_params")
    found[("POST", inference.group(1))] = Operation(
        "chat.completions.create",
        "POST",
        re.compile("^" + re.escape(inference.group(1)) + "$"),
        params.CompletionCreateParamsNonStreaming,
        frozenset(),
    )
    return list(found.values())


def _fields(params: type) -> dict[str, tuple[str, Any, bool]]:
    """wire name -> (python name, type, required) of a params TypedDict."""
    hints = typing.get_type_hints(params, include_extras=True)
    out: dict[str, tuple[str, Any, bool]] = {}
    for name, hint in hints.items():
        # The SDK's modules postpone annotations, so Required[...] is read from the hint, not __required_keys__.
        wire, kind, required = name, hint, False
        if typing.get_origin(hint) in (typing.Required, typing_extensions.Required):
            kind, required = typing.get_args(hint)[0], True
        if typing.get_origin(kind) is typing.Annotated:
            kind, *meta = typing.get_args(kind)
            for item in meta:
                alias = getattr(item, "alias", None)
                if alias:
                    wire = alias
            if typing.get_origin(kind) in (typing.Required, typing_extensions.Required):
                kind, required = typing.get_args(kind)[0], True
        out[wire] = (name, kind, required)
    return out


def _type_problem(value: Any, kind: Any, where: str) -> str | None:
    origin = typing.get_origin(kind)
    if kind is Any or kind is object:
        return None
    if origin is typing.Annotated:
        return _type_problem(value, typing.get_args(kind)[0], where)
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, option, where) for option in typing.get_args(kind)]
        return None if any(p is None for p in problems) else problems[0]
    if origin is typing.Literal:
        return None if value in typing.get_args(kind) else f"{where}: {value!r} is not one of {typing.get_args(kind)}"
    if origin is dict:
        key_type, value_type = typing.get_args(kind)
        if not isinstance(value, dict):
            return f"{where}: must be an object, got {value!r}"
        for key, item in value.items():
            problem = _type_problem(key, key_type, f"{where} key") or _type_problem(item, value_type, f"{where}.{key}")
            if problem:
                return problem
        return None
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence):
        return None if isinstance(value, list) else f"{where}: must be a list, got {value!r}"
    if isinstance(kind, type) and typing_extensions.is_typeddict(kind):
        nested = _body_problems(value, kind, where + ".")
        return nested[0] if nested else None
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(kind, type):
        ok = isinstance(value, kind)
    else:
        return None  # a type this checker does not read (files): not judged
    return None if ok else f"{where}: must be {getattr(kind, '__name__', kind)}, got {value!r}"


def _body_problems(body: Any, params: type, prefix: str = "", *, skip: frozenset[str] = frozenset()) -> list[str]:
    if not isinstance(body, dict):
        return [f"{prefix or 'body'}: must be a JSON object, got {body!r}"]
    declared = _fields(params)
    problems = [f"{prefix}{key}: not a field of {params.__name__}" for key in body if key not in declared]
    for wire, (_, kind, required) in declared.items():
        if wire in skip:
            continue
        if wire in body:
            problem = _type_problem(body[wire], kind, prefix + wire)
            if problem:
                problems.append(problem)
        elif required:
            problems.append(f"{prefix}{wire}: required by {params.__name__}, missing")
    return problems


@dataclass
class FireworksConformance:
    """An httpx request hook that checks each Fireworks request against the SDK's route and request types."""

    problems: list[str] = field(default_factory=list)
    operations: set[str] = field(default_factory=set)

    def check(self, request: httpx.Request) -> list[str]:
        """The problems of one request (empty when it conforms)."""
        path = request.url.path
        match = [op for op in operations() if op.method == request.method and op.pattern.match(path)]
        if not match:
            return [f"{request.method} {path}: no such route in the fireworks-ai SDK"]
        op = match[0]
        self.operations.add(op.name)
        if request.headers.get("authorization", "").split(" ")[0] != "Bearer":
            return [f"{op.name}: no Bearer key"]
        params = op.params
        query = dict(request.url.params)
        if params is None:
            return [f"{op.name}: query {k} not declared" for k in query] if query else []
        declared = _fields(params)
        problems = [f"{op.name}: query {key} is not a parameter" for key in query if key not in declared]
        in_path = {"account_id", *op.path_keys}
        if op.name.endswith(".upload"):
            content_type = request.headers.get("content-type", "")
            if not content_type.startswith("multipart/form-data") or b'name="file"' not in request.content:
                problems.append(f"{op.name}: must be multipart/form-data with a 'file' part")
            return problems
        if request.method in ("GET", "DELETE"):
            return problems + ([f"{op.name}: a {request.method} carries no body"] if request.content else [])
        body = json.loads(request.content or b"null")
        if set(declared) - in_path == {"body"}:  # a custom method whose body is any object
            return problems + ([] if isinstance(body, dict) else [f"{op.name}: body must be a JSON object"])
        skip = frozenset(w for w, (name, _, _) in declared.items() if name in in_path or w in query)
        return problems + [f"{op.name}: {p}" for p in _body_problems(body, params, skip=skip)]

    def __call__(self, request: httpx.Request) -> None:
        request.read()
        self.problems.extend(self.check(request))

    async def acall(self, request: httpx.Request) -> None:
        """The async client's hook."""
        await request.aread()
        self.problems.extend(self.check(request))


# -- the checker itself: it must be able to fail --------------------------------------------------------------

BASE = "https://api.fireworks.ai/v1/accounts/acme"


def _request(method: str, path: str, body: Any = None, **params: str) -> httpx.Request:
    return httpx.Request(
        method,
        BASE + path,
        params=params or None,
        json=body,
        headers={"Authorization": "Bearer fw-test-key-123"},
    )


def test_the_checker_reads_the_sdk_routes() -> None:
    names = {op.name for op in operations()}
    assert {
        "dataset.create",
        "dataset.upload",
        "dataset.get_upload_endpoint",
        "dataset.validate_upload",
        "supervised_fine_tuning_job.create",
        "supervised_fine_tuning_job.cancel",
        "dpo_job.resume",
        "reinforcement_fine_tuning_job.create",
        "chat.completions.create",
    } <= names


@pytest.mark.parametrize(
    ("request_", "wanted"),
    [
        (_request("POST", "/supervisedFineTuningJobs", {"baseModel": "m"}), "dataset: required"),
        (_request("POST", "/supervisedFineTuningJobs", {"dataset": "d", "learningRateMultiplier": 2}), "not a field"),
        (_request("POST", "/supervisedFineTuningJobs", {"dataset": "d", "epochs": "3"}), "must be int"),
        (_request("POST", "/supervisedFineTuningJobs", {"dataset": "d"}, fineTuningJobId="x"), "query fineTuningJobId"),
        (_request("DELETE", "/supervisedFineTuningJobs/ft-1:cancel"), "no such route"),
        (_request("POST", "/dpoJobs", {"dataset": "d", "trainingConfig": {"lr": 1}}), "trainingConfig.lr"),
        (_request("POST", "/datasets/ds-1:getUploadEndpoint", {"filenameToSize": {"a": 1}}), "must be str"),
    ],
)
def test_the_checker_catches_what_does_not_conform(request_: httpx.Request, wanted: str) -> None:
    problems = FireworksConformance().check(request_)
    assert any(wanted in p for p in problems), problems


def test_the_checker_passes_what_conforms() -> None:
    checker = FireworksConformance()
    good = [
        _request("POST", "/supervisedFineTuningJobs", {"dataset": "d", "epochs": 3}, supervisedFineTuningJobId="ft-1"),
        _request("POST", "/supervisedFineTuningJobs/ft-1:cancel", {}),
        _request("POST", "/datasets", {"datasetId": "ds-1", "dataset": {"userUploaded": {}, "exampleCount": "10"}}),
        _request("GET", "/supervisedFineTuningJobs", pageSize="10"),
    ]
    for request in good:
        assert checker.check(request) == [], request


def iter_problems(checker: FireworksConformance) -> Iterator[str]:
    """The problems recorded, for an assertion message."""
    yield from checker.problems
