"""What a backend is: one service's dialect, under the hook and above the one request core.

A backend turns the provider's canonical, OpenAI-shaped calls into its service's requests (:class:`Call`
descriptions: method, path, query, body, how to read the answer back into the canonical models), and says
what the service can do (:class:`Capabilities`), how requests authenticate (an ``httpx.Auth``), how its
error answers read, how its statuses map onto :class:`~airflow_provider_finetune.core.statuses.FineTuningJobStatus`,
how its lists page, what a job's training data is referenced by, where a job's page is, its request limits,
and how it makes a create once-only. It never sends anything: :mod:`airflow_provider_finetune.core.client`
classifies every answer and decides every retry, for every service.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, ClassVar, Generic, Literal, NoReturn, TypeVar, cast

import httpx
from pydantic import BaseModel, ValidationError

from airflow_provider_finetune.core.client import ErrorFields, read_error_body
from airflow_provider_finetune.core.flows import raised, translated
from airflow_provider_finetune.exceptions import (
    ConflictError,
    FineTuningError,
    InvalidRequestError,
    NotFoundError,
    UnsafeToRetryError,
    UnsupportedCapabilityError,
)
from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJob, build_request
from airflow_provider_finetune.rules.once import CancelJob, CreateJob, GetJob, ListJobs, ensure_job

if TYPE_CHECKING:
    from airflow_provider_finetune.core.client import ConnectionSettings, RetryPolicy
    from airflow_provider_finetune.core.flows import Flow
    from airflow_provider_finetune.models import (
        CheckpointPermission,
        DeletedCheckpointPermission,
        DeletedFile,
        FileObject,
        FineTuningJobCheckpoint,
        FineTuningJobEvent,
        GraderRunResult,
        GraderValidation,
        JobState,
        Page,
        Upload,
        UploadPart,
    )
    from airflow_provider_finetune.rules.budget import EpochRule, PriceEstimate
    from airflow_provider_finetune.rules.once import JobIdentity, OnChangedRequest

__all__ = [
    "CAPABILITY_NAMES",
    "CONTENT_ACCEPT",
    "MAX_PART_SIZE",
    "OPENAI_FINAL",
    "OPENAI_QUOTAS",
    "Backend",
    "Call",
    "Capabilities",
    "HeaderAuth",
    "Limits",
    "OnceOnly",
    "json_answer",
    "json_model",
    "model",
    "openai_refusal",
    "read_openai_error",
    "read_options",
    "refuse_untranslatable",
    "rfc3339_seconds",
]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

#: How a backend makes a create once-only: a tag in the job's metadata (verified on the job itself), a job id
#: the client chooses, an idempotency token the service honours, or an intent record kept by the caller.
OnceOnly = Literal["metadata", "client_job_id", "idempotency_token", "intent"]


#: What a file's content is asked for with. Services declare that answer differently (OpenAI as JSON, Azure's v1
#: as ``application/octet-stream``, its authoring surface as both), and a strict server refuses an ``Accept``
#: its declared type does not meet (406): this one meets every one, preferring the bytes as they are.
CONTENT_ACCEPT = "application/octet-stream, application/json;q=0.9, */*;q=0.8"

#: The Uploads API takes parts of at most 64 MB.
MAX_PART_SIZE = 64 * 1024 * 1024


def read_openai_error(response: httpx.Response, body: Any) -> ErrorFields:
    """Read OpenAI's error shape, its quota refusals (see :func:`openai_refusal`) told apart from a rate limit."""
    return openai_refusal(response.status_code, read_error_body(response, body))


#: OpenAI's quota refusals of a fine-tuning create, by code, and what each quota counts.
OPENAI_QUOTAS = {
    "daily_rate_limit_exceeded": "fine-tuning jobs created per day for the base model",
    # With the type ``invalid_request_error``: the cap on active jobs (an ordinary request rate limit has the
    # same code with the type ``requests`` or ``tokens``, and is retried as transient).
    "rate_limit_exceeded": "active fine-tuning jobs for the base model",
}
#: OpenAI's codes of a refusal that no wait clears: the account's billing quota is used up.
OPENAI_FINAL = frozenset({"insufficient_quota"})


