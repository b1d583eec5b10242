"""A scripted AWS Bedrock at the HTTP transport: every request checked against botocore's ``bedrock`` service model.

:func:`validate_against_shape` is a small validator over botocore's own shapes (``botocore.loaders`` /
``botocore.model``): required members, unknown members, types, enums, patterns, lengths and ranges. :class:`FakeBedrock`
takes every request to its endpoint through a respx route, finds the operation by method and URI template, checks
the SigV4 signature by recomputing it with botocore (or the Bearer key), validates the request's URI, query and body
members against the operation's input shape, and answers as Bedrock does (restJson1, ``x-amzn-ErrorType``). It keeps
jobs and deployments, honours ``clientRequestToken``, refuses a job name in use (``ValidationException``, 400) and a
custom model name held by a job that made or may still make that model (not by a ``Failed`` or ``Stopped`` one), so
that once-only creation is tested against Bedrock's own rules. Faults are scripted per operation.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, unquote

import botocore.session
import httpx
import respx

ENDPOINT = "https://bedrock.us-east-1.amazonaws.com"
REGION = "us-east-1"
ACCOUNT = "123456789012"
ACCESS_KEY = "AKIAFAKEBEDROCK00001"
SECRET_KEY = "fake-bedrock-secret-key-0123456789"
API_KEY = "ABSKfake-bedrock-api-key-0001"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/BedrockFineTuning"

_MODEL = botocore.session.get_session().get_service_model("bedrock")


def service_model() -> Any:
    """botocore's service model of ``bedrock``."""
    return _MODEL


# -- the validator ----------------------------------------------------------------------------------------


def validate_against_shape(shape: Any, value: Any, where: str = "") -> list[str]:
    """Every way ``value`` breaks ``shape`` (a botocore shape), each naming the member."""
    problems: list[str] = []
    meta = shape.metadata
    kind = shape.type_name
    name = where or shape.name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{name}: expected an object, got {type(value).__name__}"]
        for required in shape.required_members:
            if required not in value:
                problems.append(f"{name}.{required}: required member missing")
        for key, item in value.items():
            member = shape.members.get(key)
            if member is None:
                problems.append(f"{name}.{key}: not a member of {shape.name}")
            else:
                problems += validate_against_shape(member, item, f"{name}.{key}")
        return problems
    if kind == "list":
        if not isinstance(value, list):
            return [f"{name}: expected a list"]
        problems += _length(meta, len(value), name)
        for index, item in enumerate(value):
            problems += validate_against_shape(shape.member, item, f"{name}[{index}]")
        return problems
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{name}: expected a map"]
        problems += _length(meta, len(value), name)
        for key, item in value.items():
            problems += validate_against_shape(shape.key, key, f"{name}<key {key}>")
            problems += validate_against_shape(shape.value, item, f"{name}.{key}")
        return problems
    if kind == "string":
        if not isinstance(value, str):
            return [f"{name}: expected a string, got {value!r}"]
        if "enum" in meta and value not in meta["enum"]:
            problems.append(f"{name}: {value!r} is not one of {meta['enum']}")
        if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
            problems.append(f"{name}: {value!r} does not match {meta['pattern']}")
        return problems + _length(meta, len(value), name)
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{name}: expected an integer, got {value!r}"]
        return _range(meta, value, name)
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [f"{name}: expected a number, got {value!r}"]
        return _range(meta, value, name)
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{name}: expected a boolean, got {value!r}"]
    if kind == "timestamp":
        return [] if isinstance(value, str | int | float) else [f"{name}: expected a timestamp"]
    return problems


def _length(meta: dict[str, Any], size: int, name: str) -> list[str]:
    if "min" in meta and size < meta["min"]:
        return [f"{name}: length {size} below {meta['min']}"]
    if "max" in meta and size > meta["max"]:
        return [f"{name}: length {size} above {meta['max']}"]
    return []


def _range(meta: dict[str, Any], number: float, name: str) -> list[str]:
    if "min" in meta and number < meta["min"]:
        return [f"{name}: {number} below {meta['min']}"]
    if "max" in meta and number > meta["max"]:
        return [f"{name}: {number} above {meta['max']}"]
    return []


def _coerce(shape: Any, raw: str) -> Any:
    if shape.type_name in ("integer", "long"):
        try:
            return int(raw)
        except ValueError:
            return raw
    if shape.type_name == "boolean":
        return raw == "true"
    return raw


