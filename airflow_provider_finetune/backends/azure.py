"""Azure OpenAI (Microsoft Foundry): the versioned authoring API and the v1 surface.

The two surfaces differ (``../shared/azure-spec/README.md`` has the table); one backend each:

* **authoring** ``{endpoint}/openai/...?api-version=2024-10-21`` (or a dated preview): ``api-key`` header (or a
  Microsoft Entra ID token from a preview on), no metadata on jobs, statuses ``created`` / ``pending`` and, in
  the previews, ``pausing`` / ``paused`` / ``resuming``; suffix of at most 40; hyperparameters are numbers
  only; errors ``{"error": {"code", "message", "target", "details", "innererror"}}``.
* **v1** ``{endpoint}/openai/v1/...``: OpenAI's shapes with metadata on jobs but no metadata filter on the list,
  pause and resume, no Uploads API, and a file upload that must say when the file expires.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, Generator, Mapping
from dataclasses import replace
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel

from airflow_provider_finetune.backends.base import Call, HeaderAuth, Limits, model, read_openai_error
from airflow_provider_finetune.backends.openai import OpenAIBackend
from airflow_provider_finetune.core.client import ConnectionSettings, ErrorFields, path_param
from airflow_provider_finetune.core.statuses import FineTuningJobStatus, canonical
from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.models import CreateFineTuningJobRequest, FileObject, Page
from airflow_provider_finetune.rules.once import ECHOED_REQUEST

__all__ = [
    "AZURE_STATUSES",
    "STABLE_API_VERSION",
    "AzureAuthoringBackend",
    "AzureV1Backend",
    "EntraIdAuth",
    "azure_backend",
]

M = TypeVar("M", bound=BaseModel)

#: The newest stable authoring version, used when a connection names none.
STABLE_API_VERSION = "2024-10-21"
#: The scope of a Microsoft Entra ID token for Azure OpenAI.
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
#: A token is refreshed this long before it expires.
TOKEN_REFRESH_MARGIN = 300.0
#: How long an uploaded file is kept on the v1 surface, which requires a term (14 to 30 days): the longest.
V1_FILE_EXPIRY_SECONDS = 2_592_000

_S = FineTuningJobStatus
#: Azure's job statuses, each onto its canonical one: ``created`` and ``pending`` are a job that waits its turn.
AZURE_STATUSES: dict[str, FineTuningJobStatus] = {
    "created": _S.QUEUED,
    "pending": _S.QUEUED,
    "notRunning": _S.QUEUED,
    "validating_files": _S.VALIDATING_FILES,
    "queued": _S.QUEUED,
    "running": _S.RUNNING,
    "pausing": _S.PAUSING,
    "paused": _S.PAUSED,
    "resuming": _S.RESUMING,
    "succeeded": _S.SUCCEEDED,
    "failed": _S.FAILED,
    "cancelled": _S.CANCELLED,
}


def _hyperparameters_from(block: Any) -> Any:
    # Azure reports the service's default as -1 where OpenAI says "auto".
    if not isinstance(block, dict):
        return block
    return {k: ("auto" if v == -1 else v) for k, v in block.items()}


class EntraIdAuth(httpx.Auth):
    """A Microsoft Entra ID bearer token from ``azure-identity``, refreshed before it expires.

    :param credential: an ``azure.identity`` credential (``DefaultAzureCredential()`` by default).
    :param scope: the token's scope.
    """

    def __init__(self, credential: Any = None, *, scope: str = ENTRA_SCOPE) -> None:
        if credential is None:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError as err:  # the optional extra
                raise InvalidRequestError(
                    "auth 'entra' needs azure-identity: pip install 'airflow-provider-finetune[azure]'", field="auth"
                ) from err
            credential = DefaultAzureCredential()
        self._credential = credential
        self._scope = scope
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._scope!r})"

    def _fresh(self) -> bool:
        return self._token is not None and time.time() < self._expires_on - TOKEN_REFRESH_MARGIN

    def token(self) -> str:
        """The current token, fetched again when it is about to expire."""
        with self._lock:
            if not self._fresh():
                got = self._credential.get_token(self._scope)
                self._token, self._expires_on = got.token, float(got.expires_on)
            assert self._token is not None
            return self._token

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Authenticate a sync request."""
        request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Authenticate an async request; a token fetch (blocking I/O) runs in a thread."""
        import asyncio

        token = self._token if self._fresh() else await asyncio.to_thread(self.token)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


class _AzureBackend(OpenAIBackend):
    """What both Azure surfaces share: the key header, Entra ID, the request id header."""

    service: ClassVar[str] = "azure"

    def auth(self) -> httpx.Auth | None:
        """``api-key``, or a Microsoft Entra ID token with ``auth: entra``."""
        if (self.settings.auth or "key") == "entra":
            return EntraIdAuth()
        return HeaderAuth("api-key", self.settings.api_key) if self.settings.api_key else None

    def job_from(self, data: Any) -> Any:
        """Azure's job onto the canonical one: statuses, ``organisation_id``, ``-1`` defaults."""
        if not isinstance(data, dict):
            return data
        job = dict(data)
        job["status"] = canonical(AZURE_STATUSES, job.get("status"))
        if "organisation_id" in job and "organization_id" not in job:
            job["organization_id"] = job.pop("organisation_id")
        if "hyperparameters" in job:
            job["hyperparameters"] = _hyperparameters_from(job["hyperparameters"])
        method = job.get("method")
        if isinstance(method, dict):
            job["method"] = {
                k: (
                    {**v, "hyperparameters": _hyperparameters_from(v.get("hyperparameters"))}
                    if isinstance(v, dict)
                    else v
                )
                for k, v in method.items()
            }
        # What the job reports of its request, compared with a request's when a lost create is looked for:
        # without it, a sibling task's job of the same model and files (another suffix, other epochs) would do.
        job[ECHOED_REQUEST] = {k: job[k] for k in ("suffix", "hyperparameters", "method") if job.get(k) is not None}
        return job

    def event_from(self, data: Any) -> Any:
        """Azure's ``warning`` level is the canonical ``warn``."""
        if isinstance(data, dict) and data.get("level") == "warning":
            return {**data, "level": "warn"}
        return data

    def _request_id(self, response: httpx.Response) -> str | None:
        headers = response.headers
        return headers.get("apim-request-id") or headers.get("x-ms-request-id") or headers.get("x-request-id")

    #: Whether ``GET /files`` takes ``limit`` and ``after``: only the dated previews declare them.
    file_list_pages: bool = False

    def list_files(self, purpose: str | None, after: str | None, limit: int | None) -> Call[Page[FileObject]]:
        """``GET /files``, as far as the surface's list takes it.

        Where the list does not page (it declares ``purpose`` only: stable authoring and v1), the whole list
        comes in one answer: ``limit`` is not sent and a cursor is refused before any request.
        """
        if self.file_list_pages:
            return super().list_files(purpose, after, limit)
        if after is not None:
            raise InvalidRequestError(
                f"after: {self.label}'s file list does not page (it takes only purpose)", field="after"
            )
        return Call("GET", "files", model(Page[FileObject]), params={"purpose": purpose})

    def next_page(self, call: Call[Page[M]], page: Page[M]) -> Call[Page[M]] | None:
        """No next page of a file list that does not page, whatever its ``has_more`` says."""
        if call.path == "files" and not self.file_list_pages:
            return None
        return super().next_page(call, page)


