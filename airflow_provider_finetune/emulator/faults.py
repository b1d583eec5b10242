"""Fault injection: a pure ASGI middleware that makes some API requests fail, drawn from a seed.

API requests are those under ``/v1`` and under ``/openai`` (the Azure dialects, whose fault answers have
Azure's error shapes), Bedrock's, and those under a prefix a dialect registered with
:func:`register_fault_shape` (whose fault answers have that dialect's shape).

A selected request is answered 500/502/503 or 429 (with ``retry-after``), has its connection dropped, or
is slowed down.

Every selected request makes the same three draws in arrival order (kind, status, latency), so the same
seed and the same requests give the same faults. The admin endpoints (``/_emulator/...``) never get faults.

A dropped connection closes the socket without an answer: the client sees the server disconnect
(httpx: ``RemoteProtocolError``), the case where it cannot know whether the request was handled. With
``after_processing`` the request is handled first and its answer is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
from collections.abc import Callable
from typing import Any

from airflow_provider_finetune.emulator.config import FaultConfig
from airflow_provider_finetune.emulator.counters import Counters
from airflow_provider_finetune.emulator.dialects.bedrock.errors import aws_fault, is_bedrock_path
from airflow_provider_finetune.emulator.errors import error_body_for_path

__all__ = ["RAW_SEND_KEY", "FaultMiddleware", "FaultShape", "is_api_path", "register_fault_shape"]

#: Scope key under which the outermost middleware leaves the server's own ``send`` (to reach the socket).
RAW_SEND_KEY = "finetune_emulator.raw_send"

_ASGIApp = Any
_SERVER_ERRORS = (
    (500, "The server had an error while processing your request. Sorry about that!"),
    (502, "Bad gateway."),
    (503, "The server is overloaded or not ready yet."),
)

logger = logging.getLogger(__name__)


#: The paths of API requests, the only ones faults are injected into.
_API_PREFIXES = ("/v1/", "/openai/", "/together/")

#: How a dialect answers an injected fault: (HTTP status, message) -> (JSON body, extra headers).
FaultShape = Callable[[int, str], tuple[dict[str, Any], dict[str, str]]]

#: Path prefixes of dialects whose fault answers have their own shape, with the shape.
_SHAPES: dict[str, FaultShape] = {}


def register_fault_shape(prefix: str, shape: FaultShape) -> None:
    """Make the requests under ``prefix`` API requests (faults, status counts), answered in ``shape`` when faulted.

    :param prefix: a path prefix ending with ``/`` (``"/vertex/"``).
    :param shape: renders a fault's body and headers (``retry-after`` and the like are added to a 429's).
    """
    _SHAPES[prefix] = shape


def _shape_of(path: str) -> FaultShape | None:
    return next((shape for prefix, shape in _SHAPES.items() if path.startswith(prefix)), None)


def is_api_path(path: str) -> bool:
    """Whether a request path is an API request: faults are injected into it and its answers counted."""
    return path.startswith(_API_PREFIXES) or is_bedrock_path(path) or _shape_of(path) is not None


class _DroppedConnection(Exception):
    """Raised after the response started, when the socket cannot be reached: the server closes it."""


class _QuietDrops(logging.Filter):
    """Keeps uvicorn from logging an injected drop as an application error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _DroppedConnection))


_uvicorn_logger = logging.getLogger("uvicorn.error")
if not any(isinstance(item, _QuietDrops) for item in _uvicorn_logger.filters):
    _uvicorn_logger.addFilter(_QuietDrops())


class FaultMiddleware:
    """Injects faults into API requests (:func:`is_api_path`).

    :param app: the ASGI app behind.
    :param config: what to inject; change it at run time with :meth:`configure`.
    :param counters: counts the faults injected, by kind.
    """

    def __init__(self, app: _ASGIApp, config: FaultConfig, counters: Counters) -> None:
        self.app = app
        self._counters = counters
        self.config = config
        self._random = random.Random(config.seed)
        self._match: re.Pattern[str] | None = None
        self.configure(config)

    def configure(self, config: FaultConfig) -> None:
        """Use new settings; the generator restarts from their seed."""
        self._match = re.compile(config.match) if config.match else None
        self._random = random.Random(config.seed)
        self.config = config

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one ASGI connection, perhaps with a fault."""
        config = self.config
        api = scope["type"] == "http" and is_api_path(scope["path"])
        if not api or not config.active:
            await self.app(scope, receive, send)
            return
        if self._match is not None and not self._match.search(f"{scope['method']} {scope['path']}"):
            await self.app(scope, receive, send)
            return
        kind_draw, status_draw, latency_draw = self._random.random(), self._random.random(), self._random.random()
        delay = config.latency + config.latency_jitter * latency_draw
        if delay > 0:
            self._counters.faults["latency"] += 1
            await asyncio.sleep(delay)
        fault = _choose(config, kind_draw)
        if fault is None:
            await self.app(scope, receive, send)
            return
        if config.after_processing:
            await self.app(scope, receive, _discard)
        if fault == "drop":
            self._counters.faults["drop"] += 1
            await _drop(scope, send)
            return
        if fault == "429":
            self._counters.faults["429"] += 1
            await _rate_limited(send, config.retry_after, scope["path"])
            return
        status, message = _SERVER_ERRORS[min(2, int(status_draw * 3))]
        self._counters.faults[str(status)] += 1
        if is_bedrock_path(scope["path"]):
            await _answer(send, status, *aws_fault(status, message))
            return
        shape = _shape_of(scope["path"])
        if shape is not None:
            await _answer(send, status, *shape(status, message))
            return
        await _answer(send, status, error_body_for_path(scope["path"], status, message, "server_error"), {})


def _choose(config: FaultConfig, draw: float) -> str | None:
    if draw < config.drop_rate:
        return "drop"
    if draw < config.drop_rate + config.error_rate:
        return "5xx"
    if draw < config.drop_rate + config.error_rate + config.rate_limit_rate:
        return "429"
    return None


async def _discard(message: dict[str, Any]) -> None:
    """A ``send`` that loses the answer of a request handled before its fault."""


async def _rate_limited(send: Any, retry_after: float, path: str) -> None:
    seconds = max(0, math.ceil(retry_after))
    headers = {
        "retry-after": str(seconds),
        "retry-after-ms": str(int(retry_after * 1000)),
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": f"{retry_after:g}s",
    }
    message = f"Rate limit reached for requests (emulated). Please try again in {retry_after:g}s."
    if is_bedrock_path(path):
        body, aws_headers = aws_fault(429, message)
        await _answer(send, 429, body, {**headers, **aws_headers})
        return
    shape = _shape_of(path)
    if shape is not None:
        body, own_headers = shape(429, message)
        await _answer(send, 429, body, {**headers, **own_headers})
        return
    body = error_body_for_path(path, 429, message, "requests", code="rate_limit_exceeded")
    await _answer(send, 429, body, headers)


async def _answer(send: Any, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    content = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    raw_headers += [(name.encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})


async def _drop(scope: dict[str, Any], send: Any) -> None:
    """Close the connection without answering."""
    raw_send = scope.get(RAW_SEND_KEY, send)
    # uvicorn's send is a method of the request cycle, which holds the connection's transport.
    transport = getattr(getattr(raw_send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "close"):
        transport.close()
        # Let the server see the connection lost, so that it neither answers nor logs.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return
    # Another server: start an answer and fail, which makes the server close the connection mid-answer.
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
    raise _DroppedConnection("connection dropped by fault injection")