@dataclass(frozen=True)
class Route:
    """One operation's URI template, as a regex over the raw path."""

    operation: str
    method: str
    pattern: re.Pattern[str]
    literal: int

    @classmethod
    def of(cls, name: str) -> Route:
        http = _MODEL.operation_model(name).http
        uri = http["requestUri"].split("?")[0]
        regex = re.sub(r"\\\{(\w+)\+?\\\}", lambda m: f"(?P<{m.group(1)}>[^/]+)", re.escape(uri))
        return cls(name, http["method"], re.compile(f"^{regex}$"), len(re.sub(r"\{\w+\+?\}", "", uri)))


ROUTES = sorted((Route.of(name) for name in _MODEL.operation_names), key=lambda r: -r.literal)


def find_operation(method: str, raw_path: str) -> tuple[str, dict[str, str]] | None:
    """The operation a request reaches, and its URI members (decoded)."""
    for route in ROUTES:
        if route.method != method:
            continue
        found = route.pattern.match(raw_path)
        if found:
            return route.operation, {k: unquote(v) for k, v in found.groupdict().items()}
    return None


def request_problems(request: httpx.Request) -> tuple[str | None, list[str], dict[str, Any]]:
    """The operation of ``request``, how it breaks the operation's input shape, and its input members."""
    raw_path = request.url.raw_path.decode().split("?")[0]
    found = find_operation(request.method, raw_path)
    if found is None:
        return None, [f"{request.method} {raw_path}: no bedrock operation"], {}
    operation, members = found
    shape = _MODEL.operation_model(operation).input_shape
    params: dict[str, Any] = dict(members)
    by_query = {
        m.serialization.get("name"): (n, m)
        for n, m in (shape.members.items() if shape else [])
        if m.serialization.get("location") == "querystring"
    }
    problems = []
    for key, raw in parse_qsl(request.url.query.decode(), keep_blank_values=True):
        if key not in by_query:
            problems.append(f"query {key}: not a member of {operation}'s input")
            continue
        member_name, member = by_query[key]
        params[member_name] = _coerce(member, raw)
    if request.content:
        body = json.loads(request.content)
        for key in body:
            member = shape.members.get(key) if shape else None
            if member is not None and member.serialization.get("location"):
                problems.append(f"{key}: a {member.serialization['location']} member sent in the body")
        params.update(body)
    if shape is not None:
        problems += validate_against_shape(shape, params, operation)
    return operation, problems, params


# -- SigV4, checked by recomputing with botocore ------------------------------------------------------------

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[^,]+), Signature=(?P<signature>[0-9a-f]{64})$"
)