class AzureAuthoringBackend(_AzureBackend):
    """The versioned authoring API: ``{endpoint}/openai/...?api-version=...``."""

    label: ClassVar[str] = "Azure OpenAI"
    once_only = "intent"

    def __init__(self, settings: ConnectionSettings) -> None:
        super().__init__(settings)
        self.api_version = settings.api_version or STABLE_API_VERSION
        preview = "preview" in self.api_version
        self.label = f"Azure OpenAI (api-version {self.api_version})"  # type: ignore[misc]
        # OpenAI's API without permissions, graders, metadata or a metadata filter; pause only in preview.
        self.capabilities = replace(
            OpenAIBackend.capabilities,
            pause=preview,
            resume=preview,
            checkpoint_permissions=False,
            graders=False,
            job_metadata=False,
            metadata_filter=False,
        )
        self.limits = Limits(
            max_suffix_length=40,
            max_metadata_keys=0,
            hyperparameters_auto=False,
            methods=frozenset({"supervised", "dpo"}) if preview else frozenset({"supervised"}),
        )
        self.preview = preview
        self.file_list_pages = preview

    def read_error(self, response: httpx.Response, body: Any) -> ErrorFields:
        """``{"error": {"code", "message", "target", "details", "innererror"}}``."""
        detail = body.get("error") if isinstance(body, dict) else None
        if not isinstance(detail, dict):
            return read_openai_error(response, body)
        inner = detail.get("innererror")
        inner_code = inner.get("code") if isinstance(inner, dict) else None
        return azure_refusal(
            ErrorFields(
                message=str(detail.get("message") or ""),
                code=None if detail.get("code") is None else str(detail["code"]),
                param=None if detail.get("target") is None else str(detail["target"]),
                error_type=None if inner_code is None else str(inner_code),
                request_id=self._request_id(response),
            )
        )

    def job_body(self, request: CreateFineTuningJobRequest, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Azure's create body: numbers for hyperparameters (``"auto"`` is left to the service's default)."""
        self._refuse_options(options)
        self._check_request(request)
        if request.integrations and not self.preview:
            raise InvalidRequestError(
                f"Invalid fine-tuning request: integrations: {self.label} takes no integrations "
                "(api-version 2025-04-01-preview or later does)",
                field="integrations",
            )
        body = request.to_body()
        method = body.pop("method", None)
        if isinstance(method, dict):
            kind = method.get("type", "supervised")
            block = method.get(kind) or {}
            hyperparameters = _numbers_only(block.get("hyperparameters"))
            if self.preview:
                inner = {"hyperparameters": hyperparameters} if hyperparameters else {}
                body["method"] = {"type": kind, kind: inner}
            elif hyperparameters:
                body["hyperparameters"] = hyperparameters
        return body

    def chat_completion(self, body: Mapping[str, Any]) -> Call[dict[str, Any]]:
        """The authoring API serves a model under a deployment: ``deployments/{model}/chat/completions``."""
        model_name = body.get("model")
        if not isinstance(model_name, str) or not model_name:
            raise InvalidRequestError("model: the deployment to ask must be named", field="model")
        rest = {k: v for k, v in body.items() if k != "model"}
        path = f"deployments/{path_param('model', model_name)}/chat/completions"
        return Call("POST", path, lambda response: response.json(), json=rest)


#: Azure's code of a refusal for its fine-tuning quota (jobs running and queued per resource): waited for.
AZURE_QUOTA_CODE = "quotaExceeded"


def azure_refusal(fields: ErrorFields) -> ErrorFields:
    """Mark Azure's quota refusal (``quotaExceeded``, on both surfaces); ``tooManyRequests`` stays transient."""
    if fields.code != AZURE_QUOTA_CODE:
        return fields
    from dataclasses import replace

    return replace(fields, refusal="quota", quota="fine-tuning jobs running and queued on the Azure resource")


