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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import IO, TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel

from airflow_provider_finetune.core.client import ErrorFields, read_openai_error
from airflow_provider_finetune.exceptions import InvalidRequestError, UnsupportedCapabilityError

if TYPE_CHECKING:
    from airflow_provider_finetune.core.client import ConnectionSettings
    from airflow_provider_finetune.models import FileObject
    from airflow_provider_finetune.rules.budget import PriceEstimate

__all__ = [
    "CAPABILITY_NAMES",
    "CONTENT_ACCEPT",
    "Backend",
    "Call",
    "Capabilities",
    "HeaderAuth",
    "Limits",
    "OnceOnly",
    "json_model",
    "model",
    "refuse_untranslatable",
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
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    multipart: Callable[[], tuple[dict[str, str], dict[str, Any]]] | None = None
    idempotent: bool = True
    accept: str | None = None

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


def json_model(cls: type[M]) -> Callable[[httpx.Response], M]:
    """Parse straight from the JSON bytes: fields the model ignores are never built as Python objects."""

    def parse(response: httpx.Response) -> M:
        return cls.model_validate_json(response.content)

    return parse


@dataclass(frozen=True)
class Capabilities:
    """What a service can do. Asking for what it lacks is refused before any request is sent.

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
    """

    events: bool = True
    checkpoints: bool = True
    pause: bool = True
    resume: bool = True
    cancel: bool = True
    checkpoint_permissions: bool = True
    graders: bool = True
    uploads: bool = True
    files: bool = True
    suffix: bool = True
    job_metadata: bool = True
    metadata_filter: bool = True
    client_job_id: bool = False
    idempotency_token: bool = False

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
    #: What a job's training and validation data are referenced by.
    file_reference: ClassVar[Literal["file_id", "s3_uri", "dataset"]] = "file_id"
    #: How a create is made once-only: ``metadata`` (the tag and fingerprint ride on the job), ``intent`` (an intent
    #: record in the task's state store, and the request's fields), ``client_job_id`` or ``idempotency_token``.
    once_only: ClassVar[OnceOnly] = "metadata"
    #: Whether a reinforcement job is graded by the method's OpenAI grader (Fireworks grades with an evaluator).
    reinforcement_grader: ClassVar[bool] = True
    #: Whose JSONL formats training files are checked by (:data:`airflow_provider_finetune.training_data.Rules`).
    training_data_rules: ClassVar[Literal["openai", "together"]] = "openai"
    #: Files above this many bytes go in parts through the service's own multipart upload
    #: (:meth:`upload_multipart`); ``None`` where it has none (the Uploads API, where there is one, takes them).
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

    # -- how requests authenticate and read ----------------------------------------------------------------

    def auth(self) -> httpx.Auth | None:
        """The ``httpx.Auth`` that authenticates each request (per-request signing fits here)."""
        key = self.settings.api_key
        return HeaderAuth("Authorization", f"Bearer {key}") if key else None

    def read_error(self, response: httpx.Response, body: Any) -> ErrorFields:
        """Read an error answer of this service."""
        return read_openai_error(response, body)

    def make_client(self) -> httpx.Client:
        """A sync client for this service."""
        return self.settings.make_client(auth=self.auth())

    def make_async_client(self) -> httpx.AsyncClient:
        """An async client for this service."""
        return self.settings.make_async_client(auth=self.auth())

    def client_job_id(self, tag: str, fingerprint: str, generation: int) -> str:
        """The id a task instance's job is created as, where the client chooses it (``once_only = "client_job_id"``).

        Deterministic in its arguments; override only where the service's naming rules demand another form.
        """
        from airflow_provider_finetune.rules.once import client_job_id

        return client_job_id(tag, fingerprint, generation)

    def job_url(self, job_id: str) -> str | None:
        """The job's page on the service's dashboard, or ``None`` where there is none (no broken links)."""
        return None

    def upload_multipart(self, hook: Any, stream: IO[bytes], name: str, size: int, purpose: str) -> FileObject:
        """Upload a file above :attr:`multipart_threshold` in parts through ``hook`` (a service's own way)."""
        raise NotImplementedError(f"{self.label} has no multipart upload of its own")

    async def aupload_multipart(self, hook: Any, stream: IO[bytes], name: str, size: int, purpose: str) -> FileObject:
        """Async :meth:`upload_multipart`."""
        raise NotImplementedError(f"{self.label} has no multipart upload of its own")

    def estimate_price(self, body: Mapping[str, Any]) -> Call[PriceEstimate] | None:
        """The service's own estimate of what a create ``body`` will cost, where it makes one; else ``None``.

        Without one, a budget cap estimates from the training data and a price. (Together's estimate, which also
        says whether the account may proceed, is asked by its backend before every create and checked as well.)
        """
        return None
