"""The OpenAI fine-tuning API, and the OpenAI-compatible services and gateways that speak it.

Each endpoint is one :class:`~airflow_provider_finetune.backends.base.Call` made by one method; the other
dialects (:mod:`.azure`) inherit these and change only what their service does differently.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import IO, Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel

from airflow_provider_finetune.backends.base import (
    CONTENT_ACCEPT,
    MAX_PART_SIZE,
    Backend,
    Call,
    Capabilities,
    HeaderAuth,
    Limits,
    json_answer,
    json_model,
    model,
)
from airflow_provider_finetune.core.client import path_param
from airflow_provider_finetune.core.flows import Flow, raised
from airflow_provider_finetune.exceptions import (
    FineTuningAPIError,
    FineTuningError,
    InvalidRequestError,
)
from airflow_provider_finetune.models import (
    CheckpointPermission,
    CompleteUploadRequest,
    CreateCheckpointPermissionRequest,
    CreateFineTuningJobRequest,
    CreateUploadRequest,
    DeletedCheckpointPermission,
    DeletedFile,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    GraderRunResult,
    GraderValidation,
    JobState,
    Page,
    RunGraderRequest,
    Upload,
    UploadPart,
    ValidateGraderRequest,
    build_request,
)
from airflow_provider_finetune.rules.budget import EpochRule, auto_epochs, requested_epochs

__all__ = ["PRESETS", "OpenAIBackend", "OpenAICompatibleBackend"]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

_log = logging.getLogger(__name__)

MB = 1024 * 1024


def _limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidRequestError(f"limit must be a positive integer, got {limit!r}", field="limit")
    return limit


def mime_type(name: str) -> str:
    """The content type of an uploaded file, by its name."""
    if name.endswith(".jsonl"):
        return "application/jsonl"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class OpenAIFiles(Backend):
    """OpenAI's files API as published (``/files``): what a service that speaks it shares with OpenAI's backend."""

    def file_call(self, method: str, file_id: str, parse: Callable[[httpx.Response], T], action: str = "") -> Call[T]:
        """A call on one file (``GET``, ``DELETE``, ``GET .../content``)."""
        path = f"files/{path_param('file_id', file_id)}" + (f"/{action}" if action else "")
        return Call(method, path, parse)

    def get_file(self, file_id: str) -> Call[FileObject]:
        """Retrieve a file's description."""
        return self.file_call("GET", file_id, model(FileObject))

    def delete_file(self, file_id: str) -> Call[DeletedFile]:
        """Delete a file."""
        return self.file_call("DELETE", file_id, model(DeletedFile))

    def file_content(self, file_id: str) -> Call[bytes]:
        """Download a file's content."""
        return replace(self.file_call("GET", file_id, _bytes, "content"), accept=CONTENT_ACCEPT)

    def list_files(self, purpose: str | None, after: str | None, limit: int | None) -> Call[Page[FileObject]]:
        """A page of files."""
        params = {"purpose": purpose, "after": after, "limit": _limit(limit)}
        return Call("GET", "files", model(Page[FileObject]), params=params)

    def file_form(self, purpose: str) -> dict[str, str]:
        """The form fields sent beside the file on ``POST /files``."""
        return {"purpose": purpose}

    def create_file(self, stream: IO[bytes], name: str, purpose: str) -> Call[FileObject]:
        """``POST /files`` (multipart), re-read from the start on each attempt."""
        start = stream.tell()
        form = self.file_form(purpose)

        def multipart() -> tuple[dict[str, str], dict[str, Any]]:
            stream.seek(start)
            return form, {"file": (name, stream, mime_type(name))}

        # A create: never sent again when the service may have made the file (the caller looks it up).
        return Call("POST", "files", model(FileObject), multipart=multipart, idempotent=False)


