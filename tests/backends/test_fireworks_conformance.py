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

from tests.hook_doors import async_call, async_items, sync_call

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


# -- every request of every call the backend makes ------------------------------------------------------------------

#: Each call the backend builds that Fireworks serves, and the SDK operations its requests are (``{c}``: each of
#: the three job collections).
ROUTED: dict[str, set[str]] = {
    "get_dataset": {"dataset.get"},
    "create_dataset": {"dataset.create"},
    "upload_dataset_file": {"dataset.upload"},
    "upload_endpoint": {"dataset.get_upload_endpoint"},
    "validate_upload": {"dataset.validate_upload"},
    "create_job": {"{c}.create"},
    "create_prepared_job": {"{c}.create"},
    "job_call": {"{c}.get", "{c}.cancel", "{c}.resume"},
    "events": {"{c}.get"},
    "list_jobs": {"supervised_fine_tuning_job.list"},
    "list_job_states": {"supervised_fine_tuning_job.list"},
    "next_page": {"supervised_fine_tuning_job.list"},
    "chat_completion": {"chat.completions.create"},
}
#: Calls Fireworks has no route for, by the capability that refuses them before any request.
REFUSED: dict[str, str] = {
    "checkpoints": "checkpoints",
    "permissions": "checkpoint_permissions",
    "grant": "checkpoint_permissions",
    "revoke": "checkpoint_permissions",
    "run_grader": "graders",
    "validate_grader": "graders",
    "create_upload": "uploads",
    "add_part": "uploads",
    "complete_upload": "uploads",
    "upload_action": "uploads",
    "get_file": "files",
    "delete_file": "files",
    "file_content": "files",
    "list_files": "files",
    "create_file": "files",
}
#: Calls that Fireworks makes none of: it has no price estimate.
NONE = {"estimate_price"}

_KINDS = ("supervised_fine_tuning_job", "dpo_job", "reinforcement_fine_tuning_job")
#: Every SDK operation the backend sends, and no other: a job is never deleted (its cancel is ``:cancel``).
EXPECTED = {
    op.replace("{c}", kind) for ops in ROUTED.values() for op in ops for kind in (_KINDS if "{c}" in op else ("",))
}


def _calls_the_backend_builds() -> set[str]:
    import inspect

    from airflow_provider_finetune.backends.fireworks import FireworksBackend

    return {
        name
        for name, function in inspect.getmembers(FireworksBackend, inspect.isfunction)
        if not name.startswith("_") and "Call[" in str(inspect.signature(function).return_annotation)
    }


def test_every_call_the_backend_builds_is_sent_conforming_or_refused() -> None:
    from airflow_provider_finetune.backends.fireworks import FireworksBackend
    from airflow_provider_finetune.core.client import ConnectionSettings

    assert _calls_the_backend_builds() == set(ROUTED) | set(REFUSED) | NONE
    backend = FireworksBackend(ConnectionSettings(base_url=BASE, api_key="fw-test-key-123"))
    for name, capability in REFUSED.items():
        assert not backend.supports(capability), f"{name}: Fireworks has no route for it, yet {capability} is on"
    assert backend.estimate_price({"dataset": "d"}) is None
    assert {op.name for op in operations()} >= EXPECTED


#: A value of each Fireworks option, by its name in ``service_options``, as a DAG gives it.
OPTION_VALUES: dict[str, Any] = {
    "learning_rate": 1e-4,
    "lora_rank": 8,
    "epochs": 1,
    "batch_size": 65536,
    "batch_size_samples": 8,
    "max_context_length": 4096,
    "learning_rate_warmup_steps": 10,
    "gradient_accumulation_steps": 2,
    "optimizer_weight_decay": 0.01,
    "output_model": "conformance-out",
    "warm_start_from": "accounts/acme/models/base-adapter",
    "jinja_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
    "early_stop": False,
    "eval_auto_carveout": False,
    "evaluation_dataset": "<the evaluation dataset>",
    "display_name": "conformance job",
    "evaluator": "accounts/acme/evaluators/exact",
    "loss_config": {"method": "GRPO", "klBeta": 0.01},
    "inference_parameters": {"temperature": 0.7, "maxOutputTokens": 256, "responseCandidatesCount": 2},
    "max_concurrent_rollouts": 4,
    "node_count": 1,
    "wandb_config": {"enabled": False, "project": "conformance"},
}