def openai_refusal(status: int, fields: ErrorFields) -> ErrorFields:
    """Mark OpenAI's refusals: a quota that frees up with time, or one that needs a person.

    * ``429 daily_rate_limit_exceeded``: the daily number of fine-tuning creates per base model is used up;
    * ``429 rate_limit_exceeded`` of type ``invalid_request_error``: the organisation has as many active jobs
      on the base model as it may ("This fine-tune request has been rate-limited...");
    * ``insufficient_quota`` (code or type): the billing quota is used up; final.
    """
    if fields.code in OPENAI_FINAL or fields.error_type in OPENAI_FINAL:
        return replace(fields, refusal="final")
    if status != 429 or fields.code not in OPENAI_QUOTAS:
        return fields
    if fields.code == "rate_limit_exceeded" and fields.error_type != "invalid_request_error":
        return fields
    return replace(fields, refusal="quota", quota=OPENAI_QUOTAS[fields.code])


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call, described without doing it.

    :param method: HTTP method.
    :param path: path relative to the base URL, already quoted.
    :param parse: turns the successful response into the result.
    :param params: query parameters (``None`` values are left out).
    :param json: JSON body.
    :param multipart: makes ``(data, files)`` for a multipart body; called once per attempt so that a
        retried upload starts from the first byte again.
    :param idempotent: ``False`` for calls that create something billable and must not be re-sent when
        their outcome is unknown.
    :param accept: the ``Accept`` header, where the answer is not JSON (every request asks for JSON otherwise).
    :param redirect: a redirect (a ``3xx`` with a ``Location``) answers the call, neither followed nor an error:
        ``parse`` reads it (a flow sends what it points to).
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    multipart: Callable[[], tuple[dict[str, str], dict[str, Any]]] | None = None
    idempotent: bool = True
    accept: str | None = None
    redirect: bool = False

    def build(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """Build the request with the client's base URL, headers and default query."""
        params = {k: _query_value(v) for k, v in (self.params or {}).items() if v is not None}
        headers = {"Accept": self.accept} if self.accept else None
        if self.multipart is not None:
            data, files = self.multipart()
            return client.build_request(self.method, self.path, params=params, data=data, files=files, headers=headers)
        return client.build_request(self.method, self.path, params=params, json=self.json, headers=headers)


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def model(cls: type[M], translate: Callable[[Any], Any] | None = None) -> Callable[[httpx.Response], M]:
    """Parse an answer into ``cls``, after ``translate`` turned the service's JSON into the canonical shape."""

    def parse(response: httpx.Response) -> M:
        data = response.json()
        return cls.model_validate(translate(data) if translate is not None else data)

    return parse


def json_answer(response: httpx.Response) -> Any:
    """An answer's JSON as it is (an answer no model describes: a chat completion, a dataset)."""
    return response.json()


def json_model(cls: type[M]) -> Callable[[httpx.Response], M]:
    """Parse straight from the JSON bytes: fields the model ignores are never built as Python objects."""

    def parse(response: httpx.Response) -> M:
        return cls.model_validate_json(response.content)

    return parse


@dataclass(frozen=True)
class Capabilities:
    """What a service can do: nothing until its backend declares it; what it lacks is refused before any request.

    :param events: the job's event log (a wait without events logs status changes instead).
    :param checkpoints: the job's checkpoints.
    :param pause: pausing a job.
    :param resume: resuming a paused job.
    :param cancel: cancelling a job.
    :param checkpoint_permissions: sharing a checkpoint with other projects.
    :param graders: running and validating graders.
    :param uploads: the multipart Uploads API for large files.
    :param files: the files API (``/files``: upload, list, read, delete).
    :param suffix: a suffix for the fine-tuned model's name.
    :param job_metadata: jobs carry metadata given at create time.
    :param metadata_filter: the job list filters by metadata (still verified on each job).
    :param client_job_id: the client may choose the job's id.
    :param idempotency_token: the service honours an idempotency token on create.
    :param chat_completions: a model (a fine-tuned one) can be asked through the connection (chat completions).
    """

    events: bool = False
    checkpoints: bool = False
    pause: bool = False
    resume: bool = False
    cancel: bool = False
    checkpoint_permissions: bool = False
    graders: bool = False
    uploads: bool = False
    files: bool = False
    suffix: bool = False
    job_metadata: bool = False
    metadata_filter: bool = False
    client_job_id: bool = False
    idempotency_token: bool = False
    chat_completions: bool = False

    def names(self) -> list[str]:
        """The names of the capabilities the service has."""
        return [f.name for f in fields(self) if getattr(self, f.name)]


#: The capabilities in people's words, for the line that refuses one.
CAPABILITY_NAMES = {
    "events": "job events",
    "checkpoints": "checkpoints",
    "pause": "pausing jobs",
    "resume": "resuming jobs",
    "cancel": "cancelling jobs",
    "checkpoint_permissions": "checkpoint permissions",
    "graders": "graders",
    "uploads": "the Uploads API (files larger than a single upload)",
    "files": "the files API",
    "suffix": "a suffix for the fine-tuned model's name",
    "job_metadata": "job metadata",
    "metadata_filter": "filtering jobs by metadata",
    "client_job_id": "job ids chosen by the client",
    "idempotency_token": "idempotency tokens",
    "chat_completions": "chat completions",
}


@dataclass(frozen=True)
class Limits:
    """The service's request limits that are checked before anything is sent.

    :param max_suffix_length: longest suffix.
    :param max_metadata_keys: most metadata keys a job may carry (the provider's own tags count).
    :param hyperparameters_auto: whether ``"auto"`` is a value the service takes for a hyperparameter.
    :param methods: the fine-tuning methods the service takes.
    """

    max_suffix_length: int = 64
    max_metadata_keys: int = 16
    hyperparameters_auto: bool = True
    methods: frozenset[str] = frozenset({"supervised", "dpo", "reinforcement"})


class HeaderAuth(httpx.Auth):
    """Put a secret into one header of every request (``Authorization: Bearer ...``, ``api-key: ...``)."""

    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self._value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r})"

    def auth_flow(self, request: httpx.Request) -> Any:
        """Set the header and send."""
        request.headers[self._name] = self._value
        yield request


