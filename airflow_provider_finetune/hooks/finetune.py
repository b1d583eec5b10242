"""``FineTuningHook``: an Airflow connection turned into sync and async calls of the whole fine-tuning API.

The connection names the service; its backend (:mod:`airflow_provider_finetune.backends`) describes each
endpoint once, as a :class:`Call` (method, path, query, body, how to read the answer back into the canonical
models). The sync method and its ``a``-prefixed async twin both hand that description to the one request core
in :mod:`airflow_provider_finetune.core.client`, so they cannot drift apart, whatever the service.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import httpx
from airflow.exceptions import AirflowNotFoundException
from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret
from pydantic import BaseModel

from airflow_provider_finetune.backends import backend_for
from airflow_provider_finetune.backends.base import Call
from airflow_provider_finetune.backends.openai import MAX_PART_SIZE, OpenAIBackend
from airflow_provider_finetune.core.client import (
    DEFAULT_BASE_URL,
    ConnectionSettings,
    RetryPolicy,
    Sleep,
    exchange,
    run_async,
    run_sync,
    shared_async_client,
)
from airflow_provider_finetune.exceptions import (
    AuthenticationError,
    ConflictError,
    FineTuningAPIError,
    FineTuningConnectionError,
    FineTuningError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnsafeToRetryError,
)
from airflow_provider_finetune.hooks.connection import settings_from_connection
from airflow_provider_finetune.models import (
    CheckpointPermission,
    CreateFineTuningJobRequest,
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
    Upload,
    UploadPart,
    build_request,
)
from airflow_provider_finetune.rules.budget import PriceEstimate
from airflow_provider_finetune.rules.once import (
    MAX_WALK,
    NO_STATE_STORE,
    TASK_TAG_KEY,
    CancelJob,
    CreateJob,
    Ensure,
    GetJob,
    JobIdentity,
    ListJobs,
    OnChangedRequest,
    ReadState,
    WriteState,
    ensure_job,
    room_for_tags,
)

__all__ = ["TASK_TAG_KEY", "Call", "FineTuningHook", "room_for_tag"]

#: Shared connection lookups per event loop: conn_id -> (when it was started, the lookup).
_SHARED_LOOKUPS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[float, asyncio.Future[ConnectionSettings]]]
] = weakref.WeakKeyDictionary()

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

MB = 1024 * 1024
#: Files up to this size go through ``POST /files``; larger ones through the Uploads API (at most the backend's
#: ``max_file_size``), or where the service has its own, its multipart upload (``multipart_threshold``).
FILES_API_LIMIT = 512 * MB

FileSource = str | os.PathLike[str] | bytes | IO[bytes]

#: The older name of :func:`~airflow_provider_finetune.rules.once.room_for_tags`.
room_for_tag = room_for_tags


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
        """Add the connection's own fields to the form (Airflow < 3.2 reads them from here).

        The same fields, choices and secrecy as ``conn-fields`` in ``get_provider_info`` (a test compares them).
        Airflow 3.0 and 3.1 turn these wtforms fields into the form's JSON schema: ``any_of`` becomes a
        choice, ``PasswordField`` a masked field.
        """
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, PasswordField, StringField
        from wtforms.validators import Optional, any_of

        from airflow_provider_finetune import AUTH_CHOICES, PRESET_CHOICES, SERVICE_CHOICES

        def choice(label: str, values: tuple[str, ...], default: str | None = None) -> Any:
            return StringField(
                lazy_gettext(label),
                widget=BS3TextFieldWidget(),
                validators=[any_of(list(values)), Optional()],
                default=default,
            )

        return {
            "service": choice("Service", SERVICE_CHOICES, default="openai"),
            "preset": choice("Preset (OpenAI-compatible)", PRESET_CHOICES),
            "auth": choice("Authentication (Azure, Bedrock)", AUTH_CHOICES),
            "aws_conn_id": StringField(
                lazy_gettext("AWS connection (Bedrock)"), widget=BS3TextFieldWidget(), default="aws_default"
            ),
            "region_name": StringField(lazy_gettext("AWS region (Bedrock)"), widget=BS3TextFieldWidget()),
            "organization": StringField(lazy_gettext("Organization"), widget=BS3TextFieldWidget()),
            "project": StringField(lazy_gettext("Project"), widget=BS3TextFieldWidget()),
            "api_type": choice("API type (older spelling)", ("openai", "azure")),
            "api_version": StringField(lazy_gettext("API version (Azure)"), widget=BS3TextFieldWidget()),
            "extra_headers": PasswordField(
                lazy_gettext("Extra headers (JSON object)"), widget=BS3PasswordFieldWidget()
            ),
            "timeout": IntegerField(lazy_gettext("Timeout (seconds)"), widget=BS3TextFieldWidget(), default=60),
            "max_retries": IntegerField(lazy_gettext("Max retries"), widget=BS3TextFieldWidget(), default=5),
        }

    @classmethod
    def settings_from_connection(cls, conn: Any) -> ConnectionSettings:
        """Read a ``finetune`` connection into settings (see :mod:`airflow_provider_finetune.hooks.connection`)."""
        return settings_from_connection(conn, mask=mask_secret)

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

    @property
    def backend(self) -> OpenAIBackend:
        """The connection's service dialect (made with the settings, on first use)."""
        settings = self.settings
        made = self.__dict__.get("_backend")
        if made is None or made[0] is not settings:
            made = self.__dict__["_backend"] = (settings, backend_for(settings))
        return made[1]

    @property
    def service(self) -> str:
        """The connection's service: ``openai``, ``azure``..."""
        return self.backend.service

    def require(self, capability: str, *, job_id: str | None = None) -> None:
        """Refuse, before any request, what the connection's service cannot do (see the backend's capabilities)."""
        self.backend.require(capability, job_id=job_id)

    def job_url(self, job_id: str) -> str | None:
        """The job's page on the service's dashboard, or ``None``."""
        return self.backend.job_url(job_id)

    @cached_property
    def client(self) -> httpx.Client:
        """The sync HTTP client, made on first use."""
        return self.backend.make_client()

    async def aclient(self) -> httpx.AsyncClient:
        """The async HTTP client, shared by every hook and trigger of this connection in the process."""
        await self.asettings()
        backend = self.backend
        return shared_async_client(backend.settings, backend.make_async_client)

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
            settings = self.backend.settings
            self._call(self.backend.list_jobs(None, 1, None))
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
        backend = self.backend
        steps = exchange(
            lambda: call.build(self.client),
            settings=backend.settings,
            policy=self.retry_policy,
            idempotent=call.idempotent,
            read_error=backend.read_error,
        )
        return call.parse(run_sync(self.client, steps))

    async def _acall(self, call: Call[T]) -> T:
        client = await self.aclient()
        backend = self.backend
        steps = exchange(
            lambda: call.build(client),
            settings=backend.settings,
            policy=self.retry_policy,
            idempotent=call.idempotent,
            read_error=backend.read_error,
        )
        return call.parse(await run_async(client, steps))

    def call(self, call: Call[T]) -> T:
        """Carry out one of the backend's calls (a service's own endpoints: Bedrock's model deployments)."""
        return self._call(call)

    async def acall(self, call: Call[T]) -> T:
        """Async :meth:`call`."""
        await self.asettings()
        return await self._acall(call)

    def _paginate(self, first: Call[Page[M]]) -> Iterator[M]:
        call: Call[Page[M]] | None = first
        while call is not None:
            page = self._call(call)
            yield from page.data
            call = self.backend.next_page(call, page)

    async def _apaginate(self, first: Call[Page[M]]) -> AsyncIterator[M]:
        call: Call[Page[M]] | None = first
        while call is not None:
            page = await self._acall(call)
            for item in page.data:
                yield item
            call = self.backend.next_page(call, page)

    # -- jobs ------------------------------------------------------------------------------------------

    def create_job(
        self,
        request: CreateFineTuningJobRequest | Mapping[str, Any],
        *,
        service_options: Mapping[str, Any] | None = None,
    ) -> FineTuningJob:
        """Create a fine-tuning job. Not re-sent when its outcome is unknown: see :meth:`ensure_job`.

        :param service_options: the options only the connection's service has, checked before any request.
        """
        return self._call(self.backend.create_job(request, service_options))

    async def acreate_job(
        self,
        request: CreateFineTuningJobRequest | Mapping[str, Any],
        *,
        service_options: Mapping[str, Any] | None = None,
    ) -> FineTuningJob:
        """Async :meth:`create_job`."""
        return await self._acall(self.backend.create_job(request, service_options))

    def estimate_price(
        self, request: CreateFineTuningJobRequest, *, service_options: Mapping[str, Any] | None = None
    ) -> PriceEstimate | None:
        """The service's own estimate of what creating ``request`` will cost, where it makes one; else ``None``."""
        call = self.backend.estimate_price(self.backend.job_body(request, service_options))
        return None if call is None else self._call(call)

    def ensure_job(
        self,
        request: CreateFineTuningJobRequest | Mapping[str, Any],
        *,
        tag: str | None = None,
        identity: JobIdentity | None = None,
        on_changed_request: OnChangedRequest = "cancel_and_create",
        state: Any = None,
        service_options: Mapping[str, Any] | None = None,
    ) -> tuple[FineTuningJob, bool]:
        """Create the job of a task instance unless it exists: at most one job, whatever fails.

        A found job is adopted only when its own fields say it is this task instance's (see
        :mod:`airflow_provider_finetune.rules.once`): one in progress or succeeded is reattached to; after a failed or
        cancelled one a new job is created; one made from another request meets ``on_changed_request``.

        :param request: the create request.
        :param tag: the task instance's tag (or give ``identity``).
        :param identity: the tag and the earliest moment a job of the task instance may have been made.
        :param on_changed_request: ``cancel_and_create`` or ``fail``.
        :param state: the task's state store (``context["task_state_store"]``, Airflow 3.3+), if any.
        :param service_options: the options only the connection's service has (Bedrock's role, output, type...),
            validated by its backend before any request.
        :return: the job, and whether this call created it.
        """
        return self._drive(self._ensure_steps(request, tag, identity, on_changed_request, service_options), state)

    async def aensure_job(
        self,
        request: CreateFineTuningJobRequest | Mapping[str, Any],
        *,
        tag: str | None = None,
        identity: JobIdentity | None = None,
        on_changed_request: OnChangedRequest = "cancel_and_create",
        state: Any = None,
        service_options: Mapping[str, Any] | None = None,
    ) -> tuple[FineTuningJob, bool]:
        """Async :meth:`ensure_job`."""
        await self.asettings()
        steps = self._ensure_steps(request, tag, identity, on_changed_request, service_options)
        return await self._adrive(steps, state)

    def _ensure_steps(
        self,
        request: CreateFineTuningJobRequest | Mapping[str, Any],
        tag: str | None,
        identity: JobIdentity | None,
        on_changed_request: OnChangedRequest,
        service_options: Mapping[str, Any] | None = None,
    ) -> Ensure:
        if identity is None:
            identity = JobIdentity(tag or "")
        backend = self.backend
        model_request = (
            request
            if isinstance(request, CreateFineTuningJobRequest)
            else build_request(CreateFineTuningJobRequest, request)
        )
        if backend.once_only == "idempotency_token":  # a dialect whose way is not built in here
            raise InvalidRequestError(
                f"{backend.label} makes a create once-only by {backend.once_only}, which this hook cannot do",
                field="service",
            )
        body = backend.job_body(model_request, service_options)
        return ensure_job(
            body,
            identity,
            job_metadata=backend.once_only == "metadata",
            metadata_filter=backend.capabilities.metadata_filter,
            policy=self.retry_policy,
            on_changed_request=on_changed_request,
            now=time.time(),
            log=self.log,
            job_ids=backend.client_job_id if backend.once_only == "client_job_id" else None,
        )

    def _ensure_call(self, step: ListJobs | GetJob | CreateJob | CancelJob) -> Call[Any]:
        """The request that carries out one step of :func:`~airflow_provider_finetune.rules.once.ensure_job`."""
        backend = self.backend
        if isinstance(step, ListJobs):
            return backend.list_jobs(step.after, 100, step.metadata)
        if isinstance(step, GetJob):
            return backend.job_call("GET", step.job_id)
        if isinstance(step, CreateJob):
            if step.job_id is not None:
                return backend.create_prepared_job(step.body, job_id=step.job_id)
            return backend.create_prepared_job(step.body)
        return backend.job_call("POST", step.job_id, "cancel")

    @staticmethod
    def _ensure_answer(step: Any, error: FineTuningError) -> Any:
        """What a step answers when its request failed: an unknown job is ``None``, an unknown create the error."""
        if isinstance(step, GetJob) and isinstance(error, NotFoundError):
            return None
        if isinstance(step, CreateJob) and isinstance(error, UnsafeToRetryError):
            return error
        if isinstance(step, CreateJob) and step.job_id is not None and isinstance(error, ConflictError):
            return error  # the id is in use: the job is looked up by it
        if isinstance(step, CancelJob) and isinstance(error, ConflictError):
            return None  # it ended between the read and the cancel: ended, as the cancel meant it to be
        raise error

    def _drive(self, steps: Ensure, state: Any) -> tuple[FineTuningJob, bool]:
        """Carry out the steps of :func:`~airflow_provider_finetune.rules.once.ensure_job` with the sync client."""
        outcome: Any = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                return done.value
            outcome = None
            if isinstance(step, ReadState):
                outcome = NO_STATE_STORE if state is None else state.get(step.key)
            elif isinstance(step, WriteState):
                if state is not None:
                    state.set(step.key, step.value)
            elif isinstance(step, Sleep):
                time.sleep(step.seconds)
            else:
                try:
                    outcome = self._call(self._ensure_call(step))
                except FineTuningError as error:
                    outcome = self._ensure_answer(step, error)

    async def _adrive(self, steps: Ensure, state: Any) -> tuple[FineTuningJob, bool]:
        """Async :meth:`_drive`; the task state store is only read and written through a thread."""
        outcome: Any = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                return done.value
            outcome = None
            if isinstance(step, ReadState):
                outcome = NO_STATE_STORE if state is None else await asyncio.to_thread(state.get, step.key)
            elif isinstance(step, WriteState):
                if state is not None:
                    await asyncio.to_thread(state.set, step.key, step.value)
            elif isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
            else:
                try:
                    outcome = await self._acall(self._ensure_call(step))
                except FineTuningError as error:
                    outcome = self._ensure_answer(step, error)

    def find_job_by_tag(self, tag: str) -> FineTuningJob | None:
        """Return the newest job whose own metadata carries ``tag``, or ``None`` (never a job without it).

        Where the service ignores the filter, at most :data:`~airflow_provider_finetune.rules.once.MAX_WALK` jobs
        are looked at.
        """
        for walked, job in enumerate(self.iter_jobs(metadata=self._tag_filter(tag), limit=100), start=1):
            if (job.metadata or {}).get(TASK_TAG_KEY) == tag:
                return job
            if walked >= MAX_WALK:
                break
        return None

    async def afind_job_by_tag(self, tag: str) -> FineTuningJob | None:
        """Async :meth:`find_job_by_tag`."""
        await self.asettings()
        walked = 0
        async for job in self.aiter_jobs(metadata=self._tag_filter(tag), limit=100):
            if (job.metadata or {}).get(TASK_TAG_KEY) == tag:
                return job
            walked += 1
            if walked >= MAX_WALK:
                break
        return None

    def _tag_filter(self, tag: str) -> dict[str, str] | None:
        self.require("job_metadata")
        return {TASK_TAG_KEY: tag} if self.backend.capabilities.metadata_filter else None

    def list_jobs(
        self, *, after: str | None = None, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> Page[FineTuningJob]:
        """List one page of jobs, newest first, optionally filtered by metadata."""
        return self._call(self.backend.list_jobs(after, limit, metadata))

    async def alist_jobs(
        self, *, after: str | None = None, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> Page[FineTuningJob]:
        """Async :meth:`list_jobs`."""
        return await self._acall(self.backend.list_jobs(after, limit, metadata))

    def iter_jobs(
        self, *, after: str | None = None, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> Iterator[FineTuningJob]:
        """Iterate over every job, fetching pages of ``limit`` as needed."""
        return self._paginate(self.backend.list_jobs(after, limit, metadata))

    def aiter_jobs(
        self, *, after: str | None = None, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> AsyncIterator[FineTuningJob]:
        """Async :meth:`iter_jobs`."""
        return self._apaginate(self.backend.list_jobs(after, limit, metadata))

    def list_job_states(self, *, after: str | None = None, limit: int | None = None) -> Page[JobState]:
        """List one page of jobs, newest first, as their states only (lean: for watching many jobs)."""
        return self._call(self.backend.list_job_states(after, limit))

    async def alist_job_states(self, *, after: str | None = None, limit: int | None = None) -> Page[JobState]:
        """Async :meth:`list_job_states`."""
        return await self._acall(self.backend.list_job_states(after, limit))

    def get_job(self, job_id: str) -> FineTuningJob:
        """Retrieve a job."""
        return self._call(self.backend.job_call("GET", job_id))

    async def aget_job(self, job_id: str) -> FineTuningJob:
        """Async :meth:`get_job`."""
        return await self._acall(self.backend.job_call("GET", job_id))

    def cancel_job(self, job_id: str) -> FineTuningJob:
        """Cancel a job."""
        return self._call(self.backend.job_call("POST", job_id, "cancel"))

    async def acancel_job(self, job_id: str) -> FineTuningJob:
        """Async :meth:`cancel_job`."""
        return await self._acall(self.backend.job_call("POST", job_id, "cancel"))

    def pause_job(self, job_id: str) -> FineTuningJob:
        """Pause a running job."""
        return self._call(self.backend.job_call("POST", job_id, "pause"))

    async def apause_job(self, job_id: str) -> FineTuningJob:
        """Async :meth:`pause_job`."""
        return await self._acall(self.backend.job_call("POST", job_id, "pause"))

    def resume_job(self, job_id: str) -> FineTuningJob:
        """Resume a paused job."""
        return self._call(self.backend.job_call("POST", job_id, "resume"))

    async def aresume_job(self, job_id: str) -> FineTuningJob:
        """Async :meth:`resume_job`."""
        return await self._acall(self.backend.job_call("POST", job_id, "resume"))

    # -- events and checkpoints ------------------------------------------------------------------------

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[FineTuningJobEvent]:
        """List one page of a job's events, newest first; ``after`` pages back in time."""
        return self._call(self.backend.events(job_id, after, limit))

    async def alist_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[FineTuningJobEvent]:
        """Async :meth:`list_events`."""
        return await self._acall(self.backend.events(job_id, after, limit))

    def iter_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Iterator[FineTuningJobEvent]:
        """Iterate over a job's events, newest first."""
        return self._paginate(self.backend.events(job_id, after, limit))

    def aiter_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[FineTuningJobEvent]:
        """Async :meth:`iter_events`."""
        return self._apaginate(self.backend.events(job_id, after, limit))

    def list_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[FineTuningJobCheckpoint]:
        """List one page of a job's checkpoints, newest first."""
        return self._call(self.backend.checkpoints(job_id, after, limit))

    async def alist_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[FineTuningJobCheckpoint]:
        """Async :meth:`list_checkpoints`."""
        return await self._acall(self.backend.checkpoints(job_id, after, limit))

    def iter_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Iterator[FineTuningJobCheckpoint]:
        """Iterate over a job's checkpoints."""
        return self._paginate(self.backend.checkpoints(job_id, after, limit))

    def aiter_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[FineTuningJobCheckpoint]:
        """Async :meth:`iter_checkpoints`."""
        return self._apaginate(self.backend.checkpoints(job_id, after, limit))

    # -- inference -------------------------------------------------------------------------------------

    def chat_completion(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Ask a model (a fine-tuned one, to evaluate it): the service's chat completions, as JSON."""
        return self._call(self.backend.chat_completion(body))

    async def achat_completion(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Async :meth:`chat_completion`."""
        return await self._acall(self.backend.chat_completion(body))

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
        return self._call(self.backend.permissions(checkpoint, project_id, after, limit, order))

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
        return await self._acall(self.backend.permissions(checkpoint, project_id, after, limit, order))

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
        return self._paginate(self.backend.permissions(checkpoint, project_id, after, limit, order))

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
        return self._apaginate(self.backend.permissions(checkpoint, project_id, after, limit, order))

    def create_checkpoint_permissions(self, checkpoint: str, project_ids: list[str]) -> Page[CheckpointPermission]:
        """Share a checkpoint with projects; returns the permissions made."""
        return self._call(self.backend.grant(checkpoint, project_ids))

    async def acreate_checkpoint_permissions(
        self, checkpoint: str, project_ids: list[str]
    ) -> Page[CheckpointPermission]:
        """Async :meth:`create_checkpoint_permissions`."""
        return await self._acall(self.backend.grant(checkpoint, project_ids))

    def delete_checkpoint_permission(self, checkpoint: str, permission_id: str) -> DeletedCheckpointPermission:
        """Revoke one permission of a checkpoint."""
        return self._call(self.backend.revoke(checkpoint, permission_id))

    async def adelete_checkpoint_permission(self, checkpoint: str, permission_id: str) -> DeletedCheckpointPermission:
        """Async :meth:`delete_checkpoint_permission`."""
        return await self._acall(self.backend.revoke(checkpoint, permission_id))

    # -- graders ---------------------------------------------------------------------------------------

    def run_grader(self, grader: Any, model_sample: str, item: Mapping[str, Any] | None = None) -> GraderRunResult:
        """Run a grader on one sample (and dataset item)."""
        return self._call(self.backend.run_grader(grader, model_sample, item))

    async def arun_grader(
        self, grader: Any, model_sample: str, item: Mapping[str, Any] | None = None
    ) -> GraderRunResult:
        """Async :meth:`run_grader`."""
        return await self._acall(self.backend.run_grader(grader, model_sample, item))

    def validate_grader(self, grader: Any) -> GraderValidation:
        """Have the service validate a grader."""
        return self._call(self.backend.validate_grader(grader))

    async def avalidate_grader(self, grader: Any) -> GraderValidation:
        """Async :meth:`validate_grader`."""
        return await self._acall(self.backend.validate_grader(grader))

    # -- files -----------------------------------------------------------------------------------------

    def _files(self) -> OpenAIBackend:
        """The backend, once its service is known to have the files API (refused before any request otherwise)."""
        self.require("files")
        return self.backend

    async def _afiles(self) -> OpenAIBackend:
        """Async :meth:`_files`."""
        await self.asettings()
        return self._files()

    def get_file(self, file_id: str) -> FileObject:
        """Retrieve a file's description."""
        return self._call(self._files().get_file(file_id))

    async def aget_file(self, file_id: str) -> FileObject:
        """Async :meth:`get_file`."""
        return await self._acall((await self._afiles()).get_file(file_id))

    def delete_file(self, file_id: str) -> DeletedFile:
        """Delete a file."""
        return self._call(self._files().delete_file(file_id))

    async def adelete_file(self, file_id: str) -> DeletedFile:
        """Async :meth:`delete_file`."""
        return await self._acall((await self._afiles()).delete_file(file_id))

    def get_file_content(self, file_id: str) -> bytes:
        """Download a file's content (e.g. a job's results CSV)."""
        return self._call(self._files().file_content(file_id))

    async def aget_file_content(self, file_id: str) -> bytes:
        """Async :meth:`get_file_content`."""
        return await self._acall((await self._afiles()).file_content(file_id))

    def list_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int | None = None
    ) -> Page[FileObject]:
        """List one page of files."""
        return self._call(self._files().list_files(purpose, after, limit))

    async def alist_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int | None = None
    ) -> Page[FileObject]:
        """Async :meth:`list_files`."""
        return await self._acall((await self._afiles()).list_files(purpose, after, limit))

    def iter_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int | None = None
    ) -> Iterator[FileObject]:
        """Iterate over every file."""
        return self._paginate(self._files().list_files(purpose, after, limit))

    def aiter_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[FileObject]:
        """Async :meth:`iter_files`."""
        return self._apaginate(self._files().list_files(purpose, after, limit))

    def upload_file(self, source: FileSource, *, purpose: str = "fine-tune", filename: str | None = None) -> FileObject:
        """Upload a file; one larger than ``upload_threshold`` goes through the Uploads API in parts.

        :param source: a path, bytes, or a binary file object opened for reading (and seeking).
        :param purpose: the file's purpose.
        :param filename: the name the service records; the path's name by default.
        """
        backend = self._files()
        with _opened(source, filename) as (stream, name, size):
            route = self.upload_route(size, name)
            if route == "single":
                return self._call(backend.create_file(stream, name, purpose))
            if route == "multipart":
                return backend.upload_multipart(self, stream, name, size, purpose)
            return self._upload_in_parts(stream, name, size, purpose)

    async def aupload_file(
        self, source: FileSource, *, purpose: str = "fine-tune", filename: str | None = None
    ) -> FileObject:
        """Async :meth:`upload_file`."""
        backend = await self._afiles()
        with _opened(source, filename) as (stream, name, size):
            route = self.upload_route(size, name)
            if route == "single":
                return await self._acall(backend.create_file(stream, name, purpose))
            if route == "multipart":
                return await backend.aupload_multipart(self, stream, name, size, purpose)
            return await self._aupload_in_parts(stream, name, size, purpose)

    def upload_route(self, size: int, name: str = "the file") -> Literal["single", "parts", "multipart"]:
        """How a file of ``size`` bytes goes up; refused, naming the file, before any request when it cannot.

        ``single``: one request; ``parts``: the Uploads API, above ``upload_threshold``; ``multipart``: the
        service's own multipart upload, above its backend's ``multipart_threshold`` (Together).

        :raises InvalidRequestError: for a file larger than the service takes.
        :raises UnsupportedCapabilityError: for a file that needs the Uploads API on a service without it.
        """
        backend = self.backend
        if size > backend.max_file_size:
            raise InvalidRequestError(
                f"{name} is {size} bytes; {backend.label} takes at most {backend.max_file_size} bytes", field="file"
            )
        if backend.multipart_threshold is not None:
            return "single" if size <= backend.multipart_threshold else "multipart"
        if size <= self.upload_threshold:
            return "single"
        backend.require("uploads")  # a file this large goes up in parts
        return "parts"

    def _upload_in_parts(self, stream: IO[bytes], name: str, size: int, purpose: str) -> FileObject:
        upload = self._call(self.backend.create_upload(name, size, purpose))
        try:
            md5 = hashlib.md5(usedforsecurity=False)
            part_ids = []
            for chunk in _chunks(stream, self.part_size):
                md5.update(chunk)
                part_ids.append(self._call(self.backend.add_part(upload.id, chunk)).id)
            done = self._call(self.backend.complete_upload(upload.id, part_ids, md5.hexdigest()))
        except BaseException:
            self._cancel_upload_quietly(upload.id)
            raise
        return _uploaded_file(done)

    async def _aupload_in_parts(self, stream: IO[bytes], name: str, size: int, purpose: str) -> FileObject:
        upload = await self._acall(self.backend.create_upload(name, size, purpose))
        try:
            md5 = hashlib.md5(usedforsecurity=False)
            part_ids = []
            for chunk in _chunks(stream, self.part_size):
                md5.update(chunk)
                part_ids.append((await self._acall(self.backend.add_part(upload.id, chunk))).id)
            done = await self._acall(self.backend.complete_upload(upload.id, part_ids, md5.hexdigest()))
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
        return self._call(self.backend.create_upload(filename, size, purpose))

    async def acreate_upload(self, filename: str, size: int, *, purpose: str = "fine-tune") -> Upload:
        """Async :meth:`create_upload`."""
        return await self._acall(self.backend.create_upload(filename, size, purpose))

    def add_upload_part(self, upload_id: str, data: bytes) -> UploadPart:
        """Add one part (at most 64 MB) to an upload."""
        return self._call(self.backend.add_part(upload_id, data))

    async def aadd_upload_part(self, upload_id: str, data: bytes) -> UploadPart:
        """Async :meth:`add_upload_part`."""
        return await self._acall(self.backend.add_part(upload_id, data))

    def complete_upload(self, upload_id: str, part_ids: list[str], *, md5: str | None = None) -> Upload:
        """Complete an upload with its parts in order; the service checks ``md5`` if given."""
        return self._call(self.backend.complete_upload(upload_id, part_ids, md5))

    async def acomplete_upload(self, upload_id: str, part_ids: list[str], *, md5: str | None = None) -> Upload:
        """Async :meth:`complete_upload`."""
        return await self._acall(self.backend.complete_upload(upload_id, part_ids, md5))

    def cancel_upload(self, upload_id: str) -> Upload:
        """Cancel an upload."""
        return self._call(self.backend.upload_action(upload_id, "cancel"))

    async def acancel_upload(self, upload_id: str) -> Upload:
        """Async :meth:`cancel_upload`."""
        return await self._acall(self.backend.upload_action(upload_id, "cancel"))


def _uploaded_file(upload: Upload) -> FileObject:
    if upload.file is None:
        raise FineTuningAPIError(200, f"upload {upload.id} completed with status {upload.status} but no file")
    return upload.file


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
        return stream, name, size

    def __exit__(self, *exc: object) -> None:
        if self.owned is not None:
            self.owned.close()


def _failed(lookup: asyncio.Future[Any]) -> bool:
    return lookup.done() and (lookup.cancelled() or lookup.exception() is not None)