def signature_problem(request: httpx.Request, *, secret: str = SECRET_KEY, token: str | None = None) -> str | None:
    """Why ``request``'s SigV4 signature is not the one botocore computes for it, or ``None``."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    found = _AUTH.match(request.headers.get("authorization", ""))
    if found is None:
        return f"not a SigV4 Authorization header: {request.headers.get('authorization', '')[:40]!r}"
    if found["key"] != ACCESS_KEY or found["region"] != REGION or found["service"] != "bedrock":
        return f"signed for {found['key']}/{found['region']}/{found['service']}"
    if token is not None and request.headers.get("x-amz-security-token") != token:
        return "the session token is missing"
    signed = found["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return f"host and x-amz-date must be signed, signed: {signed}"
    headers = {name: request.headers[name] for name in signed if name in request.headers}
    aws = AWSRequest(method=request.method, url=str(request.url), data=request.content, headers=headers)
    aws.context["timestamp"] = request.headers["x-amz-date"]
    signer = SigV4Auth(Credentials(ACCESS_KEY, secret, token), "bedrock", REGION)
    expected = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    if not hmac.compare_digest(expected, found["signature"]):
        return "the signature does not match"
    return None


# -- the fake service ----------------------------------------------------------------------------------------

Fault = Callable[[httpx.Request], httpx.Response | None]


def aws_error(status: int, error_type: str, message: str) -> httpx.Response:
    """An AWS restJson1 error answer."""
    return httpx.Response(
        status,
        json={"message": message},
        headers={"x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
    )


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class FakeBedrock:
    """Bedrock's customization jobs and custom model deployments, kept in memory, behind a respx route."""

    router: respx.MockRouter
    auth: str = "sigv4"  # or "key"
    session_token: str | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by ARN
    tokens: dict[str, str] = field(default_factory=dict)  # clientRequestToken -> ARN
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: list[str] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    creates_made: int = 0
    #: Called with each job a ``GetModelCustomizationJob`` (or a list) is about to answer (a test moves it on here).
    before_get: Callable[[dict[str, Any]], None] | None = None
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.router.route(url__startswith=ENDPOINT).mock(side_effect=self.handle)

    def fault(self, operation: str, *faults: Fault) -> None:
        """Answer the next calls of ``operation`` with these faults, in order (``None``: serve it)."""
        self.faults.setdefault(operation, []).extend(faults)

    def bodies(self, operation: str) -> list[dict[str, Any]]:
        """The JSON bodies sent to ``operation``."""
        return [
            json.loads(r.content)
            for r, op in zip(self.requests, self.operations, strict=True)
            if op == operation and r.content
        ]

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.auth == "key":
            if request.headers.get("authorization") != f"Bearer {API_KEY}":
                self.problems.append("the Bedrock API key was not sent as a Bearer token")
                return aws_error(403, "UnrecognizedClientException", "The security token included is invalid.")
        else:
            problem = signature_problem(request, token=self.session_token)
            if problem:
                self.problems.append(problem)
                return aws_error(403, "InvalidSignatureException", problem)
        operation, problems, params = request_problems(request)
        self.operations.append(operation or "?")
        self.requests.append(request)
        if problems:
            self.problems += problems
            return aws_error(400, "ValidationException", "; ".join(problems))
        assert operation is not None
        queued = self.faults.get(operation)
        if queued:
            answer = queued.pop(0)(request)
            if answer is not None:
                return answer
        return getattr(self, "_" + re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower())(params)

    # -- jobs ------------------------------------------------------------------------------------------

    def _find(self, identifier: str) -> dict[str, Any] | None:
        if identifier in self.jobs:
            return self.jobs[identifier]
        return next((j for j in self.jobs.values() if j["jobName"] == identifier), None)

    def _create_model_customization_job(self, params: dict[str, Any]) -> httpx.Response:
        token = params.get("clientRequestToken")
        if token and token in self.tokens:
            return httpx.Response(201, json={"jobArn": self.tokens[token]})
        if any(j["jobName"] == params["jobName"] for j in self.jobs.values()):
            return aws_error(400, "ValidationException", "The provided job name is currently in use.")
        if any(
            j["outputModelName"] == params["customModelName"] and j["status"] not in ("Failed", "Stopped")
            for j in self.jobs.values()
        ):
            return aws_error(400, "ValidationException", "The provided model name is currently in use.")
        self.creates_made += 1
        job_id = f"{next(self._ids):012d}"
        arn = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-customization-job/amazon.nova-lite-v1:0:300k/{job_id}"
        job = {
            "jobArn": arn,
            "jobName": params["jobName"],
            "outputModelName": params["customModelName"],
            "roleArn": params["roleArn"],
            "clientRequestToken": token,
            "status": "InProgress",
            "statusDetails": {
                "validationDetails": {"status": "InProgress"},
                "dataProcessingDetails": {"status": "NotStarted"},
                "trainingDetails": {"status": "NotStarted"},
            },
            "creationTime": now_iso(),
            "baseModelArn": f"arn:aws:bedrock:{REGION}::foundation-model/amazon.nova-lite-v1:0:300k",
            "hyperParameters": params.get("hyperParameters", {}),
            "trainingDataConfig": params["trainingDataConfig"],
            "validationDataConfig": params.get("validationDataConfig", {"validators": []}),
            "outputDataConfig": params["outputDataConfig"],
            "customizationType": params.get("customizationType", "FINE_TUNING"),
        }
        self.jobs[arn] = job
        if token:
            self.tokens[token] = arn
        return httpx.Response(201, json={"jobArn": arn})

    def _get_model_customization_job(self, params: dict[str, Any]) -> httpx.Response:
        job = self._find(params["jobIdentifier"])
        if job is None:
            return aws_error(404, "ResourceNotFoundException", f"Job {params['jobIdentifier']} not found")
        if self.before_get is not None:
            self.before_get(job)
        return httpx.Response(200, json={k: v for k, v in job.items() if v is not None})

    def _list_model_customization_jobs(self, params: dict[str, Any]) -> httpx.Response:
        jobs = sorted(self.jobs.values(), key=lambda j: j["creationTime"], reverse=True)
        start = int(params.get("nextToken") or 0)
        size = int(params.get("maxResults") or 100)
        chunk = jobs[start : start + size]
        if self.before_get is not None:
            for job in chunk:
                self.before_get(job)
        summaries = [
            {
                k: j[k]
                for k in (
                    "jobArn",
                    "baseModelArn",
                    "jobName",
                    "status",
                    "statusDetails",
                    "creationTime",
                    "customizationType",
                )
            }
            | ({"customModelArn": j["outputModelArn"]} if j.get("outputModelArn") else {})
            for j in chunk
        ]
        body: dict[str, Any] = {"modelCustomizationJobSummaries": summaries}
        if start + size < len(jobs):
            body["nextToken"] = str(start + size)
        return httpx.Response(200, json=body)

    def _stop_model_customization_job(self, params: dict[str, Any]) -> httpx.Response:
        job = self._find(params["jobIdentifier"])
        if job is None:
            return aws_error(404, "ResourceNotFoundException", "not found")
        if job["status"] != "InProgress":
            return aws_error(400, "ValidationException", f"Job is {job['status']}, it cannot be stopped")
        job["status"] = "Stopping"
        return httpx.Response(200, json={})

    def advance(self, arn: str, status: str, **fields: Any) -> None:
        """Move a job on: ``Completed`` gives it a model and metrics, ``Failed`` a failureMessage."""
        job = self.jobs[arn]
        job["status"] = status
        stages = {
            "validationDetails": "Completed",
            "dataProcessingDetails": "Completed",
            "trainingDetails": "InProgress",
        }
        if status == "Completed":
            stages["trainingDetails"] = "Completed"
            job["outputModelArn"] = (
                f"arn:aws:bedrock:{REGION}:{ACCOUNT}:custom-model/amazon.nova-lite-v1:0:300k/abcdef012345"
            )
            job["trainingMetrics"] = {"trainingLoss": 0.25}
            job["validationMetrics"] = [{"validationLoss": 0.3}]
            job["endTime"] = now_iso()
        job["statusDetails"] = {k: {"status": v} for k, v in stages.items()}
        job.update(fields)

    # -- deployments -----------------------------------------------------------------------------------

    def _create_custom_model_deployment(self, params: dict[str, Any]) -> httpx.Response:
        token = params.get("clientRequestToken")
        for existing in self.deployments.values():
            if token and existing["clientRequestToken"] == token:
                return httpx.Response(202, json={"customModelDeploymentArn": existing["customModelDeploymentArn"]})
        arn = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:custom-model-deployment/{next(self._ids):012d}"
        self.deployments[arn] = {
            "customModelDeploymentArn": arn,
            "modelDeploymentName": params["modelDeploymentName"],
            "modelArn": params["modelArn"],
            "createdAt": now_iso(),
            "status": "Creating",
            "clientRequestToken": token,
        }
        return httpx.Response(202, json={"customModelDeploymentArn": arn})

    def _deployment(self, identifier: str) -> dict[str, Any] | None:
        if identifier in self.deployments:
            return self.deployments[identifier]
        return next((d for d in self.deployments.values() if d["modelDeploymentName"] == identifier), None)

    def _get_custom_model_deployment(self, params: dict[str, Any]) -> httpx.Response:
        found = self._deployment(params["customModelDeploymentIdentifier"])
        if found is None:
            return aws_error(404, "ResourceNotFoundException", "not found")
        return httpx.Response(200, json={k: v for k, v in found.items() if k != "clientRequestToken"})

    def _delete_custom_model_deployment(self, params: dict[str, Any]) -> httpx.Response:
        found = self._deployment(params["customModelDeploymentIdentifier"])
        if found is None:
            return aws_error(404, "ResourceNotFoundException", "not found")
        del self.deployments[found["customModelDeploymentArn"]]
        return httpx.Response(200, json={})


