"""The request core shared by the sync and the async client: build, authenticate, send, classify, retry.

Everything that decides something lives in :func:`exchange`, a generator that never does I/O: it yields
``Send(request)`` and ``Sleep(seconds)`` steps and is told what came back. :func:`run_sync` and
:func:`run_async` are the two I/O edges that carry those steps out with ``httpx.Client`` and
``httpx.AsyncClient``; they are the only places where the two paths differ, so the async path can never
lose a retry rule or an error mapping that the sync path has.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import random
import time
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Literal, NamedTuple, TypeVar
from urllib.parse import quote

import httpx

from airflow_provider_finetune.core.constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, __version__
from airflow_provider_finetune.exceptions import (
    FineTuningAPIError,
    FineTuningConnectionError,
    FineTuningError,
    FineTuningNotAllowedError,
    FineTuningTimeoutError,
    InvalidRequestError,
    QuotaExceededError,
    UnsafeToRetryError,
    api_error_for_status,
)

__all__ = [
    "ConnectionSettings",
    "Course",
    "RetryPolicy",
    "Send",
    "Sleep",
    "exchange",
    "path_param",
    "run_async",
    "run_sync",
    "shared_async_client",
]

T = TypeVar("T")


# Statuses that say "try again": the request timed out, conflicted with a concurrent change, was rate
# limited, or the service failed.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class ConnectionSettings:
    """Where and how to talk to a service that speaks the fine-tuning API.

    The API key is kept out of ``repr`` and only ever leaves this object inside a request header.

    :param base_url: URL the API paths are appended to, e.g. ``https://api.openai.com/v1``.
    :param api_key: the secret key.
    :param organization: the account's organization, where the service has one (its backend sends it).
    :param project: the account's project, where the service has one (its backend sends it).
    :param service: the service's name in the registry of backends; it picks the dialect (the default when empty).
    :param preset: for ``openai-compatible``, the gateway whose rules apply (``litellm``, ``portkey``,
        ``bedrock-mantle``), if any.
    :param api_version: ``api-version`` query parameter sent with every request (Azure), if set.
    :param auth: how to authenticate where a service offers more than one way (Azure: ``key`` or
        ``entra``; Bedrock: ``key``, a Bedrock API key, or ``sigv4``); empty for the service's default.
    :param extra_headers: more headers for every request (gateways such as Portkey or LiteLLM).
    :param timeout: seconds to wait for the service (connecting takes at most 10 of them).
    :param max_retries: how often a transient failure is retried before it is raised.
    :param aws_conn_id: the Airflow AWS connection whose credentials sign requests (Bedrock with ``sigv4``).
    :param region_name: the AWS region (Bedrock); the AWS connection's when ``None``.
    :param service_fields: the connection's extras that are its service's own form fields (``Service.fields`` of
        the registry), as text, for its backend to read (an Airflow connection its credentials come from...).
    """

    base_url: str
    api_key: str = field(default="", repr=False)
    organization: str | None = None
    project: str | None = None
    service: str = ""
    preset: str | None = None
    api_version: str | None = None
    auth: str | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    aws_conn_id: str | None = None
    region_name: str | None = None
    service_fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise InvalidRequestError(
                f"base_url must start with http:// or https://, got {self.base_url!r}", field="base_url"
            )
        if self.timeout <= 0:
            raise InvalidRequestError(f"timeout must be positive, got {self.timeout}", field="timeout")
        if self.max_retries < 0:
            raise InvalidRequestError(f"max_retries must be 0 or more, got {self.max_retries}", field="max_retries")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    def headers(self) -> dict[str, str]:
        """Return the headers every request carries; authentication is the backend's (an ``httpx.Auth``)."""
        headers = {"User-Agent": f"airflow-provider-finetune/{__version__}", "Accept": "application/json"}
        headers.update(self.extra_headers)
        return headers

    def default_params(self) -> dict[str, str]:
        """Return the query parameters every request carries."""
        return {"api-version": self.api_version} if self.api_version else {}

    def timeouts(self) -> httpx.Timeout:
        """Return the httpx timeouts for these settings."""
        return httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))

    def fingerprint(self) -> str:
        """Return a digest that identifies these settings without revealing the key."""
        blob = json.dumps(
            [
                self.base_url,
                self.api_key,
                self.organization,
                self.project,
                self.service,
                self.preset,
                self.api_version,
                self.auth,
                sorted(self.extra_headers.items()),
                self.timeout,
                self.aws_conn_id,
                self.region_name,
                sorted(self.service_fields.items()),
            ]
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def redact(self, text: str) -> str:
        """Replace every secret of these settings that occurs in ``text``."""
        for secret in (self.api_key, *self.extra_headers.values()):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def make_client(self, auth: httpx.Auth | None = None, headers: Mapping[str, str] | None = None) -> httpx.Client:
        """Create a sync client for these settings, authenticating each request with ``auth``.

        :param headers: the service's own headers for every request (its backend's), before ``extra_headers``.
        """
        return httpx.Client(**self._client_options(auth, headers))

    def make_async_client(
        self, auth: httpx.Auth | None = None, headers: Mapping[str, str] | None = None
    ) -> httpx.AsyncClient:
        """Create an async client for these settings, authenticating each request with ``auth``."""
        return httpx.AsyncClient(
            **self._client_options(auth, headers),
            # Idle connections outlive a poll interval, so that a triggerer's polls reuse them.
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=20, keepalive_expiry=120.0),
        )

    def _client_options(self, auth: httpx.Auth | None, headers: Mapping[str, str] | None) -> dict[str, Any]:
        return {
            "base_url": self.base_url + "/",
            "headers": {**(headers or {}), **self.headers()},
            "params": self.default_params(),
            "timeout": self.timeouts(),
            "follow_redirects": False,
            "auth": auth,
        }


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried: exponential backoff with jitter, bounded.

    :param max_retries: retries after the first attempt.
    :param initial_delay: seconds before the first retry.
    :param max_delay: longest backoff between two attempts.
    :param max_retry_after: the longest ``retry-after`` the service may ask for that is honoured as is;
        a longer one is cut to this.
    :param jitter: fraction of each backoff that is randomised, so that many clients do not retry in step.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    initial_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    jitter: float = 0.25

    def backoff(self, retry: int, headers: httpx.Headers | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based), honouring the service's wish."""
        asked = retry_after(headers) if headers is not None else None
        if asked is not None:
            return min(asked, self.max_retry_after)
        delay = min(self.initial_delay * 2.0**retry, self.max_delay)
        return delay * (1.0 - self.jitter * random.random())


