"""What turns a hook's calls into flows and iterators: the requests of one call, pages, and the hook's own flows.

The functions here take a :class:`~airflow_provider_finetune.hooks.finetune.FineTuningHook` (``hook``) and read
its connection only when they start, so that a flow run by ``arun_flow`` reads it without blocking.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from airflow_provider_finetune.backends.base import Backend, Call
from airflow_provider_finetune.core.client import Exchange, RetryPolicy, exchange, run_async, run_sync
from airflow_provider_finetune.core.flows import Flow, Transfer, redirect_answers, transfer_async, transfer_sync
from airflow_provider_finetune.hooks.uploads import FileSource, route_flow
from airflow_provider_finetune.models import CreateFineTuningJobRequest, FileObject, FineTuningJob, Page
from airflow_provider_finetune.rules.once import JobIdentity, OnChangedRequest

__all__ = ["asend", "call_steps", "ensure_flow", "files_backend", "pages", "send", "upload_flow"]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def ensure_flow(
    hook: Any,
    request: CreateFineTuningJobRequest | Mapping[str, Any],
    *,
    tag: str | None = None,
    identity: JobIdentity | None = None,
    on_changed_request: OnChangedRequest = "cancel_and_create",
    service_options: Mapping[str, Any] | None = None,
) -> Flow[tuple[FineTuningJob, bool]]:
    """The flow of ``FineTuningHook.ensure_job`` (its backend's), for ``run_flow`` or ``arun_flow``.

    The connection is read when the flow starts, so that ``arun_flow`` reads it without blocking.
    """
    backend = hook.backend
    return (
        yield from backend.ensure_flow(
            request,
            identity or JobIdentity(tag or ""),
            policy=hook.retry_policy,
            on_changed_request=on_changed_request,
            service_options=service_options,
            now=time.time(),
            log=hook.log,
        )
    )


def upload_flow(
    hook: Any, source: FileSource, *, purpose: str = "fine-tune", filename: str | None = None
) -> Flow[FileObject]:
    """The flow of ``FineTuningHook.upload_file``, for ``run_flow`` or ``arun_flow``.

    The connection is read when the flow starts, so that ``arun_flow`` reads it without blocking.
    """
    threshold, part_size = hook.upload_threshold, hook.part_size
    flow = route_flow(
        hook.backend, source, purpose=purpose, filename=filename, threshold=threshold, part_size=part_size
    )
    return (yield from flow)


def call_steps(
    call: Call[Any], client: httpx.Client | httpx.AsyncClient, backend: Backend, policy: RetryPolicy
) -> Exchange:
    """The request core's steps for one call (a redirect is its answer where the call says so)."""
    steps = exchange(
        lambda: call.build(client),
        settings=backend.settings,
        policy=policy,
        idempotent=call.idempotent,
        read_error=backend.read_error,
    )
    return redirect_answers(steps) if call.redirect else steps


def pages(hook: Any, first: Call[Page[M]]) -> Iterator[M]:
    """Every item of a list call, page after page, read with the hook's sync client."""
    call: Call[Page[M]] | None = first
    while call is not None:
        page = hook.call(call)
        yield from page.data
        call = hook.backend.next_page(call, page)


def send(call: Call[T] | Transfer[T], client: httpx.Client, backend: Backend, policy: RetryPolicy) -> T:
    """Carry out one request step: a call through the request core, a transfer with a storage client of its own."""
    if isinstance(call, Transfer):
        with backend.make_storage_client(call.timeout, follow_redirects=call.follow_redirects) as storage:
            return transfer_sync(call, storage, settings=backend.settings, policy=policy)
    return call.parse(run_sync(client, call_steps(call, client, backend, policy)))


async def asend(call: Call[T] | Transfer[T], client: httpx.AsyncClient, backend: Backend, policy: RetryPolicy) -> T:
    """Async :func:`send`."""
    if isinstance(call, Transfer):
        async with backend.make_async_storage_client(call.timeout, follow_redirects=call.follow_redirects) as storage:
            return await transfer_async(call, storage, settings=backend.settings, policy=policy)
    return call.parse(await run_async(client, call_steps(call, client, backend, policy)))


def files_backend(backend: Any) -> Any:
    """The backend, once its service is known to have the files API (refused before any request otherwise)."""
    backend.require("files")
    return backend
