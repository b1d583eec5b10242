"""A scripted Google Vertex AI at the HTTP transport, every request and answer checked against Google's own SDK.

:class:`FakeVertex` takes every request to the regional endpoint through a respx route, checks the Bearer token,
routes ``projects.locations.tuningJobs`` (create, get, list with ``filter``/``pageSize``/``pageToken``, cancel) and
``{model}:generateContent`` as the REST API does, refuses query parameters the API does not take, and validates each
create body with the ``google-genai`` SDK's ``TuningJob`` type (camelCase, unknown fields refused) and each
generateContent body with its ``Content`` and ``GenerationConfig`` types. Its answers are Vertex-shaped (resource
names with the project *number*, RFC 3339 times with nanoseconds, int64 as strings) and are themselves read back by
the SDK's own conversion (``_TuningJob_from_vertex``), so the test data cannot drift from what the SDK reads. Lists
come oldest first (the API promises no order). Errors are Google's ``{"error": {"code", "message", "status",
"details"}}``. Faults are scripted per operation; a problem fails the test at teardown.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import respx
from google.genai import tunings, types

ENDPOINT = "https://us-central1-aiplatform.googleapis.com"
PROJECT = "acme-ml"
PROJECT_NUMBER = "123456789012"
LOCATION = "us-central1"
TOKEN = "ya29.fake-vertex-access-token-0123456789"
ROOT = f"{ENDPOINT}/v1/projects/{PROJECT}/locations/{LOCATION}"
ENDED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}

_JOBS = re.compile(r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/tuningJobs$")
_JOB = re.compile(r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/tuningJobs/(?P<id>[^/:]+)$")
_CANCEL = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/tuningJobs/(?P<id>[^/:]+):cancel$"
)
_GENERATE = re.compile(r"^/v1/(?P<model>.+):generateContent$")
_FILTER_TERM = re.compile(r'labels\.([a-z][a-z0-9_-]{0,62})="([^"]*)"')
_LABEL = re.compile(r"[a-z0-9_-]{0,63}")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_QUERY = {
    "CreateTuningJob": set(),
    "GetTuningJob": set(),
    "ListTuningJobs": {"filter", "pageSize", "pageToken"},
    "CancelTuningJob": set(),
    "GenerateContent": set(),
}


def google_error(status_code: int, status: str, message: str, details: list[Any] | None = None) -> httpx.Response:
    """Google's error answer."""
    body: dict[str, Any] = {"code": status_code, "message": message, "status": status}
    if details is not None:
        body["details"] = details
    return httpx.Response(status_code, json={"error": body})


def rfc3339(moment: datetime) -> str:
    """A time as Vertex AI writes it: UTC, nanoseconds, ``Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def sdk_reads(job: dict[str, Any]) -> types.TuningJob:
    """The answer as Google's SDK reads a ``TuningJob`` (its own conversion, then its type)."""
    return types.TuningJob.model_validate(tunings._TuningJob_from_vertex(job))


def answer(text: str = "yes", finish: str = "STOP", **fields: Any) -> dict[str, Any]:
    """A ``GenerateContentResponse`` with one candidate."""
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 1, "totalTokenCount": 8},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-1",
        **fields,
    }