def _numbers_only(block: Any) -> dict[str, Any]:
    if not isinstance(block, Mapping):
        return {}
    return {k: v for k, v in block.items() if v != "auto"}


class AzureV1Backend(_AzureBackend):
    """The v1 surface: ``{endpoint}/openai/v1/...``, OpenAI's shapes, ``api-key`` or a Bearer token."""

    label: ClassVar[str] = "Azure OpenAI (v1)"

    #: OpenAI's API without checkpoint permissions, graders, uploads or a metadata filter.
    capabilities = replace(
        OpenAIBackend.capabilities, checkpoint_permissions=False, graders=False, uploads=False, metadata_filter=False
    )

    def auth(self) -> httpx.Auth | None:
        """``api-key``; an Entra ID token with ``auth: entra``."""
        return super().auth()

    def read_error(self, response: httpx.Response, body: Any) -> ErrorFields:
        """OpenAI's error shape with Azure's request id header and Azure's quota refusal."""
        fields = azure_refusal(read_openai_error(response, body))
        if fields.request_id is None:
            from dataclasses import replace

            return replace(fields, request_id=self._request_id(response))
        return fields

    def file_form(self, purpose: str) -> dict[str, str]:
        """v1 requires an expiry on every upload: the longest it allows, anchored at creation."""
        return {
            "purpose": purpose,
            "expires_after[anchor]": "created_at",
            "expires_after[seconds]": str(V1_FILE_EXPIRY_SECONDS),
        }


def azure_backend(settings: ConnectionSettings) -> _AzureBackend:
    """The Azure surface a connection names: v1 for ``/openai/v1`` or api-version ``v1``/``preview``."""
    path = urlsplit(settings.base_url).path.rstrip("/")
    version = settings.api_version
    if (
        path.endswith("/openai/v1")
        or version in ("v1", "preview")
        or (version is None and not path.endswith("/openai"))
    ):
        return AzureV1Backend(_with_base(settings, "/openai/v1", None if version in (None, "v1") else version))
    return AzureAuthoringBackend(_with_base(settings, "/openai", version or STABLE_API_VERSION))


def _with_base(settings: ConnectionSettings, suffix: str, api_version: str | None) -> ConnectionSettings:
    from dataclasses import replace

    base = settings.base_url.rstrip("/")
    for known in ("/openai/v1", "/openai"):
        if base.endswith(known):
            base = base[: -len(known)]
            break
    return replace(settings, base_url=base + suffix, api_version=api_version)