def test_there_is_a_value_of_every_option() -> None:
    from airflow_provider_finetune.backends.fireworks import FIREWORKS_OPTIONS

    assert set(OPTION_VALUES) == set(FIREWORKS_OPTIONS)


def _every_option(method: str, datasets: dict[str, str]) -> dict[str, Any]:
    """Every option the method takes (its evaluation dataset in the method's own format)."""
    from airflow_provider_finetune.backends.fireworks import FIREWORKS_OPTIONS

    given = {
        k: v
        for k, v in OPTION_VALUES.items()
        if method in FIREWORKS_OPTIONS[k].methods and not FIREWORKS_OPTIONS[k].rejected
    }
    if "evaluation_dataset" in given:
        given["evaluation_dataset"] = datasets[f"{method}-evaluation"]
    if method == "dpo":
        given["loss_config"] = {"method": "DPO"}
    return {**given, "output_model": f"conformance-{method}"}


# -- the scenario: each call, sync and async, against the emulator ------------------------------------------------

ACCOUNT = "acme"
BASE_MODEL = "accounts/fireworks/models/llama-v3p1-8b-instruct"
API_KEY = "fw-conformance-key-123"


@pytest.fixture
def emulator() -> Iterator[Any]:
    from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer, ManualClock

    clock = ManualClock()
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, clock=clock, seed=11)) as running:
        yield running, clock