def retry_after(headers: httpx.Headers) -> float | None:
    """Read how long the service asks us to wait: ``retry-after-ms``, then ``retry-after``.

    ``retry-after`` may be seconds or an HTTP date. Returns ``None`` when neither is present or usable.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(parsed.timestamp() - time.time(), 0.0)


class Send(NamedTuple):
    """Step of :func:`exchange`: send this request and report the response or the transport error."""

    request: httpx.Request


class Sleep(NamedTuple):
    """Step of :func:`exchange`: wait this many seconds, then report ``None``."""

    seconds: float


Outcome = httpx.Response | httpx.TransportError | None
Exchange = Generator[Send | Sleep, Outcome, httpx.Response]

# Transport errors that prove the request never reached the service: safe to send again even when the
# request creates something.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def exchange(
    build: Callable[[], httpx.Request],
    *,
    settings: ConnectionSettings,
    policy: RetryPolicy,
    idempotent: bool = True,
    read_error: ErrorReader | None = None,
) -> Exchange:
    """Drive one API call to a successful response, or raise the typed error that ends it.

    :param build: makes the request; called again for each attempt, so streamed bodies start afresh.
    :param settings: the connection, used to redact secrets from error messages.
    :param policy: the retry policy.
    :param idempotent: ``False`` for calls that create something (``POST /fine_tuning/jobs``): when such
        a call may have reached the service (timeout while waiting, dropped connection, 408 or 5xx) it
        is not sent again; :class:`UnsafeToRetryError` is raised so that the caller looks the object up.
    :param read_error: reads the service's error answer (its backend's dialect); the common shape by default.
    """
    retry = 0
    while True:
        error: FineTuningError
        request = build()
        outcome = yield Send(request)
        if isinstance(outcome, httpx.Response):
            if outcome.is_success:
                return outcome
            error = _api_error(outcome, settings, read_error or read_error_body)
            # A quota refusal is waited for by the caller, not here; a final refusal is not retried at all.
            should = _should_retry_status(outcome) and not isinstance(
                error, QuotaExceededError | FineTuningNotAllowedError
            )
            ambiguous = outcome.status_code == 408 or outcome.status_code >= 500
            cause: BaseException = error
        elif isinstance(outcome, httpx.TransportError):
            error = _transport_error(outcome, request, settings)
            should = True
            ambiguous = not isinstance(outcome, _NOT_SENT)
            cause = outcome
        else:  # pragma: no cover - a driver bug, not a service failure
            raise TypeError(f"exchange expected a response or a transport error, got {outcome!r}")

        refused = isinstance(error, QuotaExceededError | FineTuningNotAllowedError)  # said, not ambiguous
        if ambiguous and not idempotent and not refused:
            # Whatever the answer says of retrying, a create may have been made: the caller looks it up.
            raise UnsafeToRetryError(request.method, request.url.path, error) from cause
        if not should:
            raise error from (cause if cause is not error else None)
        if retry >= policy.max_retries:
            raise error from (cause if cause is not error else None)
        headers = outcome.headers if isinstance(outcome, httpx.Response) else None
        yield Sleep(policy.backoff(retry, headers))
        retry += 1


def _should_retry_status(response: httpx.Response) -> bool:
    verdict = response.headers.get("x-should-retry")
    if verdict == "true":
        return True
    if verdict == "false":
        return False
    return response.status_code in RETRYABLE_STATUSES or response.status_code >= 500


#: Kinds of refusal (see :class:`ErrorFields`).
Refusal = Literal["quota", "final"]


@dataclass(frozen=True)
class ErrorFields:
    """What an error answer says, read from a service's own error shape.

    :param message: the human-readable message.
    :param code: the service's error code.
    :param param: the request field at fault (Azure calls it ``target``).
    :param error_type: the error's type or category.
    :param request_id: the id the service gave the request, for its support.
    :param error_class: the error class the service's own error type calls for, where its HTTP status does not
        say (AWS answers a name in use with 400 ``ConflictException``); the status decides when ``None``.
    :param refusal: what kind of refusal the answer is, where it is more than an error: ``quota`` (a
        quota that frees up with time: the caller waits and tries again) or ``final`` (the service will not
        do it for this account until a person acts: never retried).
    :param quota: for a quota refusal, what the quota counts, in words.
    """

    message: str = ""
    code: str | None = None
    param: str | None = None
    error_type: str | None = None
    request_id: str | None = None
    error_class: type[FineTuningAPIError] | None = None
    refusal: Refusal | None = None
    quota: str | None = None


#: Reads an error answer (its JSON body, or ``None`` when it had none) into :class:`ErrorFields`.
ErrorReader = Callable[[httpx.Response, Any], ErrorFields]


def read_error_body(response: httpx.Response, body: Any) -> ErrorFields:
    """Read the common ``{"error": {"message", "type", "param", "code"}}`` (or a bare message)."""
    fields = ErrorFields(request_id=response.headers.get("x-request-id"))
    if isinstance(body, dict):
        detail = body.get("error", body)
        if isinstance(detail, dict):
            return replace(
                fields,
                message=str(detail.get("message") or ""),
                code=_opt_str(detail.get("code")),
                param=_opt_str(detail.get("param")),
                error_type=_opt_str(detail.get("type")),
            )
        if isinstance(detail, str):
            return replace(fields, message=detail)
    return fields


def _api_error(response: httpx.Response, settings: ConnectionSettings, read_error: ErrorReader) -> FineTuningAPIError:
    body: Any = None
    with contextlib.suppress(ValueError):
        body = response.json()
    fields = read_error(response, body)
    message = fields.message
    if not message and body is None:
        message = settings.redact(response.text)[:500]  # redacted whole: a cut could split a secret
    if not message:
        message = response.reason_phrase or "error"
    if isinstance(body, dict | list):
        body = json.loads(settings.redact(json.dumps(body)))
    cls = fields.error_class or api_error_for_status(response.status_code)
    # Every text that comes from the answer is shown to people, so none of it may carry a secret back.
    kwargs: dict[str, Any] = {
        "code": _redacted(fields.code, settings),
        "param": _redacted(fields.param, settings),
        "error_type": _redacted(fields.error_type, settings),
        "request_id": _redacted(fields.request_id, settings),
        "body": body,
    }
    text = settings.redact(message)
    if fields.refusal == "quota":
        return QuotaExceededError(
            response.status_code, text, quota=fields.quota, retry_after=retry_after(response.headers), **kwargs
        )
    if fields.refusal == "final":
        return FineTuningNotAllowedError(response.status_code, text, **kwargs)
    return cls(response.status_code, text, **kwargs)


def _redacted(text: str | None, settings: ConnectionSettings) -> str | None:
    return None if text is None else settings.redact(text)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _transport_error(
    exc: httpx.TransportError, request: httpx.Request, settings: ConnectionSettings
) -> FineTuningConnectionError:
    where = f"{request.method} {request.url.copy_with(query=None)}"
    reason = settings.redact(str(exc)) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return FineTuningTimeoutError(f"{where} timed out ({type(exc).__name__}: {reason})")
    return FineTuningConnectionError(f"{where} failed: {type(exc).__name__}: {reason}")


class Course(Generic[T]):
    """Steps under way: each is sent what the one before came to; ``value`` is what they return once ended.

    ``for step in course`` gives the steps in turn; each is carried out inside ``with course.answering()``,
    which sets :attr:`answer`.

    :param answers: the errors that are a step's answer (sent into the steps as its value).
    :param throws: the errors thrown into the steps at their ``yield``, so that they may clean up; any other
        error ends the course where it is raised.
    """

    def __init__(
        self,
        steps: Generator[Any, Any, T],
        *,
        answers: type[BaseException] | tuple[type[BaseException], ...],
        throws: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> None:
        self._steps = steps
        self._answers = answers
        self._throws = throws
        self._failure: BaseException | None = None
        self.answer: Any = None
        self.value: T

    def __iter__(self) -> Iterator[Any]:
        while True:
            answer, failure = self.answer, self._failure
            self.answer = self._failure = None
            try:
                step = self._steps.send(answer) if failure is None else self._steps.throw(failure)
            except StopIteration as done:
                self.value = done.value
                return
            yield step

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Carry out one step: an error of ``answers`` is its answer; one of ``throws`` goes into the steps."""
        try:
            yield
        except self._answers as error:
            self.answer = error
        except self._throws as error:
            self._failure = error


