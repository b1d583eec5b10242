"""Connection lookups of the hooks: the overrides a hook is given, and one lookup shared per event loop.

A triggerer starting a thousand triggers of one connection looks it up once (a secrets backend is asked once,
not a thousand times); a lookup older than its ``max_age`` is made again, so that a changed connection is seen.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from airflow_provider_finetune.core.client import ConnectionSettings
from airflow_provider_finetune.hooks.connection import settings_from_connection

__all__ = ["overridden", "read_connection", "shared_lookup"]

#: Shared connection lookups per event loop: conn_id -> (when it was started, the lookup).
_SHARED_LOOKUPS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[float, asyncio.Future[ConnectionSettings]]]
] = weakref.WeakKeyDictionary()


async def shared_lookup(
    conn_id: str, lookup: Callable[[], Awaitable[ConnectionSettings]], *, max_age: float
) -> ConnectionSettings:
    """The settings of ``conn_id``, looked up by ``lookup`` once for every caller in this event loop.

    A lookup older than ``max_age`` seconds, or one that failed, is made again.
    """
    lookups = _SHARED_LOOKUPS.setdefault(asyncio.get_running_loop(), {})
    now = time.monotonic()
    entry = lookups.get(conn_id)
    if entry is None or now - entry[0] >= max_age or _failed(entry[1]):
        entry = lookups[conn_id] = (now, asyncio.ensure_future(lookup()))
    return await asyncio.shield(entry[1])


def overridden(settings: ConnectionSettings, max_retries: int | None, timeout: float | None) -> ConnectionSettings:
    """``settings`` with the ``max_retries`` and ``timeout`` a hook was given, where it was given them."""
    changes: dict[str, Any] = {}
    if max_retries is not None:
        changes["max_retries"] = max_retries
    if timeout is not None:
        changes["timeout"] = timeout
    return replace(settings, **changes) if changes else settings


def _failed(lookup: asyncio.Future[Any]) -> bool:
    return lookup.done() and (lookup.cancelled() or lookup.exception() is not None)


def read_connection(conn: Any) -> ConnectionSettings:
    """Read a ``finetune`` connection into settings, its secrets masked in the task logs (see :mod:`.connection`)."""
    from airflow.sdk.log import mask_secret

    return settings_from_connection(conn, mask=mask_secret)