@pytest.fixture
def sent_through(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, FireworksConformance]]:
    """A Fireworks hook on the emulator whose every request, sync or async, the checker reads before it leaves."""
    from airflow_provider_finetune.core.client import RetryPolicy
    from airflow_provider_finetune.hooks.finetune import FineTuningHook

    server, _ = emulator
    conn = {
        "conn_type": "finetune",
        "host": server.url,
        "password": API_KEY,
        "extra": {"service": "fireworks", "account_id": ACCOUNT},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FT_FW_CONFORMANCE", json.dumps(conn))
    hook = FineTuningHook("ft_fw_conformance", retry_policy=RetryPolicy(initial_delay=0, max_delay=0, jitter=0))
    checker = FireworksConformance()
    hook.client.event_hooks["request"].append(checker)
    yield hook, checker
    hook.close()


def _data() -> dict[str, bytes]:
    from tests.emulator.conftest import dpo_lines, jsonl, rft_lines, training_lines

    return {
        "supervised": jsonl(training_lines(12)),
        "supervised-evaluation": jsonl(training_lines(6, start=50)),
        "dpo": jsonl(dpo_lines(10)),
        "reinforcement": jsonl(rft_lines(10)),
        "reinforcement-evaluation": jsonl(rft_lines(4)),
    }


def _job_request(method: str, dataset: str) -> Any:
    from airflow_provider_finetune.models import CreateFineTuningJobRequest, MethodRequest, build_request

    if method == "reinforcement":  # Fireworks grades with the evaluator option, not an OpenAI grader
        kind = MethodRequest.model_construct(type="reinforcement", reinforcement=None)
        return CreateFineTuningJobRequest.model_construct(model=BASE_MODEL, training_file=dataset, method=kind)
    return build_request(
        CreateFineTuningJobRequest, {"model": BASE_MODEL, "training_file": dataset, "method": {"type": method}}
    )


def _paused(server: Any, job_id: str) -> None:
    """Fireworks pauses a job itself (its API cannot): the emulator's trainer is told to."""
    record = next(r for r in server.emulator.store.records("fw_job").values() if job_id.endswith("/" + r["job_id"]))
    server.emulator.jobs.pause(record["sim_id"])


def test_every_request_of_every_call_conforms(
    sent_through: tuple[Any, FireworksConformance], emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import io

    from airflow_provider_finetune.backends import fireworks as fw
    from airflow_provider_finetune.rules.once import JobIdentity

    hook, checker = sent_through
    server, clock = emulator
    backend = hook.backend
    datasets, direct = {}, fw.DIRECT_UPLOAD_LIMIT
    for role, data in _data().items():
        # The DPO file goes up as a large one would: through the signed upload endpoint.
        monkeypatch.setattr(fw, "DIRECT_UPLOAD_LIMIT", 100 if role == "dpo" else direct)
        sha = hashlib.sha256(data).hexdigest()
        datasets[role] = hook.run_flow(backend.dataset_flow(io.BytesIO(data), f"{role}.jsonl", len(data), sha, None))
    jobs = []
    for method in ("supervised", "dpo", "reinforcement"):
        options = _every_option(method, datasets)
        job, created = hook.ensure_job(
            _job_request(method, datasets[method]),
            identity=JobIdentity(f"dag=d,task={method},run=r,map=-1"),
            service_options=options,
        )
        assert created
        jobs.append(job.id)
    second = hook.create_job(_job_request("supervised", datasets["supervised"]), service_options={"epochs": 1})
    clock.advance(20)
    for job_id in jobs:
        assert hook.get_job(job_id).status.value == "running"
        assert hook.list_events(job_id).data
        _paused(server, job_id)
        hook.resume_job(job_id)
        hook.cancel_job(job_id)
    assert {j.id for j in hook.iter_jobs(limit=1)} == {jobs[0], second.id}
    assert sync_call(hook, "list_job_states", limit=1).has_more
    assert hook.test_connection()[0]
    hook.chat_completion({"model": BASE_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})

    assert not checker.problems, "\n".join(checker.problems)
    assert checker.operations == EXPECTED


async def test_every_async_request_of_every_call_conforms(
    sent_through: tuple[Any, FireworksConformance], emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import io

    from airflow_provider_finetune.backends import fireworks as fw
    from airflow_provider_finetune.rules.once import JobIdentity

    hook, _ = sent_through
    checker = FireworksConformance()
    (await hook.aclient()).event_hooks["request"].append(checker.acall)
    server, clock = emulator
    datasets, direct = {}, fw.DIRECT_UPLOAD_LIMIT
    for role, data in _data().items():
        monkeypatch.setattr(fw, "DIRECT_UPLOAD_LIMIT", 100 if role == "dpo" else direct)
        sha = hashlib.sha256(data).hexdigest()
        flow = hook.backend.dataset_flow(io.BytesIO(data), f"{role}.jsonl", len(data), sha, None)
        datasets[role] = await hook.arun_flow(flow)
    jobs = []
    for method in ("supervised", "dpo", "reinforcement"):
        options = _every_option(method, datasets)
        job, created = await async_call(
            hook,
            "ensure_job",
            _job_request(method, datasets[method]),
            identity=JobIdentity(f"dag=d,task={method},run=r,map=-1"),
            service_options=options,
        )
        assert created
        jobs.append(job.id)
    second = await async_call(
        hook, "create_job", _job_request("supervised", datasets["supervised"]), service_options={"epochs": 1}
    )
    clock.advance(20)
    for job_id in jobs:
        assert (await hook.aget_job(job_id)).status.value == "running"
        assert (await hook.alist_events(job_id)).data
        _paused(server, job_id)
        await async_call(hook, "resume_job", job_id)
        await hook.acancel_job(job_id)
    assert {j.id for j in await async_items(hook, "iter_jobs", limit=1)} == {jobs[0], second.id}
    assert (await hook.alist_job_states(limit=1)).has_more
    await async_call(
        hook, "chat_completion", {"model": BASE_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    )

    assert not checker.problems, "\n".join(checker.problems)
    assert checker.operations == EXPECTED