def run_sync(client: httpx.Client, steps: Exchange, *, sleep: Callable[[float], None] = time.sleep) -> httpx.Response:
    """Carry out the steps of :func:`exchange` with a sync client."""
    course = Course(steps, answers=httpx.TransportError)
    for step in course:
        with course.answering():
            if isinstance(step, Sleep):
                sleep(step.seconds)
            else:
                course.answer = client.send(step.request)
    return course.value


async def run_async(client: httpx.AsyncClient, steps: Exchange) -> httpx.Response:
    """Carry out the steps of :func:`exchange` with an async client."""
    course = Course(steps, answers=httpx.TransportError)
    for step in course:
        with course.answering():
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
            else:
                course.answer = await client.send(step.request)
    return course.value


def path_param(name: str, value: str) -> str:
    """Quote one path segment, refusing an empty id before anything is sent."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(f"{name} must be a non-empty string, got {value!r}", field=name)
    return quote(value.strip(), safe=":")


# One AsyncClient per connection per event loop, shared by every hook and trigger in the process, so that
# a triggerer watching many jobs keeps one connection pool per service instead of one per trigger.
_SHARED_ASYNC: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary()
)


def shared_async_client(
    settings: ConnectionSettings, make: Callable[[], httpx.AsyncClient] | None = None
) -> httpx.AsyncClient:
    """Return the process-wide async client for these settings on the running event loop.

    :param make: makes the client when there is none yet (the backend's, with its auth); a plain client
        of the settings by default.
    """
    loop = asyncio.get_running_loop()
    clients = _SHARED_ASYNC.setdefault(loop, {})
    key = settings.fingerprint()
    client = clients.get(key)
    if client is None or client.is_closed:
        client = clients[key] = make() if make is not None else settings.make_async_client()
    return client


async def close_shared_async_clients() -> None:
    """Close the shared async clients of the running event loop (tests, and a clean triggerer stop)."""
    clients = _SHARED_ASYNC.pop(asyncio.get_running_loop(), {})
    for client in clients.values():
        await client.aclose()