def _request(model_cls: type[M], request: M | Mapping[str, Any]) -> M:
    return request if isinstance(request, model_cls) else build_request(model_cls, cast(Mapping[str, Any], request))


_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def rfc3339_seconds(value: Any) -> int | None:
    """An RFC 3339 timestamp (Google's APIs send up to nanoseconds) as whole Unix seconds; ``None`` for others."""
    if not isinstance(value, str):
        return None
    match = _RFC3339.match(value)
    if match is None:
        return None
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return int(datetime.fromisoformat(match.group(1) + zone).timestamp())


def read_options(model_cls: type[M], given: Mapping[str, Any], service: str) -> M:
    """``service_options`` as ``model_cls``; the first fault is refused before any request, in one line naming it.

    A validator may name the faulty option itself by raising a ``ValueError`` with a ``field`` attribute.
    """
    try:
        return model_cls.model_validate(dict(given))
    except ValidationError as err:
        first = err.errors()[0]
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, ValueError) and isinstance(getattr(cause, "field", None), str):
            where, message = cause.field, str(cause)  # type: ignore[attr-defined]
        else:
            where = ".".join(str(p) for p in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            if first["type"] == "extra_forbidden":
                message = f"{service} has no such option (it takes {', '.join(model_cls.model_fields)})"
        field = f"service_options.{where}" if where else "service_options"
        raise InvalidRequestError(f"Invalid {service} options: {field}: {message}", field=field) from None


def refuse_untranslatable(request: Any, reasons: Mapping[str, str]) -> None:
    """Refuse, before any request, each given field of ``request`` the service cannot take, saying why.

    :param request: the canonical create request.
    :param reasons: field name -> why it is refused (and what to use instead).
    :raises InvalidRequestError: naming the first given field.
    """
    for field, why in reasons.items():
        if getattr(request, field) is not None:
            raise InvalidRequestError(f"Invalid fine-tuning request: {field}: {why}", field=field)


class Backend:
    """One service's dialect. Subclasses describe the calls; this base holds what every backend shares.

    :param settings: the connection's settings.
    """

    #: The service's name in a connection (``service`` extra).
    service: ClassVar[str] = ""
    #: The service's name in messages.
    label: ClassVar[str] = ""
    #: What a job's training and validation data are referenced by: a file id, an object's ``s3://`` or ``gs://``
    #: URI (data the service reads from object storage), or a dataset's name.
    file_reference: ClassVar[Literal["file_id", "s3_uri", "gcs_uri", "dataset"]] = "file_id"
    #: How a create is made once-only: ``metadata`` (the tag and fingerprint ride on the job), ``intent`` (an intent
    #: record in the task's state store, and the request's fields), ``client_job_id`` or ``idempotency_token``.
    once_only: ClassVar[OnceOnly] = "metadata"
    #: The create body's field that holds the job's metadata, where the provider's tags ride (``once_only``).
    metadata_field: ClassVar[str] = "metadata"
    #: Whether a reinforcement job is graded by the method's OpenAI grader (Fireworks grades with an evaluator).
    reinforcement_grader: ClassVar[bool] = True
    #: Whose JSONL formats training files are checked by (:data:`airflow_provider_finetune.training_data.Rules`).
    training_data_rules: ClassVar[str] = "common"
    #: Files above this many bytes go in parts through the service's own multipart upload
    #: (:meth:`multipart_flow`); ``None`` where it has none (the Uploads API, where there is one, takes them).
    multipart_threshold: ClassVar[int | None] = None
    #: The largest file the service takes, in bytes (the Uploads API's 8 GB).
    max_file_size: ClassVar[int] = 8 * 1024**3

    capabilities: Capabilities = Capabilities()
    #: What to use instead of a capability the service lacks, by capability: said on the line that refuses it.
    instead: ClassVar[Mapping[str, str]] = {}
    limits: Limits = Limits()

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings.base_url!r})"

    # -- what the service can do ---------------------------------------------------------------------------

    def supports(self, capability: str) -> bool:
        """Whether the service has ``capability`` (a field name of :class:`Capabilities`)."""
        return bool(getattr(self.capabilities, capability))

    def require(self, capability: str, *, job_id: str | None = None) -> None:
        """Refuse, before any request, what the service cannot do: one line naming the service and the lack.

        :raises UnsupportedCapabilityError: when the service lacks ``capability``.
        """
        if not hasattr(self.capabilities, capability):  # a typo here would silently allow everything
            raise ValueError(f"unknown capability {capability!r}")
        if not self.supports(capability):
            what = CAPABILITY_NAMES.get(capability, capability)
            where = f" (job {job_id})" if job_id else ""
            hint = f"; {self.instead[capability]}" if capability in self.instead else ""
            raise UnsupportedCapabilityError(
                f"{self.label} does not support {what}{where}: {self.settings.base_url} cannot be asked for it{hint}",
                service=self.service,
                capability=capability,
            )

    def _lacking(self, capability: str, call: str) -> NoReturn:
        """Refuse ``call``: the service lacks ``capability``, or its backend has it but does not make the call."""
        self.require(capability)
        raise NotImplementedError(f"{self.label} says it has {capability} but its backend makes no {call}")

    # -- how requests authenticate and read ----------------------------------------------------------------

    def auth(self) -> httpx.Auth | None:
        """The ``httpx.Auth`` that authenticates each request (per-request signing fits here)."""
        key = self.settings.api_key
        return HeaderAuth("Authorization", f"Bearer {key}") if key else None

    def read_error(self, response: httpx.Response, body: Any) -> ErrorFields:
        """Read an error answer of this service."""
        return read_openai_error(response, body)

    def headers(self) -> dict[str, str]:
        """Headers of the service's own that every request carries (none by default)."""
        return {}

    def make_client(self) -> httpx.Client:
        """A sync client for this service."""
        return self.settings.make_client(auth=self.auth(), headers=self.headers())

    def make_async_client(self) -> httpx.AsyncClient:
        """An async client for this service."""
        return self.settings.make_async_client(auth=self.auth(), headers=self.headers())

    def make_storage_client(self, timeout: httpx.Timeout, *, follow_redirects: bool = False) -> httpx.Client:
        """A sync client for a storage host's presigned addresses: nothing of the connection goes with it."""
        return httpx.Client(timeout=timeout, follow_redirects=follow_redirects)

    def make_async_storage_client(self, timeout: httpx.Timeout, *, follow_redirects: bool = False) -> httpx.AsyncClient:
        """An async client for a storage host's presigned addresses: nothing of the connection goes with it."""
        return httpx.AsyncClient(timeout=timeout, follow_redirects=follow_redirects)

    def client_job_id(self, tag: str, fingerprint: str, generation: int) -> str:
        """The id a task instance's job is created as, where the client chooses it (``once_only = "client_job_id"``).

        Deterministic in its arguments; override only where the service's naming rules demand another form.
        """
        from airflow_provider_finetune.rules.once import client_job_id

        return client_job_id(tag, fingerprint, generation)

    def job_url(self, job_id: str) -> str | None:
        """The job's page on the service's dashboard, or ``None`` where there is none (no broken links)."""
        return None

    def multipart_flow(self, stream: IO[bytes], name: str, size: int, purpose: str) -> Flow[FileObject]:
        """The flow that uploads a file above :attr:`multipart_threshold` in parts (a service's own way)."""
        raise NotImplementedError(f"{self.label} has no multipart upload of its own")

    def price_flow(
        self, request: CreateFineTuningJobRequest, options: Mapping[str, Any] | None = None
    ) -> Flow[Any] | None:
        """Where the service prices every job before its create, the flow that asks and refuses it; else ``None``."""
        return None

    def dataset_flow(self, stream: IO[bytes], name: str, size: int, sha256: str, examples: int | None) -> Flow[str]:
        """Upload a checked JSONL file as the dataset a job references (``file_reference``); return its name."""
        raise UnsupportedCapabilityError(
            f"{self.label} takes training data as files, not datasets", service=self.service, capability="files"
        )

    def estimate_price(self, body: Mapping[str, Any]) -> Call[PriceEstimate] | None:
        """The service's own estimate of what a create ``body`` will cost, where it makes one; else ``None``.

        Without one, a budget cap estimates from the training data and a price. (Together's estimate, which also
        says whether the account may proceed, is asked by its backend before every create and checked as well.)
        """
        return None

    # -- translation: the service's answers onto the canonical shapes (identities where they are the same) ----

    def job_from(self, data: Any) -> Any:
        """Turn the service's job JSON into the canonical job shape."""
        return data

    def event_from(self, data: Any) -> Any:
        """Turn the service's event JSON into the canonical event shape."""
        return data

    def page_of(self, item: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Translate each item of a list answer with ``item``."""

        def translate(data: Any) -> Any:
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                return {**data, "data": [item(x) for x in data["data"]]}
            return data

        return translate

    # -- the calls: what every backend makes (the core), and what a service has only where it says so ---------

    def _refuse_options(self, options: Mapping[str, Any] | None) -> None:
        """Refuse ``service_options`` on a service that has no options of its own."""
        if options:
            raise InvalidRequestError(
                f"service_options: {self.label} takes no options of its own", field="service_options"
            )

    def _check_request(self, request: CreateFineTuningJobRequest) -> None:
        """Refuse, before any request, a suffix, method or metadata the service's abilities and limits exclude."""
        if request.suffix is not None:
            if not self.capabilities.suffix:
                self.require("suffix")
            if len(request.suffix) > self.limits.max_suffix_length:
                raise InvalidRequestError(
                    f"Invalid fine-tuning request: suffix: {len(request.suffix)} characters given, {self.label} "
                    f"takes at most {self.limits.max_suffix_length}",
                    field="suffix",
                )
        method = request.method.type if request.method is not None else "supervised"
        if method not in self.limits.methods:
            raise InvalidRequestError(
                f"Invalid fine-tuning request: method.type: {self.label} does not fine-tune with {method!r} "
                f"(it takes {', '.join(sorted(self.limits.methods))})",
                field="method.type",
            )
        if request.metadata and not self.capabilities.job_metadata:
            raise InvalidRequestError(
                f"Invalid fine-tuning request: metadata: {self.label} jobs carry no metadata", field="metadata"
            )

    def job_body(self, request: CreateFineTuningJobRequest, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The create body this service takes for a canonical request; refuses what cannot be translated."""
        raise NotImplementedError(f"{self.label}'s backend makes no job_body")

    def epoch_rule(self, request: CreateFineTuningJobRequest, body: Mapping[str, Any]) -> EpochRule:
        """How the service settles the epochs of the job ``body`` creates, for a cost estimate."""
        raise NotImplementedError(f"{self.label}'s backend makes no epoch_rule")

    def _job(self) -> Callable[[httpx.Response], FineTuningJob]:
        return model(FineTuningJob, self.job_from)

    def create_job(
        self, request: CreateFineTuningJobRequest | Mapping[str, Any], options: Mapping[str, Any] | None = None
    ) -> Call[FineTuningJob]:
        """Create a job (not re-sent when its outcome is unknown); :meth:`ensure_flow` creates once only."""
        return self.create_prepared_job(self.job_body(_request(CreateFineTuningJobRequest, request), options))

    def create_prepared_job(self, body: Mapping[str, Any], *, job_id: str | None = None) -> Call[FineTuningJob]:
        """Create a job from a body :meth:`job_body` made, under ``job_id`` where the client chooses it."""
        raise NotImplementedError(f"{self.label}'s backend makes no create_prepared_job")

    def ensure_flow(
        self,
        request: CreateFineTuningJobRequest | Mapping[str, Any],
        identity: JobIdentity,
        *,
        policy: RetryPolicy,
        on_changed_request: OnChangedRequest = "cancel_and_create",
        service_options: Mapping[str, Any] | None = None,
        now: float,
        log: Any = None,
    ) -> Flow[tuple[FineTuningJob, bool]]:
        """Create the job of ``identity`` unless it exists (:func:`~airflow_provider_finetune.rules.once.ensure_job`).

        Each of the rule's steps is carried out with this service's calls; its answers are the rule's: an unknown
        job is ``None``, an unknown create the error. Returns the job, and whether this flow created it.
        """
        model_request = (
            request
            if isinstance(request, CreateFineTuningJobRequest)
            else build_request(CreateFineTuningJobRequest, request)
        )
        if self.once_only == "idempotency_token":  # a dialect whose way is not built in here
            raise InvalidRequestError(
                f"{self.label} makes a create once-only by {self.once_only}, which this provider cannot do",
                field="service",
            )
        steps = ensure_job(
            self.job_body(model_request, service_options),
            self.tagged(identity, service_options),
            job_metadata=self.once_only == "metadata",
            metadata_filter=self.capabilities.metadata_filter,
            policy=policy,
            on_changed_request=on_changed_request,
            now=now,
            log=log,
            job_ids=self.client_job_id if self.once_only == "client_job_id" else None,
            metadata_field=self.metadata_field,
        )
        return (yield from translated(steps, self._once_call, _once_answer))

    def tagged(self, identity: JobIdentity, service_options: Mapping[str, Any] | None) -> JobIdentity:
        """``identity`` as this service carries it on a job: a tag it cannot hold as it is goes translated."""
        return identity

    def _once_call(self, step: Any) -> Any:
        """The request that carries out one step of the once-only rule (its other steps go as they are)."""
        if isinstance(step, ListJobs):
            return self.list_jobs(step.after, 100, step.metadata)
        if isinstance(step, GetJob):
            return self.job_call("GET", step.job_id)
        if isinstance(step, CreateJob):
            if step.job_id is not None:
                return self.create_prepared_job(step.body, job_id=step.job_id)
            return self.create_prepared_job(step.body)
        if isinstance(step, CancelJob):
            return self.job_call("POST", step.job_id, "cancel")
        return step

    def job_call(self, method: str, job_id: str, action: str | None = None) -> Call[FineTuningJob]:
        """``GET`` a job, or ``POST`` one of its actions (``cancel``, ``pause``, ``resume``)."""
        raise NotImplementedError(f"{self.label}'s backend makes no job_call")

    def list_jobs(
        self, after: str | None, limit: int | None, metadata: Mapping[str, str] | None
    ) -> Call[Page[FineTuningJob]]:
        """``GET /fine_tuning/jobs``, newest first, filtered by metadata where the service can."""
        raise NotImplementedError(f"{self.label}'s backend makes no list_jobs")

    def list_job_states(self, after: str | None, limit: int | None) -> Call[Page[JobState]]:
        """The job list read as lean states (the poller watching many jobs)."""
        raise NotImplementedError(f"{self.label}'s backend makes no list_job_states")

    def next_page(self, call: Call[Page[M]], page: Page[M]) -> Call[Page[M]] | None:
        """The call for the page after ``page``: the cursor is the last id (``after``)."""
        raise NotImplementedError(f"{self.label}'s backend makes no next_page")

    def events(self, job_id: str, after: str | None, limit: int | None) -> Call[Page[FineTuningJobEvent]]:
        """A page of a job's events, newest first."""
        return self._lacking("events", "events")

    def checkpoints(self, job_id: str, after: str | None, limit: int | None) -> Call[Page[FineTuningJobCheckpoint]]:
        """A page of a job's checkpoints, newest first."""
        return self._lacking("checkpoints", "checkpoints")

    def permissions(
        self, checkpoint: str, project_id: str | None, after: str | None, limit: int | None, order: str | None
    ) -> Call[Page[CheckpointPermission]]:
        """A page of a checkpoint's permissions."""
        self.require("checkpoint_permissions")
        raise NotImplementedError(
            f"{self.label} says it has checkpoint_permissions but its backend makes no permissions"
        )

    def grant(self, checkpoint: str, project_ids: list[str]) -> Call[Page[CheckpointPermission]]:
        """Share a checkpoint with projects."""
        return self._lacking("checkpoint_permissions", "grant")

    def revoke(self, checkpoint: str, permission_id: str) -> Call[DeletedCheckpointPermission]:
        """Revoke one permission of a checkpoint."""
        return self._lacking("checkpoint_permissions", "revoke")

    def run_grader(self, grader: Any, model_sample: str, item: Mapping[str, Any] | None) -> Call[GraderRunResult]:
        """Run a grader on one sample."""
        return self._lacking("graders", "run_grader")

    def validate_grader(self, grader: Any) -> Call[GraderValidation]:
        """Have the service validate a grader."""
        return self._lacking("graders", "validate_grader")

    def get_file(self, file_id: str) -> Call[FileObject]:
        """Retrieve a file's description."""
        return self._lacking("files", "get_file")

    def delete_file(self, file_id: str) -> Call[DeletedFile]:
        """Delete a file."""
        return self._lacking("files", "delete_file")

    def file_content(self, file_id: str) -> Call[bytes]:
        """Download a file's content."""
        return self._lacking("files", "file_content")

    def list_files(self, purpose: str | None, after: str | None, limit: int | None) -> Call[Page[FileObject]]:
        """A page of files."""
        return self._lacking("files", "list_files")

    def create_file(self, stream: IO[bytes], name: str, purpose: str) -> Call[FileObject]:
        """Upload a file in one request, re-read from the start on each attempt."""
        return self._lacking("files", "create_file")

    def file_flow(self, stream: IO[bytes], name: str, purpose: str) -> Flow[FileObject]:
        """Upload a file in one request (:meth:`create_file`); a service whose upload takes more overrides this."""
        return cast("FileObject", raised((yield self.create_file(stream, name, purpose))))

    def create_upload(self, name: str, size: int, purpose: str) -> Call[Upload]:
        """Start an upload of ``size`` bytes (the Uploads API)."""
        return self._lacking("uploads", "create_upload")

    def add_part(self, upload_id: str, data: bytes) -> Call[UploadPart]:
        """Add one part to an upload."""
        return self._lacking("uploads", "add_part")

    def complete_upload(self, upload_id: str, part_ids: list[str], md5: str | None) -> Call[Upload]:
        """Complete an upload with its parts in order."""
        return self._lacking("uploads", "complete_upload")

    def upload_action(self, upload_id: str, action: str) -> Call[Upload]:
        """``POST /uploads/{id}/{action}`` (``cancel``)."""
        return self._lacking("uploads", "upload_action")

    def parts_flow(self, stream: IO[bytes], name: str, size: int, purpose: str, part_size: int) -> Flow[FileObject]:
        """Upload a file through the Uploads API in parts of ``part_size`` bytes, with an md5 check."""
        return self._lacking("uploads", "parts_flow")

    def chat_completion(self, body: Mapping[str, Any]) -> Call[dict[str, Any]]:
        """``POST /chat/completions``: ask a (fine-tuned) model, e.g. to evaluate it."""
        return self._lacking("chat_completions", "chat_completion")


def _once_answer(step: Any, answer: Any) -> Any:
    """What a step of the once-only rule is answered when its request failed; other failures end the flow."""
    if not isinstance(answer, FineTuningError):
        return answer
    if isinstance(step, GetJob) and isinstance(answer, NotFoundError):
        return None
    if isinstance(step, CreateJob) and isinstance(answer, UnsafeToRetryError):
        return answer
    if isinstance(step, CreateJob) and step.job_id is not None and isinstance(answer, ConflictError):
        return answer  # the id is in use: the job is looked up by it
    if isinstance(step, CancelJob) and isinstance(answer, ConflictError):
        return None  # it ended between the read and the cancel: ended, as the cancel meant it to be
    raise answer