class OpenAIBackend(OpenAIFiles):
    """The OpenAI fine-tuning API as published (``../openai-spec``): every capability, Bearer keys."""

    service: ClassVar[str] = "openai"
    label: ClassVar[str] = "OpenAI"

    capabilities = Capabilities(
        chat_completions=True,
        events=True,
        checkpoints=True,
        pause=True,
        resume=True,
        cancel=True,
        checkpoint_permissions=True,
        graders=True,
        uploads=True,
        files=True,
        suffix=True,
        job_metadata=True,
        metadata_filter=True,
    )
    limits = Limits()

    def job_body(self, request: CreateFineTuningJobRequest, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The create body this service takes for a canonical request; refuses what cannot be translated.

        :param request: the canonical request.
        :param options: the options only the service has (the create operator's ``service_options``), checked
            here, before any request; a service without any (this one) refuses them.
        """
        self._refuse_options(options)
        self._check_request(request)
        return request.to_body()

    def epoch_rule(self, request: CreateFineTuningJobRequest, body: Mapping[str, Any]) -> EpochRule:
        """How the service settles the epochs of the job ``body`` (from :meth:`job_body`) creates, for a cost estimate.

        Here the request's ``n_epochs``, else (``"auto"``) OpenAI's published rule.
        """
        return EpochRule(requested_epochs(request), auto_epochs, "n_epochs")

    def headers(self) -> dict[str, str]:
        """The account's organization and project, where the connection names them."""
        headers = {}
        if self.settings.organization:
            headers["OpenAI-Organization"] = self.settings.organization
        if self.settings.project:
            headers["OpenAI-Project"] = self.settings.project
        return headers

    def job_url(self, job_id: str) -> str | None:
        """The job's page on the OpenAI dashboard; none for other hosts (no broken links)."""
        if urlsplit(self.settings.base_url).hostname != "api.openai.com":
            return None
        return f"https://platform.openai.com/finetune/{job_id}"

    # -- jobs ----------------------------------------------------------------------------------------------

    def create_prepared_job(self, body: Mapping[str, Any], *, job_id: str | None = None) -> Call[FineTuningJob]:
        """``POST /fine_tuning/jobs`` with a body :meth:`job_body` made (and the provider's tags added).

        :param job_id: the id the client chose, for services that take one (this dialect does not).
        """
        if job_id is not None:
            self.require("client_job_id")
        return Call("POST", "fine_tuning/jobs", self._job(), json=dict(body), idempotent=False)

    def list_jobs(
        self, after: str | None, limit: int | None, metadata: Mapping[str, str] | None
    ) -> Call[Page[FineTuningJob]]:
        """``GET /fine_tuning/jobs``, newest first, filtered by metadata where the service can."""
        params: dict[str, Any] = {"after": after, "limit": _limit(limit)}
        if metadata and not self.capabilities.metadata_filter:
            self.require("metadata_filter")
        for key, value in (metadata or {}).items():
            params[f"metadata[{key}]"] = value
        return Call("GET", "fine_tuning/jobs", model(Page[FineTuningJob], self.page_of(self.job_from)), params=params)

    def list_job_states(self, after: str | None, limit: int | None) -> Call[Page[JobState]]:
        """The job list read as lean states (the poller watching many jobs)."""
        params = {"after": after, "limit": _limit(limit)}
        parse = json_model(Page[JobState]) if type(self).job_from is OpenAIBackend.job_from else None
        return Call(
            "GET", "fine_tuning/jobs", parse or model(Page[JobState], self.page_of(self.job_from)), params=params
        )

    def job_call(self, method: str, job_id: str, action: str | None = None) -> Call[FineTuningJob]:
        """``GET`` a job, or ``POST`` one of its actions (``cancel``, ``pause``, ``resume``)."""
        if action in ("pause", "resume", "cancel"):
            self.require(action, job_id=job_id)
        path = f"fine_tuning/jobs/{path_param('job_id', job_id)}" + (f"/{action}" if action else "")
        return Call(method, path, self._job())

    def events(self, job_id: str, after: str | None, limit: int | None) -> Call[Page[FineTuningJobEvent]]:
        """A page of a job's events, newest first."""
        self.require("events", job_id=job_id)
        path = f"fine_tuning/jobs/{path_param('job_id', job_id)}/events"
        parse = model(Page[FineTuningJobEvent], self.page_of(self.event_from))
        return Call("GET", path, parse, params={"after": after, "limit": _limit(limit)})

    def checkpoints(self, job_id: str, after: str | None, limit: int | None) -> Call[Page[FineTuningJobCheckpoint]]:
        """A page of a job's checkpoints, newest first."""
        self.require("checkpoints", job_id=job_id)
        path = f"fine_tuning/jobs/{path_param('job_id', job_id)}/checkpoints"
        return Call("GET", path, model(Page[FineTuningJobCheckpoint]), params={"after": after, "limit": _limit(limit)})

    def next_page(self, call: Call[Page[M]], page: Page[M]) -> Call[Page[M]] | None:
        """The call for the page after ``page``: the cursor is the last id (``after``)."""
        cursor = page.next_after
        if not page.has_more or cursor is None:
            return None
        return replace(call, params={**(call.params or {}), "after": cursor})

    # -- inference ----------------------------------------------------------------------------------------

    def chat_completion(self, body: Mapping[str, Any]) -> Call[dict[str, Any]]:
        """``POST /chat/completions``: ask a (fine-tuned) model, e.g. to evaluate it."""
        return Call("POST", "chat/completions", json_answer, json=dict(body))

    # -- checkpoint permissions -----------------------------------------------------------------------------

    def _permissions_path(self, checkpoint: str) -> str:
        return f"fine_tuning/checkpoints/{path_param('checkpoint', checkpoint)}/permissions"

    def permissions(
        self, checkpoint: str, project_id: str | None, after: str | None, limit: int | None, order: str | None
    ) -> Call[Page[CheckpointPermission]]:
        """A page of a checkpoint's permissions."""
        self.require("checkpoint_permissions")
        if order is not None and order not in ("ascending", "descending"):
            raise InvalidRequestError(f"order must be 'ascending' or 'descending', got {order!r}", field="order")
        params = {"project_id": project_id, "after": after, "limit": _limit(limit), "order": order}
        return Call("GET", self._permissions_path(checkpoint), model(Page[CheckpointPermission]), params=params)

    def grant(self, checkpoint: str, project_ids: list[str]) -> Call[Page[CheckpointPermission]]:
        """Share a checkpoint with projects."""
        self.require("checkpoint_permissions")
        body = build_request(CreateCheckpointPermissionRequest, project_ids=project_ids).to_body()
        return Call("POST", self._permissions_path(checkpoint), model(Page[CheckpointPermission]), json=body)

    def revoke(self, checkpoint: str, permission_id: str) -> Call[DeletedCheckpointPermission]:
        """Revoke one permission of a checkpoint."""
        self.require("checkpoint_permissions")
        path = f"{self._permissions_path(checkpoint)}/{path_param('permission_id', permission_id)}"
        return Call("DELETE", path, model(DeletedCheckpointPermission))

    # -- graders --------------------------------------------------------------------------------------------

    def run_grader(self, grader: Any, model_sample: str, item: Mapping[str, Any] | None) -> Call[GraderRunResult]:
        """Run a grader on one sample."""
        self.require("graders")
        body = build_request(RunGraderRequest, grader=grader, model_sample=model_sample, item=item).to_body()
        return Call("POST", "fine_tuning/alpha/graders/run", model(GraderRunResult), json=body)

    def validate_grader(self, grader: Any) -> Call[GraderValidation]:
        """Have the service validate a grader."""
        self.require("graders")
        body = build_request(ValidateGraderRequest, grader=grader).to_body()
        return Call("POST", "fine_tuning/alpha/graders/validate", model(GraderValidation), json=body)

    # -- files and uploads ----------------------------------------------------------------------------------

    def create_upload(self, name: str, size: int, purpose: str) -> Call[Upload]:
        """Start an upload of ``size`` bytes (the Uploads API)."""
        self.require("uploads")
        body = build_request(
            CreateUploadRequest, filename=name, bytes=size, purpose=purpose, mime_type=mime_type(name)
        ).to_body()
        return Call("POST", "uploads", model(Upload), json=body)

    def add_part(self, upload_id: str, data: bytes) -> Call[UploadPart]:
        """Add one part to an upload."""
        self.require("uploads")
        if len(data) > MAX_PART_SIZE:
            raise InvalidRequestError(f"an upload part is at most {MAX_PART_SIZE} bytes", field="data")

        def multipart() -> tuple[dict[str, str], dict[str, Any]]:
            return {}, {"data": ("part", data, "application/octet-stream")}

        path = f"uploads/{path_param('upload_id', upload_id)}/parts"
        return Call("POST", path, model(UploadPart), multipart=multipart)

    def complete_upload(self, upload_id: str, part_ids: list[str], md5: str | None) -> Call[Upload]:
        """Complete an upload with its parts in order."""
        self.require("uploads")
        body = build_request(CompleteUploadRequest, part_ids=part_ids, md5=md5).to_body()
        path = f"uploads/{path_param('upload_id', upload_id)}/complete"
        return Call("POST", path, model(Upload), json=body, idempotent=False)

    def upload_action(self, upload_id: str, action: str) -> Call[Upload]:
        """``POST /uploads/{id}/{action}`` (``cancel``)."""
        self.require("uploads")
        return Call("POST", f"uploads/{path_param('upload_id', upload_id)}/{action}", model(Upload))

    # -- flows: operations of more than one request (:mod:`airflow_provider_finetune.core.flows`) -----------

    def parts_flow(self, stream: IO[bytes], name: str, size: int, purpose: str, part_size: int) -> Flow[FileObject]:
        """Upload a file through the Uploads API in parts of ``part_size`` bytes, with an md5 check.

        After a failure, the upload is cancelled (a cancel that fails too is logged) and the failure raised.
        """
        upload: Upload = raised((yield self.create_upload(name, size, purpose)))
        try:
            md5 = hashlib.md5(usedforsecurity=False)
            part_ids = []
            while chunk := stream.read(part_size):
                md5.update(chunk)
                part_ids.append(raised((yield self.add_part(upload.id, chunk))).id)
            done: Upload = raised((yield self.complete_upload(upload.id, part_ids, md5.hexdigest())))
        except BaseException as failure:
            if isinstance(failure, GeneratorExit):
                raise
            cancelled = yield self.upload_action(upload.id, "cancel")
            if isinstance(cancelled, FineTuningError):
                _log.warning("Could not cancel upload %s after a failure: %s", upload.id, cancelled)
            raise
        if done.file is None:
            raise FineTuningAPIError(200, f"upload {done.id} completed with status {done.status} but no file")
        return done.file


def _bytes(response: httpx.Response) -> bytes:
    return response.content


#: Gateways and OpenAI-compatible endpoints with rules of their own: what they lack, how they authenticate.
PRESETS: dict[str, tuple[str, Capabilities]] = {
    # Bedrock's OpenAI-compatible ("Mantle") endpoint: no suffix, no pause or resume, Lambda graders only
    # (run through the customization job, not the graders endpoints), no checkpoint sharing.
    "bedrock-mantle": (
        "Bedrock's OpenAI-compatible endpoint",
        Capabilities(chat_completions=True, events=True, checkpoints=True, cancel=True, files=True, job_metadata=True),
    ),
    # LiteLLM's proxy passes fine-tuning through to the provider behind it; it keeps no metadata filter,
    # checkpoints or graders of its own.
    "litellm": (
        "LiteLLM proxy",
        Capabilities(chat_completions=True, events=True, cancel=True, files=True, suffix=True, job_metadata=True),
    ),
    # Portkey routes to the provider named in its headers (x-portkey-provider or a virtual key); its
    # fine-tuning routes cover jobs, events and checkpoints.
    "portkey": (
        "Portkey gateway",
        Capabilities(
            chat_completions=True,
            events=True,
            checkpoints=True,
            cancel=True,
            files=True,
            suffix=True,
            job_metadata=True,
        ),
    ),
}


class OpenAICompatibleBackend(OpenAIBackend):
    """A service or gateway that speaks OpenAI's dialect, with a preset of what it can do.

    Without a preset nothing is assumed beyond the core: jobs, events and files; the job list is not
    trusted to filter by metadata (a job is always matched by the tag on the job itself).
    """

    service: ClassVar[str] = "openai-compatible"
    label: ClassVar[str] = "OpenAI-compatible service"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        preset = settings.preset
        if preset:
            if preset not in PRESETS:
                raise InvalidRequestError(
                    f"preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}", field="preset"
                )
            self.label, self.capabilities = PRESETS[preset]  # type: ignore[misc]
        else:
            self.capabilities = Capabilities(
                chat_completions=True,
                events=True,
                checkpoints=True,
                cancel=True,
                uploads=True,
                files=True,
                suffix=True,
                job_metadata=True,
            )

    def auth(self) -> httpx.Auth | None:
        """A Bearer key when one is given; a gateway may authenticate by its own extra headers instead.

        Bedrock's OpenAI-compatible endpoint takes a Bedrock API key, or (``auth: sigv4``) requests signed with an
        Airflow AWS connection's credentials by the same signer as the Bedrock backend.
        """
        if self.settings.auth == "sigv4":
            from urllib.parse import urlsplit

            from airflow_provider_finetune.backends.aws import AwsCredentials, SigV4Auth, region_of_host

            region = self.settings.region_name or region_of_host(urlsplit(self.settings.base_url).hostname or "")
            return SigV4Auth(AwsCredentials(self.settings.aws_conn_id or "aws_default", region), "bedrock")
        key = self.settings.api_key
        if not key:
            return None
        if self.settings.preset == "portkey":
            return HeaderAuth("x-portkey-api-key", key)
        return HeaderAuth("Authorization", f"Bearer {key}")
