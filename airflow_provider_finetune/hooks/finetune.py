"""``FineTuningHook``: an Airflow connection turned into calls and flows of the whole fine-tuning API.

The connection names the service; its backend (:mod:`airflow_provider_finetune.backends`) describes each
endpoint once, as a :class:`Call` (method, path, query, body, how to read the answer back into the canonical
models), and each operation of more than one request (an upload in parts, a dataset upload, a price check,
once-only creation) as a flow (:mod:`airflow_provider_finetune.core.flows`). The hook has two doors: ``call`` /
``acall`` hand one call to the one request core in :mod:`airflow_provider_finetune.core.client`, and
``run_flow`` / ``arun_flow`` carry out a flow with those, so sync and async cannot drift apart, whatever the
service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import replace
from functools import cached_property
from typing import Any, Literal, TypeVar

import httpx
from airflow.exceptions import AirflowNotFoundException
from airflow.sdk import BaseHook
from pydantic import BaseModel

from airflow_provider_finetune.backends import backend_for
from airflow_provider_finetune.backends.base import MAX_PART_SIZE, Backend, Call
from airflow_provider_finetune.core.client import (
    ConnectionSettings,
    RetryPolicy,
    shared_async_client,
)
from airflow_provider_finetune.core.flows import (
    Flow,
    Transfer,
    run_flow_async,
    run_flow_sync,
)
from airflow_provider_finetune.exceptions import (
    AuthenticationError,
    FineTuningConnectionError,
    FineTuningError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from airflow_provider_finetune.hooks.flows import asend, ensure_flow, files_backend, pages, send, upload_flow
from airflow_provider_finetune.hooks.lookups import overridden, read_connection, shared_lookup
from airflow_provider_finetune.hooks.uploads import FILES_API_LIMIT, FileSource, upload_route
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
)
from airflow_provider_finetune.rules.budget import PriceEstimate
from airflow_provider_finetune.rules.once import MAX_WALK, TASK_TAG_KEY, JobIdentity, OnChangedRequest, room_for_tags

__all__ = [
    "FILES_API_LIMIT",
    "TASK_TAG_KEY",
    "Call",
    "FileSource",
    "FineTuningHook",
    "room_for_tag",
]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

#: The older name of :func:`~airflow_provider_finetune.rules.once.room_for_tags`.
room_for_tag = room_for_tags


class FineTuningHook(BaseHook):
    """Talk to the OpenAI fine-tuning API, or a service that speaks it, through an Airflow connection.

    Every endpoint of the service is one :class:`Call` of its backend, carried out by ``call`` (or ``await
    acall``); what the README and the operators use has a named method (``get_job``, ``iter_checkpoints``...),
    and what the triggers use an async one (``aget_job``, ``alist_events``...). An operation of more than one
    request is a flow, carried out by ``run_flow`` (or ``await arun_flow``).

    Transient failures (408, 409, 429, 5xx, timeouts, dropped connections) are
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
    hook_name = "Fine-tuning"

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
        from airflow_provider_finetune.backends import default_base_url

        return {
            "hidden_fields": ["schema", "login", "port"],
            "relabeling": {"host": "Base URL", "password": "API key"},
            "placeholders": {"host": default_base_url(), "password": "sk-..."},
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Add the connection's own fields to the form (Airflow < 3.2 reads them from here).

        The very fields of ``conn-fields`` in ``get_provider_info`` (the registry of services makes both).
        Airflow 3.0 and 3.1 turn these wtforms fields into the form's JSON schema: ``any_of`` becomes a
        choice, ``PasswordField`` a masked field.
        """
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, PasswordField, StringField
        from wtforms.validators import Optional, any_of

        from airflow_provider_finetune.backends import connection_fields
        from airflow_provider_finetune.core.constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT

        def widget(field: Mapping[str, Any]) -> Any:
            schema = field["schema"]
            label = lazy_gettext(field["label"])
            if schema.get("format") == "password":
                return PasswordField(label, widget=BS3PasswordFieldWidget())
            if "integer" in schema["type"] or "number" in schema["type"]:
                return IntegerField(label, widget=BS3TextFieldWidget(), default=schema.get("default"))
            choices = [value for value in schema.get("enum") or () if value is not None]
            validators = [any_of(choices), Optional()] if choices else None
            return StringField(label, widget=BS3TextFieldWidget(), validators=validators, default=schema.get("default"))

        fields = connection_fields(timeout=DEFAULT_TIMEOUT, max_retries=DEFAULT_MAX_RETRIES)
        return {name: widget(field) for name, field in fields.items()}

    @cached_property
    def settings(self) -> ConnectionSettings:
        """The connection's settings, read on first use."""
        return overridden(read_connection(self.get_connection(self.finetune_conn_id)), self._max_retries, self._timeout)

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
            self.__dict__["settings"] = overridden(read_connection(conn), self._max_retries, self._timeout)
        return self.settings

    async def ashared_settings(self, *, max_age: float = 60.0) -> ConnectionSettings:
        """:meth:`asettings`, looked up once for every hook of the connection asking this way in this event loop.

        A triggerer starting a thousand triggers of one connection looks it up once (a secrets backend is
        asked once, not a thousand times); a lookup older than ``max_age`` seconds is made again, so that a
        changed connection is seen.
        """
        if "settings" not in self.__dict__:
            lookup = FineTuningHook(self.finetune_conn_id).asettings
            settings = await shared_lookup(self.finetune_conn_id, lookup, max_age=max_age)
            self.__dict__["settings"] = overridden(settings, self._max_retries, self._timeout)
        return self.settings

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy in force: the one given, with the connection's ``max_retries``."""
        policy = self._retry_policy or RetryPolicy()
        return replace(policy, max_retries=self.settings.max_retries)

    @property
    def backend(self) -> Backend:
        """The connection's service dialect (made with the settings, on first use)."""
        settings = self.settings
        made = self.__dict__.get("_backend")
        if made is None or made[0] is not settings:
            made = self.__dict__["_backend"] = (settings, backend_for(settings))
        return made[1]

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
            self.call(self.backend.list_jobs(None, 1, None))
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

    # -- the two doors: one request, one flow -----------------------------------------------------------

    def call(self, call: Call[T] | Transfer[T]) -> T:
        """Carry out one of the backend's calls through the request core (any endpoint of the service).

        A :class:`~airflow_provider_finetune.core.flows.Transfer` (to a storage host's presigned address) goes
        with a client of its own, without the connection's key.
        """
        return send(call, self.client, self.backend, self.retry_policy)

    async def acall(self, call: Call[T] | Transfer[T]) -> T:
        """Async :meth:`call` (``await hook.acall(hook.backend.get_file(file_id))``)."""
        client = await self.aclient()
        return await asend(call, client, self.backend, self.retry_policy)

    def run_flow(self, flow: Flow[T], *, state: Any = None) -> T:
        """Carry out a flow of the backend (:mod:`airflow_provider_finetune.core.flows`); return what it returns.

        :param state: the task's state store (``context["task_state_store"]``, Airflow 3.3+), if the flow uses it.
        """
        return run_flow_sync(self.call, flow, state=state)

    async def arun_flow(self, flow: Flow[T], *, state: Any = None) -> T:
        """Async :meth:`run_flow` (``await hook.arun_flow(ensure_flow(hook, request, tag=tag), state=state)``)."""
        await self.asettings()
        return await run_flow_async(self.acall, flow, state=state)

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
        return self.call(self.backend.create_job(request, service_options))

    def estimate_price(
        self, request: CreateFineTuningJobRequest, *, service_options: Mapping[str, Any] | None = None
    ) -> PriceEstimate | None:
        """The service's own estimate of what creating ``request`` will cost, where it makes one; else ``None``."""
        call = self.backend.estimate_price(self.backend.job_body(request, service_options))
        return None if call is None else self.call(call)

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
        flow = ensure_flow(
            self,
            request,
            tag=tag,
            identity=identity,
            on_changed_request=on_changed_request,
            service_options=service_options,
        )
        return self.run_flow(flow, state=state)

    def find_job_by_tag(self, tag: str) -> FineTuningJob | None:
        """Return the newest job whose own metadata carries ``tag``, or ``None`` (never a job without it).

        Where the service ignores the filter, at most :data:`~airflow_provider_finetune.rules.once.MAX_WALK` jobs
        are looked at.
        """
        self.require("job_metadata")
        metadata = {TASK_TAG_KEY: tag} if self.backend.capabilities.metadata_filter else None
        for walked, job in enumerate(self.iter_jobs(metadata=metadata, limit=100), start=1):
            if (job.metadata or {}).get(TASK_TAG_KEY) == tag:
                return job
            if walked >= MAX_WALK:
                break
        return None

    def list_jobs(
        self, *, after: str | None = None, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> Page[FineTuningJob]:
        """List one page of jobs, newest first, optionally filtered by metadata."""
        return self.call(self.backend.list_jobs(after, limit, metadata))

    def iter_jobs(
        self, *, after: str | None = None, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> Iterator[FineTuningJob]:
        """Iterate over every job, fetching pages of ``limit`` as needed."""
        return pages(self, self.backend.list_jobs(after, limit, metadata))

    async def alist_job_states(self, *, after: str | None = None, limit: int | None = None) -> Page[JobState]:
        """List one page of jobs, newest first, as their states only (lean: for watching many jobs)."""
        await self.asettings()
        return await self.acall(self.backend.list_job_states(after, limit))

    def get_job(self, job_id: str) -> FineTuningJob:
        """Retrieve a job."""
        return self.call(self.backend.job_call("GET", job_id))

    async def aget_job(self, job_id: str) -> FineTuningJob:
        """Async :meth:`get_job`."""
        await self.asettings()
        return await self.acall(self.backend.job_call("GET", job_id))

    def cancel_job(self, job_id: str) -> FineTuningJob:
        """Cancel a job."""
        return self.call(self.backend.job_call("POST", job_id, "cancel"))

    async def acancel_job(self, job_id: str) -> FineTuningJob:
        """Async :meth:`cancel_job`."""
        await self.asettings()
        return await self.acall(self.backend.job_call("POST", job_id, "cancel"))

    def pause_job(self, job_id: str) -> FineTuningJob:
        """Pause a running job."""
        return self.call(self.backend.job_call("POST", job_id, "pause"))

    def resume_job(self, job_id: str) -> FineTuningJob:
        """Resume a paused job."""
        return self.call(self.backend.job_call("POST", job_id, "resume"))

    # -- events and checkpoints ------------------------------------------------------------------------

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[FineTuningJobEvent]:
        """List one page of a job's events, newest first; ``after`` pages back in time."""
        return self.call(self.backend.events(job_id, after, limit))

    async def alist_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[FineTuningJobEvent]:
        """Async :meth:`list_events`."""
        await self.asettings()
        return await self.acall(self.backend.events(job_id, after, limit))

    def iter_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Iterator[FineTuningJobEvent]:
        """Iterate over a job's events, newest first."""
        return pages(self, self.backend.events(job_id, after, limit))

    def iter_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Iterator[FineTuningJobCheckpoint]:
        """Iterate over a job's checkpoints."""
        return pages(self, self.backend.checkpoints(job_id, after, limit))

    # -- inference, graders, checkpoint permissions (admin key) -----------------------------------------

    def chat_completion(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Ask a model (a fine-tuned one, to evaluate it): the service's chat completions, as JSON."""
        return self.call(self.backend.chat_completion(body))

    def run_grader(self, grader: Any, model_sample: str, item: Mapping[str, Any] | None = None) -> GraderRunResult:
        """Run a grader on one sample (and dataset item)."""
        return self.call(self.backend.run_grader(grader, model_sample, item))

    def validate_grader(self, grader: Any) -> GraderValidation:
        """Have the service validate a grader."""
        return self.call(self.backend.validate_grader(grader))

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
        return pages(self, self.backend.permissions(checkpoint, project_id, after, limit, order))

    def create_checkpoint_permissions(self, checkpoint: str, project_ids: list[str]) -> Page[CheckpointPermission]:
        """Share a checkpoint with projects; returns the permissions made."""
        return self.call(self.backend.grant(checkpoint, project_ids))

    def delete_checkpoint_permission(self, checkpoint: str, permission_id: str) -> DeletedCheckpointPermission:
        """Revoke one permission of a checkpoint."""
        return self.call(self.backend.revoke(checkpoint, permission_id))

    # -- files -----------------------------------------------------------------------------------------

    def get_file(self, file_id: str) -> FileObject:
        """Retrieve a file's description."""
        return self.call(files_backend(self.backend).get_file(file_id))

    def delete_file(self, file_id: str) -> DeletedFile:
        """Delete a file."""
        return self.call(files_backend(self.backend).delete_file(file_id))

    def get_file_content(self, file_id: str) -> bytes:
        """Download a file's content (e.g. a job's results CSV)."""
        return self.call(files_backend(self.backend).file_content(file_id))

    def list_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int | None = None
    ) -> Page[FileObject]:
        """List one page of files."""
        return self.call(files_backend(self.backend).list_files(purpose, after, limit))

    def iter_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int | None = None
    ) -> Iterator[FileObject]:
        """Iterate over every file."""
        return pages(self, files_backend(self.backend).list_files(purpose, after, limit))

    def upload_file(self, source: FileSource, *, purpose: str = "fine-tune", filename: str | None = None) -> FileObject:
        """Upload a file; one larger than ``upload_threshold`` goes through the Uploads API in parts.

        :param source: a path, bytes, or a binary file object opened for reading (and seeking).
        :param purpose: the file's purpose.
        :param filename: the name the service records; the path's name by default.
        """
        return self.run_flow(upload_flow(self, source, purpose=purpose, filename=filename))

    def upload_route(self, size: int, name: str = "the file") -> Literal["single", "parts", "multipart"]:
        """How a file of ``size`` bytes goes up (see :func:`~airflow_provider_finetune.hooks.uploads.upload_route`).

        :raises InvalidRequestError: for a file larger than the service takes.
        :raises UnsupportedCapabilityError: for a file that needs the Uploads API on a service without it.
        """
        return upload_route(self.backend, size, name, self.upload_threshold)
