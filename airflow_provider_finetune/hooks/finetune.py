"""``FineTuningHook``: an Airflow connection turned into sync and async calls of the whole fine-tuning API.

Each endpoint is described once, as a :class:`Call` (method, path, query, body, how to parse the answer);
the sync method and its ``a``-prefixed async twin both hand that description to the one request core in
:mod:`airflow_provider_finetune.client`, so they cannot drift apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import mimetypes
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Generic, TypeGuard, TypeVar, cast

import httpx
from airflow.exceptions import AirflowNotFoundException
from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret
from pydantic import BaseModel

from airflow_provider_finetune.client import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    ApiType,
    ConnectionSettings,
    RetryPolicy,
    exchange,
    path_param,
    run_async,
    run_sync,
    shared_async_client,
)
from airflow_provider_finetune.exceptions import (
    AuthenticationError,
    FineTuningAPIError,
    FineTuningConnectionError,
    FineTuningError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnsafeToRetryError,
)
from airflow_provider_finetune.models import (
    _MAX_METADATA_KEYS,
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
    FineTuningJobStatus,
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

__all__ = ["TASK_TAG_KEY", "Call", "FineTuningHook"]

#: Shared connection lookups per event loop: conn_id -> (when it was started, the lookup).
_SHARED_LOOKUPS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[float, asyncio.Future[ConnectionSettings]]]
] = weakref.WeakKeyDictionary()

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

#: Metadata key of the tag that ties a job to the task instance that created it.
TASK_TAG_KEY = "airflow_task_tag"

MB = 1024 * 1024
#: Files up to this size go through ``POST /files``; larger ones through the Uploads API.
FILES_API_LIMIT = 512 * MB
#: The Uploads API takes parts of at most 64 MB.
MAX_PART_SIZE = 64 * MB
#: ... and at most 8 GB in all.
MAX_UPLOAD_SIZE = 8 * 1024 * MB

FileSource = str | os.PathLike[str] | bytes | IO[bytes]


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
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    multipart: Callable[[], tuple[dict[str, str], dict[str, Any]]] | None = None
    idempotent: bool = True

    def build(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """Build the request with the client's base URL, headers and default query."""
        params = {k: _query_value(v) for k, v in (self.params or {}).items() if v is not None}
        if self.multipart is not None:
            data, files = self.multipart()
            return client.build_request(self.method, self.path, params=params, data=data, files=files)
        return client.build_request(self.method, self.path, params=params, json=self.json)


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _model(cls: type[M]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        return cls.model_validate(response.json())

    return parse


def _json_model(cls: type[M]) -> Callable[[httpx.Response], M]:
    """Parse straight from the JSON bytes: fields the model ignores are never built as Python objects."""

    def parse(response: httpx.Response) -> M:
        return cls.model_validate_json(response.content)

    return parse


def _bytes(response: httpx.Response) -> bytes:
    return response.content


class FineTuningHook(BaseHook):
    """Talk to the OpenAI fine-tuning API, or a service that speaks it, through an Airflow connection.

    Every call exists twice: ``get_job`` and ``await aget_job``, ``iter_jobs`` and ``async for ... in
    aiter_jobs``, and so on. Transient failures (408, 409, 429, 5xx, timeouts, dropped connections) are
    retried with backoff that honours ``retry-after``; other failures raise a typed
    :class:`~airflow_provider_finetune.exceptions.FineTuningAPIError`.

    :param finetune_conn_id: the Airflow connection (type ``finetune``).
    :param max_retries: overrides the connection's ``max_retries``.
    :param timeout: overrides the connection's ``timeout`` (seconds).
    :param retry_policy: the full retry policy, for fine control (``max_retries`` still wins if given).
    :param upload_threshold: files larger than this many bytes go through the Uploads API.
    :param part_size: size of one Uploads API part, at most 64 MB.
    """

    conn_name_attr = "finetune_conn_id"
    default_conn_name = "finetune_default"
    conn_type = "finetune"
    hook_name = "Fine-tuning (OpenAI API)"

    def __init__(
        self,
        finetune_conn_id: str = default_conn_name,
        *,
        max_retries: int | None = None,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        upload_threshold: int = FILES_API_LIMIT,
        part_size: int = MAX_PART_SIZE,
    ) -> None:
        super().__init__()
        if not 0 < part_size <= MAX_PART_SIZE:
            raise InvalidRequestError(f"part_size must be between 1 and {MAX_PART_SIZE}", field="part_size")
        self.finetune_conn_id = finetune_conn_id
        self._max_retries = max_retries
        self._timeout = timeout
        self._retry_policy = retry_policy
        self.upload_threshold = upload_threshold
        self.part_size = part_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(finetune_conn_id={self.finetune_conn_id!r})"

    # -- connection ------------------------------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel the connection form: "Base URL" and "API key" instead of host and password.

        Airflow 3.2+ reads the form from ``get_provider_info`` (``conn-fields``) and never calls this; older
        releases do, and without the form-widget packages they show the extras as JSON, so "extra" stays.
        """
        return {
            "hidden_fields": ["schema", "login", "port"],
            "relabeling": {"host": "Base URL", "password": "API key"},
            "placeholders": {
                "host": DEFAULT_BASE_URL,
                "password": "sk-...",
            },
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Add the connection's own fields to the form (Airflow < 3.2 reads them from here)."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, StringField

        return {
            "organization": StringField(lazy_gettext("Organization"), widget=BS3TextFieldWidget()),
            "project": StringField(lazy_gettext("Project"), widget=BS3TextFieldWidget()),
            "api_type": StringField(lazy_gettext("API type (openai or azure)"), widget=BS3TextFieldWidget()),
            "api_version": StringField(lazy_gettext("API version (Azure)"), widget=BS3TextFieldWidget()),
            "extra_headers": StringField(lazy_gettext("Extra headers (JSON object)"), widget=BS3TextFieldWidget()),
            "timeout": IntegerField(lazy_gettext("Timeout (seconds)"), widget=BS3TextFieldWidget()),
            "max_retries": IntegerField(lazy_gettext("Max retries"), widget=BS3TextFieldWidget()),
        }

    @classmethod
    def settings_from_connection(cls, conn: Any) -> ConnectionSettings:
        """Read a ``finetune`` connection into settings.

        The base URL comes from the host: a full URL (``https://example.com/v1``) as is, or a bare host
        with the port, the path from the schema, and ``scheme`` from the extras (``https`` by default),
        which is what a URI such as ``finetune://:KEY@localhost:8089/v1?scheme=http`` gives.
        """
        extra = conn.extra_dejson or {}
        base_url = _base_url(conn.host, conn.port, conn.schema, extra.get("scheme"))
        api_key = conn.password or extra.get("api_key") or ""
        headers = _headers_extra(extra.get("extra_headers"))
        for secret in (api_key, *headers.values()):
            if secret:
                mask_secret(secret)
        return ConnectionSettings(
            base_url=base_url,
            api_key=api_key,
            organization=extra.get("organization") or None,
            project=extra.get("project") or None,
            api_type=cast(ApiType, str(extra.get("api_type") or "openai").lower()),
            api_version=extra.get("api_version") or None,
            extra_headers=headers,
            timeout=_number(extra.get("timeout"), DEFAULT_TIMEOUT, "timeout"),
            max_retries=int(_number(extra.get("max_retries"), DEFAULT_MAX_RETRIES, "max_retries")),
        )

    @cached_property
    def settings(self) -> ConnectionSettings:
        """The connection's settings, read on first use."""
        return self._apply_overrides(self.settings_from_connection(self.get_connection(self.finetune_conn_id)))

    async def asettings(self) -> ConnectionSettings:
        """The connection's settings, read on first use without blocking the event loop."""
        if "settings" not in self.__dict__:
            try:
                conn = await self.aget_connection(self.finetune_conn_id)
            except ImportError:
                # Airflow 3.1.0 looks for the task supervisor before the secrets backends, so the async
                # lookup fails outside a task or triggerer process; the sync lookup does not.
                try:
                    conn = await asyncio.to_thread(self.get_connection, self.finetune_conn_id)
                except ImportError as err:  # no backend had it, and there is no supervisor to ask
                    raise AirflowNotFoundException(f"The conn_id `{self.finetune_conn_id}` isn't defined") from err
            self.__dict__["settings"] = self._apply_overrides(self.settings_from_connection(conn))
        return self.settings

    async def ashared_settings(self, *, max_age: float = 60.0) -> ConnectionSettings:
        """:meth:`asettings`, looked up once for every hook of the connection asking this way in this event loop.

        A triggerer starting a thousand triggers of one connection looks it up once (a secrets backend is
        asked once, not a thousand times); a lookup older than ``max_age`` seconds is made again, so that a
        changed connection is seen.
        """
        if "settings" not in self.__dict__:
            lookups = _SHARED_LOOKUPS.setdefault(asyncio.get_running_loop(), {})
            now = time.monotonic()
            entry = lookups.get(self.finetune_conn_id)
            if entry is None or now - entry[0] >= max_age or _failed(entry[1]):
                lookup = FineTuningHook(self.finetune_conn_id)
                entry = lookups[self.finetune_conn_id] = (now, asyncio.ensure_future(lookup.asettings()))
            settings = await asyncio.shield(entry[1])
            self.__dict__["settings"] = self._apply_overrides(settings)
        return self.settings

    def _apply_overrides(self, settings: ConnectionSettings) -> ConnectionSettings:
        changes: dict[str, Any] = {}
        if self._max_retries is not None:
            changes["max_retries"] = self._max_retries
        if self._timeout is not None:
            changes["timeout"] = self._timeout
        if not changes:
            return settings
        return replace(settings, **changes)

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy in force: the one given, with the connection's ``max_retries``."""
        policy = self._retry_policy or RetryPolicy()
        return replace(policy, max_retries=self.settings.max_retries)

    @cached_property
    def client(self) -> httpx.Client:
        """The sync HTTP client, made on first use."""
        return self.settings.make_client()

    async def aclient(self) -> httpx.AsyncClient:
        """The async HTTP client, shared by every hook and trigger of this connection in the process."""
        return shared_async_client(await self.asettings())

    def get_conn(self) -> httpx.Client:
        """Return the sync HTTP client."""
        return self.client

    def close(self) -> None:
        """Close the sync client (the shared async client outlives a single hook)."""
        if "client" in self.__dict__:
            self.client.close()
            del self.__dict__["client"]

    def test_connection(self) -> tuple[bool, str]:
        """Make one cheap authenticated call and say what is wrong, if anything."""
        try:
            settings = self.settings
            self._call(Call("GET", "fine_tuning/jobs", _model(Page[FineTuningJob]), params={"limit": 1}))
        except AuthenticationError as err:
            return False, f"The API key was refused by {settings.base_url} (401): {err.message}"
        except PermissionDeniedError as err:
            return (
                False,
                f"The API key may not list fine-tuning jobs at {settings.base_url} (403): {err.message}",
            )
        except NotFoundError:
            return False, (
                f"{settings.base_url}/fine_tuning/jobs answered 404: the base URL looks wrong (it usually ends in /v1)"
            )
        except FineTuningConnectionError as err:
            return False, f"Could not reach {settings.base_url}: {err}"
        except (FineTuningError, ValueError) as err:
            return False, str(err)
        return True, f"Connected to {settings.base_url}"

    # -- the two I/O edges -----------------------------------------------------------------------------

    def _call(self, call: Call[T]) -> T:
        steps = exchange(
            lambda: call.build(self.client),
            settings=self.settings,
            policy=self.retry_policy,
            idempotent=call.idempotent,
        )
        return call.parse(run_sync(self.client, steps))

    async def _acall(self, call: Call[T]) -> T:
        client = await self.aclient()
        steps = exchange(
            lambda: call.build(client),
            settings=self.settings,
            policy=self.retry_policy,
            idempotent=call.idempotent,
        )
        return call.parse(await run_async(client, steps))

    def _paginate(self, first: Call[Page[M]]) -> Iterator[M]:
        call: Call[Page[M]] | None = first
        while call is not None:
            page = self._call(call)
            yield from page.data
            call = _next_page(call, page)

    async def _apaginate(self, first: Call[Page[M]]) -> AsyncIterator[M]:
        call: Call[Page[M]] | None = first
        while call is not None:
            page = await self._acall(call)
            for item in page.data:
                yield item
            call = _next_page(call, page)

    # -- jobs ------------------------------------------------------------------------------------------

    def create_job(self, request: CreateFineTuningJobRequest | Mapping[str, Any]) -> FineTuningJob:
        """Create a fine-tuning job. Not re-sent when its outcome is unknown: see :meth:`ensure_job`."""
        return self._call(_create_job(request))

    async def acreate_job(self, request: CreateFineTuningJobRequest | Mapping[str, Any]) -> FineTuningJob:
        """Async :meth:`create_job`."""
        return await self._acall(_create_job(request))

    def ensure_job(
        self, request: CreateFineTuningJobRequest | Mapping[str, Any], *, tag: str
    ) -> tuple[FineTuningJob, bool]:
        """Create the job for ``tag`` unless one exists: at most one job per tag, whatever fails.

        The tag goes into the job's metadata under :data:`TASK_TAG_KEY`. The newest job carrying it is
        reattached to when it is in progress or succeeded; after a failed or cancelled one a new job is
        created (it carries the same tag and, being newer, is the one found next time). When the create
        call's outcome is unknown, the tag is looked up again before anything is re-sent, as often as the
        retry policy allows.

        :return: the job, and whether this call created it.
        """
        tagged = _tagged(request, tag)
        existing = self.find_job_by_tag(tag)
        if _reusable(existing):
            return existing, False
        retry = 0
        while True:
            try:
                return self.create_job(tagged), True
            except UnsafeToRetryError as unknown:
                self.log.warning("Creating the job may or may not have worked (%s); looking it up", unknown.cause)
                found = self.find_job_by_tag(tag)
                if found is not None and found.id != getattr(existing, "id", None):
                    return found, False
                # The lookup answered and no job carries the tag: the request created nothing. An unknown
                # outcome is transient trouble like any other: sent again, with backoff, as often as the
                # policy allows, so that it does not fail the task on its own.
                if retry >= self.retry_policy.max_retries:
                    raise
            time.sleep(self.retry_policy.backoff(retry))
            retry += 1

    async def aensure_job(
        self, request: CreateFineTuningJobRequest | Mapping[str, Any], *, tag: str
    ) -> tuple[FineTuningJob, bool]:
        """Async :meth:`ensure_job`."""
        tagged = _tagged(request, tag)
        existing = await self.afind_job_by_tag(tag)
        if _reusable(existing):
            return existing, False
        retry = 0
        while True:
            try:
                return await self.acreate_job(tagged), True
            except UnsafeToRetryError as unknown:
                self.log.warning("Creating the job may or may not have worked (%s); looking it up", unknown.cause)
                found = await self.afind_job_by_tag(tag)
                if found is not None and found.id != getattr(existing, "id", None):
                    return found, False
                if retry >= self.retry_policy.max_retries:
                    raise
            await asyncio.sleep(self.retry_policy.backoff(retry))
            retry += 1

    def find_job_by_tag(self, tag: str) -> FineTuningJob | None:
        """Return the newest job whose metadata carries ``tag``, or ``None``."""
        return next(self.iter_jobs(metadata={TASK_TAG_KEY: tag}, limit=1), None)

    async def afind_job_by_tag(self, tag: str) -> FineTuningJob | None:
        """Async :meth:`find_job_by_tag`."""
        async for job in self.aiter_jobs(metadata={TASK_TAG_KEY: tag}, limit=1):
            return job
        return None

    def list_jobs(
        self, *, after: str | None = None, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> Page[FineTuningJob]:
        """List one page of jobs, newest first, optionally filtered by metadata."""
        return self._call(_list_jobs(after, limit, metadata))

    async def alist_jobs(
        self, *, after: str | None = None, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> Page[FineTuningJob]:
        """Async :meth:`list_jobs`."""
        return await self._acall(_list_jobs(after, limit, metadata))

    def iter_jobs(
        self, *, after: str | None = None, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> Iterator[FineTuningJob]:
        """Iterate over every job, fetching pages of ``limit`` as needed."""
        return self._paginate(_list_jobs(after, limit, metadata))

    def aiter_jobs(
        self, *, after: str | None = None, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> AsyncIterator[FineTuningJob]:
        """Async :meth:`iter_jobs`."""
        return self._apaginate(_list_jobs(after, limit, metadata))

    def list_job_states(self, *, after: str | None = None, limit: int | None = None) -> Page[JobState]:
        """List one page of jobs, newest first, as their states only (lean: for watching many jobs)."""
        return self._call(_list_job_states(after, limit))

    async def alist_job_states(self, *, after: str | None = None, limit: int | None = None) -> Page[JobState]:
        """Async :meth:`list_job_states`."""
        return await self._acall(_list_job_states(after, limit))

    def get_job(self, job_id: str) -> FineTuningJob:
        """Retrieve a job."""
        return self._call(_job_call("GET", job_id))

    async def aget_job(self, job_id: str) -> FineTuningJob:
        """Async :meth:`get_job`."""
        return await self._acall(_job_call("GET", job_id))

    def cancel_job(self, job_id: str) -> FineTuningJob:
        """Cancel a job."""
        return self._call(_job_call("POST", job_id, "cancel"))

    async def acancel_job(self, job_id: str) -> FineTuningJob:
        """Async :meth:`cancel_job`."""
        return await self._acall(_job_call("POST", job_id, "cancel"))

    def pause_job(self, job_id: str) -> FineTuningJob:
        """Pause a running job."""
        return self._call(_job_call("POST", job_id, "pause"))

    async def apause_job(self, job_id: str) -> FineTuningJob:
        """Async :meth:`pause_job`."""
        return await self._acall(_job_call("POST", job_id, "pause"))

    def resume_job(self, job_id: str) -> FineTuningJob:
        """Resume a paused job."""
        return self._call(_job_call("POST", job_id, "resume"))

    async def aresume_job(self, job_id: str) -> FineTuningJob:
        """Async :meth:`resume_job`."""
        return await self._acall(_job_call("POST", job_id, "resume"))

    # -- events and checkpoints ------------------------------------------------------------------------

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[FineTuningJobEvent]:
        """List one page of a job's events, newest first; ``after`` pages back in time."""
        return self._call(_events(job_id, after, limit))

    async def alist_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[FineTuningJobEvent]:
        """Async :meth:`list_events`."""
        return await self._acall(_events(job_id, after, limit))

    def iter_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Iterator[FineTuningJobEvent]:
        """Iterate over a job's events, newest first."""
        return self._paginate(_events(job_id, after, limit))

    def aiter_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[FineTuningJobEvent]:
        """Async :meth:`iter_events`."""
        return self._apaginate(_events(job_id, after, limit))

    def list_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[FineTuningJobCheckpoint]:
        """List one page of a job's checkpoints, newest first."""
        return self._call(_checkpoints(job_id, after, limit))

    async def alist_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[FineTuningJobCheckpoint]:
        """Async :meth:`list_checkpoints`."""
        return await self._acall(_checkpoints(job_id, after, limit))

    def iter_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Iterator[FineTuningJobCheckpoint]:
        """Iterate over a job's checkpoints."""
        return self._paginate(_checkpoints(job_id, after, limit))

    def aiter_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[FineTuningJobCheckpoint]:
        """Async :meth:`iter_checkpoints`."""
        return self._apaginate(_checkpoints(job_id, after, limit))

    # -- checkpoint permissions (admin key) --------------------------------------------------------------

    def list_checkpoint_permissions(
        self,
        checkpoint: str,
        *,
        project_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        order: str | None = None,
    ) -> Page[CheckpointPermission]:
        """List one page of the permissions of a fine-tuned model checkpoint."""
        return self._call(_permissions(checkpoint, project_id, after, limit, order))

    async def alist_checkpoint_permissions(
        self,
        checkpoint: str,
        *,
        project_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        order: str | None = None,
    ) -> Page[CheckpointPermission]:
        """Async :meth:`list_checkpoint_permissions`."""
        return await self._acall(_permissions(checkpoint, project_id, after, limit, order))

    def iter_checkpoint_permissions(
        self,
        checkpoint: str,
        *,
        project_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        order: str | None = None,
    ) -> Iterator[CheckpointPermission]:
        """Iterate over the permissions of a checkpoint."""
        return self._paginate(_permissions(checkpoint, project_id, after, limit, order))

    def aiter_checkpoint_permissions(
        self,
        checkpoint: str,
        *,
        project_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        order: str | None = None,
    ) -> AsyncIterator[CheckpointPermission]:
        """Async :meth:`iter_checkpoint_permissions`."""
        return self._apaginate(_permissions(checkpoint, project_id, after, limit, order))

    def create_checkpoint_permissions(self, checkpoint: str, project_ids: list[str]) -> Page[CheckpointPermission]:
        """Share a checkpoint with projects; returns the permissions made."""
        return self._call(_grant(checkpoint, project_ids))

    async def acreate_checkpoint_permissions(
        self, checkpoint: str, project_ids: list[str]
    ) -> Page[CheckpointPermission]:
        """Async :meth:`create_checkpoint_permissions`."""
        return await self._acall(_grant(checkpoint, project_ids))

    def delete_checkpoint_permission(self, checkpoint: str, permission_id: str) -> DeletedCheckpointPermission:
        """Revoke one permission of a checkpoint."""
        return self._call(_revoke(checkpoint, permission_id))

    async def adelete_checkpoint_permission(self, checkpoint: str, permission_id: str) -> DeletedCheckpointPermission:
        """Async :meth:`delete_checkpoint_permission`."""
        return await self._acall(_revoke(checkpoint, permission_id))

    # -- graders ---------------------------------------------------------------------------------------

    def run_grader(self, grader: Any, model_sample: str, item: Mapping[str, Any] | None = None) -> GraderRunResult:
        """Run a grader on one sample (and dataset item)."""
        return self._call(_run_grader(grader, model_sample, item))

    async def arun_grader(
        self, grader: Any, model_sample: str, item: Mapping[str, Any] | None = None
    ) -> GraderRunResult:
        """Async :meth:`run_grader`."""
        return await self._acall(_run_grader(grader, model_sample, item))

    def validate_grader(self, grader: Any) -> GraderValidation:
        """Have the service validate a grader."""
        return self._call(_validate_grader(grader))

    async def avalidate_grader(self, grader: Any) -> GraderValidation:
        """Async :meth:`validate_grader`."""
        return await self._acall(_validate_grader(grader))

    # -- files -----------------------------------------------------------------------------------------

    def get_file(self, file_id: str) -> FileObject:
        """Retrieve a file's description."""
        return self._call(_file_call("GET", file_id, _model(FileObject)))

    async def aget_file(self, file_id: str) -> FileObject:
        """Async :meth:`get_file`."""
        return await self._acall(_file_call("GET", file_id, _model(FileObject)))

    def delete_file(self, file_id: str) -> DeletedFile:
        """Delete a file."""
        return self._call(_file_call("DELETE", file_id, _model(DeletedFile)))

    async def adelete_file(self, file_id: str) -> DeletedFile:
        """Async :meth:`delete_file`."""
        return await self._acall(_file_call("DELETE", file_id, _model(DeletedFile)))

    def get_file_content(self, file_id: str) -> bytes:
        """Download a file's content (e.g. a job's results CSV)."""
        return self._call(_file_call("GET", file_id, _bytes, "content"))

    async def aget_file_content(self, file_id: str) -> bytes:
        """Async :meth:`get_file_content`."""
        return await self._acall(_file_call("GET", file_id, _bytes, "content"))

    def list_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int | None = None
    ) -> Page[FileObject]:
        """List one page of files."""
        return self._call(_list_files(purpose, after, limit))

    async def alist_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int | None = None
    ) -> Page[FileObject]:
        """Async :meth:`list_files`."""
        return await self._acall(_list_files(purpose, after, limit))

    def iter_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int | None = None
    ) -> Iterator[FileObject]:
        """Iterate over every file."""
        return self._paginate(_list_files(purpose, after, limit))

    def aiter_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[FileObject]:
        """Async :meth:`iter_files`."""
        return self._apaginate(_list_files(purpose, after, limit))

    def upload_file(self, source: FileSource, *, purpose: str = "fine-tune", filename: str | None = None) -> FileObject:
        """Upload a file; one larger than ``upload_threshold`` goes through the Uploads API in parts.

        :param source: a path, bytes, or a binary file object opened for reading (and seeking).
        :param purpose: the file's purpose.
        :param filename: the name the service records; the path's name by default.
        """
        with _opened(source, filename) as (stream, name, size):
            if size <= self.upload_threshold:
                return self._call(_create_file(stream, name, purpose))
            return self._upload_in_parts(stream, name, size, purpose)

    async def aupload_file(
        self, source: FileSource, *, purpose: str = "fine-tune", filename: str | None = None
    ) -> FileObject:
        """Async :meth:`upload_file`."""
        with _opened(source, filename) as (stream, name, size):
            if size <= self.upload_threshold:
                return await self._acall(_create_file(stream, name, purpose))
            return await self._aupload_in_parts(stream, name, size, purpose)

    def _upload_in_parts(self, stream: IO[bytes], name: str, size: int, purpose: str) -> FileObject:
        upload = self._call(_create_upload(name, size, purpose))
        try:
            md5 = hashlib.md5(usedforsecurity=False)
            part_ids = []
            for chunk in _chunks(stream, self.part_size):
                md5.update(chunk)
                part_ids.append(self._call(_add_part(upload.id, chunk)).id)
            done = self._call(_complete_upload(upload.id, part_ids, md5.hexdigest()))
        except BaseException:
            self._cancel_upload_quietly(upload.id)
            raise
        return _uploaded_file(done)

    async def _aupload_in_parts(self, stream: IO[bytes], name: str, size: int, purpose: str) -> FileObject:
        upload = await self._acall(_create_upload(name, size, purpose))
        try:
            md5 = hashlib.md5(usedforsecurity=False)
            part_ids = []
            for chunk in _chunks(stream, self.part_size):
                md5.update(chunk)
                part_ids.append((await self._acall(_add_part(upload.id, chunk))).id)
            done = await self._acall(_complete_upload(upload.id, part_ids, md5.hexdigest()))
        except BaseException:
            await self._acancel_upload_quietly(upload.id)
            raise
        return _uploaded_file(done)

    def _cancel_upload_quietly(self, upload_id: str) -> None:
        try:
            self.cancel_upload(upload_id)
        except FineTuningError as err:
            self.log.warning("Could not cancel upload %s after a failure: %s", upload_id, err)

    async def _acancel_upload_quietly(self, upload_id: str) -> None:
        try:
            await self.acancel_upload(upload_id)
        except FineTuningError as err:
            self.log.warning("Could not cancel upload %s after a failure: %s", upload_id, err)

    def create_upload(self, filename: str, size: int, *, purpose: str = "fine-tune") -> Upload:
        """Start an upload of ``size`` bytes (the Uploads API; :meth:`upload_file` does it all)."""
        return self._call(_create_upload(filename, size, purpose))

    async def acreate_upload(self, filename: str, size: int, *, purpose: str = "fine-tune") -> Upload:
        """Async :meth:`create_upload`."""
        return await self._acall(_create_upload(filename, size, purpose))

    def add_upload_part(self, upload_id: str, data: bytes) -> UploadPart:
        """Add one part (at most 64 MB) to an upload."""
        return self._call(_add_part(upload_id, data))

    async def aadd_upload_part(self, upload_id: str, data: bytes) -> UploadPart:
        """Async :meth:`add_upload_part`."""
        return await self._acall(_add_part(upload_id, data))

    def complete_upload(self, upload_id: str, part_ids: list[str], *, md5: str | None = None) -> Upload:
        """Complete an upload with its parts in order; the service checks ``md5`` if given."""
        return self._call(_complete_upload(upload_id, part_ids, md5))

    async def acomplete_upload(self, upload_id: str, part_ids: list[str], *, md5: str | None = None) -> Upload:
        """Async :meth:`complete_upload`."""
        return await self._acall(_complete_upload(upload_id, part_ids, md5))

    def cancel_upload(self, upload_id: str) -> Upload:
        """Cancel an upload."""
        return self._call(_upload_call(upload_id, "cancel"))

    async def acancel_upload(self, upload_id: str) -> Upload:
        """Async :meth:`cancel_upload`."""
        return await self._acall(_upload_call(upload_id, "cancel"))


# -- call descriptions: pure, shared by both paths ---------------------------------------------------------


def _next_page(call: Call[Page[M]], page: Page[M]) -> Call[Page[M]] | None:
    cursor = page.next_after
    if not page.has_more or cursor is None:
        return None
    return Call(call.method, call.path, call.parse, params={**(call.params or {}), "after": cursor})


def _limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidRequestError(f"limit must be a positive integer, got {limit!r}", field="limit")
    return limit


def _request(model_cls: type[M], request: M | Mapping[str, Any]) -> M:
    return request if isinstance(request, model_cls) else build_request(model_cls, cast(Mapping[str, Any], request))


def _create_job(request: CreateFineTuningJobRequest | Mapping[str, Any]) -> Call[FineTuningJob]:
    body = _request(CreateFineTuningJobRequest, request).to_body()
    return Call("POST", "fine_tuning/jobs", _model(FineTuningJob), json=body, idempotent=False)


def _reusable(job: FineTuningJob | None) -> TypeGuard[FineTuningJob]:
    """Whether a job found by its tag is the one to reattach to: in progress or succeeded."""
    return job is not None and job.status not in (FineTuningJobStatus.FAILED, FineTuningJobStatus.CANCELLED)


def _tagged(request: CreateFineTuningJobRequest | Mapping[str, Any], tag: str) -> CreateFineTuningJobRequest:
    if not tag or len(tag) > 512:
        raise InvalidRequestError("tag must be 1 to 512 characters", field="tag")
    body = _request(CreateFineTuningJobRequest, request).to_body()
    metadata = room_for_tag(body.get("metadata"))
    body["metadata"] = {**metadata, TASK_TAG_KEY: tag}
    return build_request(CreateFineTuningJobRequest, body)


def room_for_tag(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The metadata without a tag, refused when it leaves the tag no place (said in the user's terms)."""
    kept = {key: value for key, value in (metadata or {}).items() if key != TASK_TAG_KEY}
    if len(kept) >= _MAX_METADATA_KEYS:
        raise InvalidRequestError(
            f"Invalid fine-tuning request: metadata: {len(kept)} keys given, at most {_MAX_METADATA_KEYS - 1} "
            f"are allowed (the {_MAX_METADATA_KEYS}th is the task's tag, {TASK_TAG_KEY})",
            field="metadata",
        )
    return kept


def _list_jobs(after: str | None, limit: int | None, metadata: Mapping[str, str] | None) -> Call[Page[FineTuningJob]]:
    params: dict[str, Any] = {"after": after, "limit": _limit(limit)}
    for key, value in (metadata or {}).items():
        params[f"metadata[{key}]"] = value
    return Call("GET", "fine_tuning/jobs", _model(Page[FineTuningJob]), params=params)


def _list_job_states(after: str | None, limit: int | None) -> Call[Page[JobState]]:
    return Call("GET", "fine_tuning/jobs", _json_model(Page[JobState]), params={"after": after, "limit": _limit(limit)})


def _job_call(method: str, job_id: str, action: str | None = None) -> Call[FineTuningJob]:
    path = f"fine_tuning/jobs/{path_param('job_id', job_id)}" + (f"/{action}" if action else "")
    return Call(method, path, _model(FineTuningJob))


def _events(job_id: str, after: str | None, limit: int | None) -> Call[Page[FineTuningJobEvent]]:
    path = f"fine_tuning/jobs/{path_param('job_id', job_id)}/events"
    return Call("GET", path, _model(Page[FineTuningJobEvent]), params={"after": after, "limit": _limit(limit)})


def _checkpoints(job_id: str, after: str | None, limit: int | None) -> Call[Page[FineTuningJobCheckpoint]]:
    path = f"fine_tuning/jobs/{path_param('job_id', job_id)}/checkpoints"
    return Call("GET", path, _model(Page[FineTuningJobCheckpoint]), params={"after": after, "limit": _limit(limit)})


def _permissions_path(checkpoint: str) -> str:
    return f"fine_tuning/checkpoints/{path_param('checkpoint', checkpoint)}/permissions"


def _permissions(
    checkpoint: str, project_id: str | None, after: str | None, limit: int | None, order: str | None
) -> Call[Page[CheckpointPermission]]:
    if order is not None and order not in ("ascending", "descending"):
        raise InvalidRequestError(f"order must be 'ascending' or 'descending', got {order!r}", field="order")
    params = {"project_id": project_id, "after": after, "limit": _limit(limit), "order": order}
    return Call("GET", _permissions_path(checkpoint), _model(Page[CheckpointPermission]), params=params)


def _grant(checkpoint: str, project_ids: list[str]) -> Call[Page[CheckpointPermission]]:
    body = build_request(CreateCheckpointPermissionRequest, project_ids=project_ids).to_body()
    return Call("POST", _permissions_path(checkpoint), _model(Page[CheckpointPermission]), json=body)


def _revoke(checkpoint: str, permission_id: str) -> Call[DeletedCheckpointPermission]:
    path = f"{_permissions_path(checkpoint)}/{path_param('permission_id', permission_id)}"
    return Call("DELETE", path, _model(DeletedCheckpointPermission))


def _run_grader(grader: Any, model_sample: str, item: Mapping[str, Any] | None) -> Call[GraderRunResult]:
    body = build_request(RunGraderRequest, grader=grader, model_sample=model_sample, item=item).to_body()
    return Call("POST", "fine_tuning/alpha/graders/run", _model(GraderRunResult), json=body)


def _validate_grader(grader: Any) -> Call[GraderValidation]:
    body = build_request(ValidateGraderRequest, grader=grader).to_body()
    return Call("POST", "fine_tuning/alpha/graders/validate", _model(GraderValidation), json=body)


def _file_call(method: str, file_id: str, parse: Callable[[httpx.Response], T], action: str = "") -> Call[T]:
    path = f"files/{path_param('file_id', file_id)}" + (f"/{action}" if action else "")
    return Call(method, path, parse)


def _list_files(purpose: str | None, after: str | None, limit: int | None) -> Call[Page[FileObject]]:
    params = {"purpose": purpose, "after": after, "limit": _limit(limit)}
    return Call("GET", "files", _model(Page[FileObject]), params=params)


def _create_file(stream: IO[bytes], name: str, purpose: str) -> Call[FileObject]:
    start = stream.tell()

    def multipart() -> tuple[dict[str, str], dict[str, Any]]:
        stream.seek(start)
        return {"purpose": purpose}, {"file": (name, stream, _mime_type(name))}

    return Call("POST", "files", _model(FileObject), multipart=multipart)


def _create_upload(name: str, size: int, purpose: str) -> Call[Upload]:
    body = build_request(
        CreateUploadRequest, filename=name, bytes=size, purpose=purpose, mime_type=_mime_type(name)
    ).to_body()
    return Call("POST", "uploads", _model(Upload), json=body)


def _add_part(upload_id: str, data: bytes) -> Call[UploadPart]:
    if len(data) > MAX_PART_SIZE:
        raise InvalidRequestError(f"an upload part is at most {MAX_PART_SIZE} bytes", field="data")

    def multipart() -> tuple[dict[str, str], dict[str, Any]]:
        return {}, {"data": ("part", data, "application/octet-stream")}

    return Call("POST", f"uploads/{path_param('upload_id', upload_id)}/parts", _model(UploadPart), multipart=multipart)


def _complete_upload(upload_id: str, part_ids: list[str], md5: str | None) -> Call[Upload]:
    body = build_request(CompleteUploadRequest, part_ids=part_ids, md5=md5).to_body()
    return Call("POST", f"uploads/{path_param('upload_id', upload_id)}/complete", _model(Upload), json=body)


def _upload_call(upload_id: str, action: str) -> Call[Upload]:
    return Call("POST", f"uploads/{path_param('upload_id', upload_id)}/{action}", _model(Upload))


def _uploaded_file(upload: Upload) -> FileObject:
    if upload.file is None:
        raise FineTuningAPIError(200, f"upload {upload.id} completed with status {upload.status} but no file")
    return upload.file


def _mime_type(name: str) -> str:
    if name.endswith(".jsonl"):
        return "application/jsonl"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _chunks(stream: IO[bytes], size: int) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk


class _opened:
    """Open a file source for reading and measure it; closes only what it opened."""

    def __init__(self, source: FileSource, filename: str | None) -> None:
        self.source = source
        self.filename = filename
        self.owned: IO[bytes] | None = None

    def __enter__(self) -> tuple[IO[bytes], str, int]:
        source = self.source
        if isinstance(source, bytes):
            stream: IO[bytes] = io.BytesIO(source)
            name = self.filename or "data.jsonl"
        elif isinstance(source, str | os.PathLike):
            path = Path(source)
            stream = self.owned = path.open("rb")
            name = self.filename or path.name
        else:
            stream = source
            name = self.filename or Path(str(getattr(source, "name", "data.jsonl"))).name
        start = stream.tell()
        size = stream.seek(0, os.SEEK_END) - start
        stream.seek(start)
        if size == 0:
            raise InvalidRequestError(f"{name} is empty", field="file")
        if size > MAX_UPLOAD_SIZE:
            raise InvalidRequestError(f"{name} is {size} bytes; the service takes at most 8 GB", field="file")
        return stream, name, size

    def __exit__(self, *exc: object) -> None:
        if self.owned is not None:
            self.owned.close()


def _base_url(host: str | None, port: int | None, schema: str | None, scheme: str | None) -> str:
    if not host:
        return DEFAULT_BASE_URL
    host = host.strip()
    if host.startswith(("http://", "https://")):
        return host.rstrip("/")
    netloc = f"{host}:{port}" if port else host
    path = f"/{schema.strip('/')}" if schema else ""
    return f"{scheme or 'https'}://{netloc}{path}"


def _headers_extra(raw: Any) -> dict[str, str]:
    if raw in (None, ""):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as err:
            raise InvalidRequestError("extra_headers must be a JSON object", field="extra_headers") from err
    if not isinstance(raw, dict):
        raise InvalidRequestError("extra_headers must be a JSON object", field="extra_headers")
    return {str(k): str(v) for k, v in raw.items()}


def _number(raw: Any, default: float, name: str) -> float:
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except (TypeError, ValueError) as err:
        raise InvalidRequestError(f"{name} must be a number, got {raw!r}", field=name) from err


def _failed(lookup: asyncio.Future[Any]) -> bool:
    return lookup.done() and (lookup.cancelled() or lookup.exception() is not None)