def connect_bedrock(
    monkeypatch: Any, *, key: bool = False, token: str | None = None, conn_id: str = "ft_bedrock_test"
) -> Any:
    """A hook of a Bedrock connection reaching the fake, signing with an Airflow AWS connection (or an API key)."""
    from airflow_provider_finetune.core.client import RetryPolicy
    from airflow_provider_finetune.hooks.finetune import FineTuningHook

    aws_extra: dict[str, Any] = {"region_name": REGION}
    if token:
        aws_extra["aws_session_token"] = token
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_BEDROCK_TEST",
        json.dumps({"conn_type": "aws", "login": ACCESS_KEY, "password": SECRET_KEY, "extra": aws_extra}),
    )
    conn: dict[str, Any] = {
        "conn_type": "finetune",
        "host": ENDPOINT,
        "extra": {"service": "bedrock", "region_name": REGION, "aws_conn_id": "aws_bedrock_test", "max_retries": 3},
    }
    if key:
        conn["password"] = API_KEY
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return FineTuningHook(conn_id, retry_policy=RetryPolicy(initial_delay=0, max_delay=0, jitter=0))


@contextlib.contextmanager
def serve_fake_bedrock() -> Iterator[FakeBedrock]:
    """A :class:`FakeBedrock` (a test module's fixture yields it); fails if any request broke botocore's model."""
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        fake = FakeBedrock(router)
        yield fake
    assert not fake.problems, "requests that break botocore's bedrock model:\n" + "\n".join(fake.problems)