@dataclass
class FakeVertex:
    """Answers every request to :data:`ENDPOINT`; each must be one Vertex AI takes."""

    router: respx.MockRouter
    token: str = TOKEN
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    faults: dict[str, list[Callable[[httpx.Request], httpx.Response | None]]] = field(default_factory=dict)
    #: Called with a job each time it is read (by a get or in a list): scripts the job's progress.
    before_get: Callable[[dict[str, Any]], None] | None = None
    #: The list ignores its filter (as a service may): the client must check each job's own labels.
    ignore_filter: bool = False
    #: What generateContent answers.
    generated: dict[str, Any] = field(default_factory=answer)
    creates_made: int = 0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(4_000_000_000_000_000_001))
    _clock: datetime = field(default_factory=lambda: datetime(2026, 11, 16, 8, 0, tzinfo=timezone.utc))

    def __post_init__(self) -> None:
        self.router.route(host=ENDPOINT.split("://", 1)[1]).mock(side_effect=self.handle)

    def fault(self, operation: str, *answers: Callable[[httpx.Request], httpx.Response | None]) -> None:
        """Answer the next calls of ``operation`` with these (``None``: answer as usual)."""
        self.faults.setdefault(operation, []).extend(answers)

    def bodies(self, operation: str) -> list[Any]:
        return [json.loads(r.content) for r, op in zip(self.requests, self.operations, strict=True) if op == operation]

    def now(self) -> datetime:
        self._clock += timedelta(seconds=1)
        return self._clock

    # -- routing -----------------------------------------------------------------------------------------

    def _route(self, request: httpx.Request) -> tuple[str | None, dict[str, str]]:
        path = request.url.path
        for operation, pattern, method in (
            ("ListTuningJobs", _JOBS, "GET"),
            ("CreateTuningJob", _JOBS, "POST"),
            ("GetTuningJob", _JOB, "GET"),
            ("CancelTuningJob", _CANCEL, "POST"),
            ("GenerateContent", _GENERATE, "POST"),
        ):
            found = pattern.match(path)
            if found is not None and request.method == method:
                return operation, found.groupdict()
        return None, {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        operation, where = self._route(request)
        self.operations.append(operation or "?")
        self.requests.append(request)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if operation is None:
            self.problems.append(f"no Vertex AI operation is {request.method} {request.url.path}")
            return google_error(404, "NOT_FOUND", "The requested URL was not found on this server.")
        unknown = set(request.url.params) - _QUERY[operation]
        if unknown:
            self.problems.append(f"{operation}: query parameters Vertex AI does not take: {sorted(unknown)}")
            return google_error(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. Unknown name {unknown}")
        if where.get("project") not in (None, PROJECT, PROJECT_NUMBER) or where.get("location") not in (
            None,
            LOCATION,
        ):
            self.problems.append(f"{operation}: another project or location: {request.url.path}")
        queued = self.faults.get(operation)
        if queued:
            made = queued.pop(0)(request)
            if made is not None:
                return made
        handler = getattr(self, "_" + re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower())
        return handler(request, where)  # type: ignore[no-any-return]

    # -- tuning jobs -------------------------------------------------------------------------------------

    def _check_create(self, body: Any) -> list[str]:
        if not isinstance(body, dict):
            return ["the body is not a JSON object"]
        problems = []
        specs = [key for key in ("supervisedTuningSpec", "preferenceOptimizationSpec") if key in body]
        if not body.get("baseModel"):
            problems.append("baseModel is required")
        if len(specs) != 1:
            problems.append(f"exactly one tuning spec, got {specs}")
        typed = copy.deepcopy(body)
        evaluation = None
        for key in specs:
            spec = typed[key]
            evaluation = spec.pop("evaluationConfig", None)
            if not str(spec.get("trainingDatasetUri", "")).startswith("gs://"):
                problems.append(f"{key}.trainingDatasetUri must be a gs:// URI")
        if evaluation is not None:
            # The SDK's request conversion puts it in the tuning spec; its TuningJob type keeps it at the top.
            typed["evaluationConfig"] = evaluation
            if set(evaluation) - {"metrics", "outputConfig", "autoraterConfig", "inferenceGenerationConfig"}:
                problems.append(f"evaluationConfig has unknown fields: {sorted(evaluation)}")
            evaluation.pop("metrics", None)  # Vertex's REST metric specs; the SDK types its own spelling of them
        try:
            types.TuningJob.model_validate(typed)
        except Exception as err:
            problems.append(f"not a TuningJob of Google's SDK: {err}")
        for key, value in (body.get("labels") or {}).items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL.fullmatch(value):
                problems.append(f"label {key}={value} breaks Vertex AI's label rules")
        return problems

    def _create_tuning_job(self, request: httpx.Request, where: dict[str, str]) -> httpx.Response:
        body = json.loads(request.content)
        problems = self._check_create(body)
        if problems:
            self.problems += problems
            return google_error(400, "INVALID_ARGUMENT", "; ".join(problems))
        self.creates_made += 1
        ident = str(next(self._ids))
        now = rfc3339(self.now())
        job = {
            "name": f"projects/{PROJECT_NUMBER}/locations/{LOCATION}/tuningJobs/{ident}",
            "state": "JOB_STATE_PENDING",
            "createTime": now,
            "updateTime": now,
            **{k: v for k, v in body.items() if k != "labels"},
        }
        if body.get("labels"):
            job["labels"] = body["labels"]
        for spec in ("supervisedTuningSpec", "preferenceOptimizationSpec"):
            if isinstance(job.get(spec), dict):
                job[spec] = {k: v for k, v in job[spec].items() if k != "evaluationConfig"}
        self.jobs[ident] = job
        return self._answer_job(job)

    def _answer_job(self, job: dict[str, Any]) -> httpx.Response:
        try:
            sdk_reads(job)
        except Exception as err:  # the fake's own answer must be one Google's SDK reads
            self.problems.append(f"the fake answered a job the SDK cannot read: {err}")
        return httpx.Response(200, json=job)

    def _get_tuning_job(self, request: httpx.Request, where: dict[str, str]) -> httpx.Response:
        job = self.jobs.get(where["id"])
        if job is None:
            return google_error(404, "NOT_FOUND", f"TuningJob {where['id']} not found.")
        if self.before_get is not None:
            self.before_get(job)
        return self._answer_job(job)

    def _list_tuning_jobs(self, request: httpx.Request, where: dict[str, str]) -> httpx.Response:
        wanted: list[tuple[str, str]] = []
        text = request.url.params.get("filter")
        if text:
            terms = text.split(" AND ")
            found = [_FILTER_TERM.fullmatch(term) for term in terms]
            if not all(found):
                self.problems.append(f"not a Vertex AI list filter: {text!r}")
                return google_error(400, "INVALID_ARGUMENT", f"Invalid filter: {text}")
            wanted = [(m.group(1), m.group(2)) for m in found if m is not None]
        jobs = sorted(self.jobs.values(), key=lambda j: j["createTime"])  # oldest first: no order is promised
        if not self.ignore_filter:
            jobs = [j for j in jobs if all((j.get("labels") or {}).get(k) == v for k, v in wanted)]
        start = int(request.url.params.get("pageToken") or 0)
        size = int(request.url.params.get("pageSize") or 100)
        chunk = jobs[start : start + size]
        for job in chunk:
            if self.before_get is not None:
                self.before_get(job)
            sdk_reads(job)
        body: dict[str, Any] = {"tuningJobs": chunk}
        if start + size < len(jobs):
            body["nextPageToken"] = str(start + size)
        return httpx.Response(200, json=body)

    def _cancel_tuning_job(self, request: httpx.Request, where: dict[str, str]) -> httpx.Response:
        if json.loads(request.content or b"null") != {}:
            self.problems.append("a cancel's body is an empty object")
        job = self.jobs.get(where["id"])
        if job is None:
            return google_error(404, "NOT_FOUND", f"TuningJob {where['id']} not found.")
        if job["state"] in ENDED:
            return google_error(
                400,
                "FAILED_PRECONDITION",
                f"TuningJob {job['name']} is in state {job['state']} and cannot be cancelled.",
            )
        job["state"] = "JOB_STATE_CANCELLING"
        return httpx.Response(200, json={})

    def advance(self, ident: str, state: str, **fields: Any) -> None:
        """Move a job on: a success gives it its tuned model (with checkpoints), a failure its error."""
        job = self.jobs[ident]
        job["state"] = state
        job["updateTime"] = rfc3339(self.now())
        if state in ("JOB_STATE_RUNNING", *ENDED) and "startTime" not in job:
            job["startTime"] = job["updateTime"]
            job["experiment"] = (
                f"projects/{PROJECT_NUMBER}/locations/{LOCATION}/metadataStores/default/contexts/x-{ident}"
            )
        if state == "JOB_STATE_SUCCEEDED":
            base = f"projects/{PROJECT_NUMBER}/locations/{LOCATION}"
            job["tunedModel"] = {
                "model": f"{base}/models/77@1",
                "endpoint": f"{base}/endpoints/88",
                "checkpoints": [
                    {"checkpointId": "1", "epoch": "1", "step": "10", "endpoint": f"{base}/endpoints/81"},
                    {"checkpointId": "2", "epoch": "2", "step": "20", "endpoint": f"{base}/endpoints/82"},
                ],
            }
            job["tuningDataStats"] = {
                "supervisedTuningDataStats": {"tuningDatasetExampleCount": "12", "totalBillableTokenCount": "3400"}
            }
        if state == "JOB_STATE_FAILED":
            job["error"] = {"code": 3, "message": "Invalid training data: line 3 has no model turn."}
        if state == "JOB_STATE_CANCELLED":
            job["error"] = {"code": 1, "message": "CANCELED"}
        if state in ENDED:
            job["endTime"] = job["updateTime"]
        job.update(fields)

    # -- generateContent ---------------------------------------------------------------------------------

    def _generate_content(self, request: httpx.Request, where: dict[str, str]) -> httpx.Response:
        body = json.loads(request.content)
        unknown = set(body) - {"contents", "systemInstruction", "generationConfig"}
        problems = [f"generateContent fields this test does not expect: {sorted(unknown)}"] if unknown else []
        try:
            for content in body.get("contents") or []:
                types.Content.model_validate(content)
            if "systemInstruction" in body:
                types.Content.model_validate(body["systemInstruction"])
            if "generationConfig" in body:
                types.GenerationConfig.model_validate(body["generationConfig"])
        except Exception as err:
            problems.append(f"not a generateContent body of Google's SDK: {err}")
        if problems:
            self.problems += problems
            return google_error(400, "INVALID_ARGUMENT", "; ".join(problems))
        types.GenerateContentResponse.model_validate(self.generated)
        return httpx.Response(200, json=self.generated)


def connect_vertex(
    monkeypatch: Any, *, extra: dict[str, Any] | None = None, password: str | None = TOKEN, conn_id: str = "ft_vertex"
) -> Any:
    """A hook of a Vertex AI connection reaching the fake (Google's address: no host)."""
    from airflow_provider_finetune.core.client import RetryPolicy
    from airflow_provider_finetune.hooks.finetune import FineTuningHook

    conn: dict[str, Any] = {
        "conn_type": "finetune",
        "extra": {"service": "vertex", "project": PROJECT, "max_retries": 3, **(extra or {})},
    }
    if password is not None:
        conn["password"] = password
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return FineTuningHook(conn_id, retry_policy=RetryPolicy(initial_delay=0, max_delay=0, jitter=0))


@contextlib.contextmanager
def serve_fake_vertex() -> Iterator[FakeVertex]:
    """A :class:`FakeVertex`; fails if any request was not one Vertex AI takes."""
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        fake = FakeVertex(router)
        yield fake
    assert not fake.problems, "requests Vertex AI would not take:\n" + "\n".join(fake.problems)
