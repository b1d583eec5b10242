"""AWS the AWS way: credentials from an Airflow AWS connection, each request signed by botocore's SigV4 signer.

The credentials come from apache-airflow-providers-amazon (``AwsBaseHook``: keys, profiles, assumed roles, web
identity), never from this provider's own settings; :class:`SigV4Auth` signs each request with
:class:`botocore.auth.SigV4Auth` inside an ``httpx.Auth``, so that a signed request still goes through the one
request core (:mod:`airflow_provider_finetune.core.client`: retries, typed errors, redaction). In the triggerer the
connection is read and expiring credentials are refreshed in a thread: the event loop never waits on them.

:func:`read_aws_error` reads the restJson1 error answer of an AWS service (``x-amzn-ErrorType``, ``message``)
into the provider's typed errors. The amazon provider is an optional extra: without it, a connection that needs
it fails with one line naming the extra to install.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncGenerator, Generator
from typing import Any

import httpx

from airflow_provider_finetune.core.client import ErrorFields
from airflow_provider_finetune.exceptions import (
    BadRequestError,
    ConflictError,
    FineTuningAPIError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)

__all__ = [
    "AWS_ERRORS",
    "MISSING_EXTRA",
    "AwsCredentials",
    "SigV4Auth",
    "read_aws_error",
    "region_of_host",
]

#: The line that says what to install when the amazon provider is missing.
MISSING_EXTRA = "AWS credentials need apache-airflow-providers-amazon: pip install 'airflow-provider-finetune[amazon]'"

#: AWS error types onto the provider's error classes, whatever HTTP status carried them (Bedrock answers a
#: name in use, ``ConflictException``, with 400).
AWS_ERRORS: dict[str, type[FineTuningAPIError]] = {
    "ThrottlingException": RateLimitError,
    "TooManyRequestsException": RateLimitError,
    "ValidationException": BadRequestError,
    "TooManyTagsException": BadRequestError,
    "ConflictException": ConflictError,
    "ResourceInUseException": ConflictError,
    "ResourceNotFoundException": NotFoundError,
    "AccessDeniedException": PermissionDeniedError,
    "InternalServerException": InternalServerError,
    "ServiceUnavailableException": InternalServerError,
}

# "Value at 'roleArn' failed to satisfy constraint", "1 validation error detected: Value null at 'jobName'".
_FIELD_IN_MESSAGE = re.compile(r"[Vv]alue (?:.*? )?at '([A-Za-z0-9_.\[\]]+)'")
# "The provided job name is currently in use.", as Bedrock words a name taken by another job.
_NAME_IN_USE = re.compile(r"\bname is (?:currently|already) in use\b", re.IGNORECASE)
_HOST_REGION = re.compile(r"^[a-z0-9-]+\.([a-z]{2}(?:-gov)?-[a-z]+-\d)\.(?:amazonaws\.com(?:\.cn)?|api\.aws)$")


def region_of_host(host: str) -> str | None:
    """The region an AWS endpoint's host names (``bedrock.us-east-1.amazonaws.com`` -> ``us-east-1``)."""
    found = _HOST_REGION.match(host)
    return found.group(1) if found else None


def read_aws_error(response: httpx.Response, body: Any) -> ErrorFields:
    """Read a restJson1 error: the type from ``x-amzn-ErrorType`` (or ``__type``/``code``), then ``message``.

    The type picks the error's class (:data:`AWS_ERRORS`); a ``ValidationException`` names the field at fault
    where its message does, and one that says a name is in use is a conflict (:class:`ConflictError`), which
    once-only creation resolves by reading the job of that name.
    """
    raw = response.headers.get("x-amzn-ErrorType") or ""
    message = ""
    if isinstance(body, dict):
        raw = raw or str(body.get("__type") or body.get("code") or "")
        message = str(body.get("message") or body.get("Message") or "")
    # "ValidationException:http://internal.amazon.com/coral/..." and "com.amazon.coral#ValidationException".
    error_type = raw.split(":", 1)[0].rsplit("#", 1)[-1] or None
    param = None
    error_class = AWS_ERRORS.get(error_type or "")
    if error_type == "ValidationException":
        named = _FIELD_IN_MESSAGE.search(message)
        param = named.group(1) if named else None
        if _NAME_IN_USE.search(message):
            # Bedrock answers a job (or model, deployment) name in use with a ValidationException: a conflict.
            error_class = ConflictError
    return ErrorFields(
        message=message,
        code=error_type,
        param=param,
        error_type=error_type,
        request_id=response.headers.get("x-amzn-RequestId") or response.headers.get("x-amz-request-id"),
        error_class=error_class,
        # A service quota (concurrent customization jobs...) frees up as jobs end: waited for, then tried again.
        refusal="quota" if error_type == "ServiceQuotaExceededException" else None,
        quota="Bedrock service quota" if error_type == "ServiceQuotaExceededException" else None,
    )


class AwsCredentials:
    """The credentials of an Airflow AWS connection, read on first use; expiring ones refreshed by botocore.

    :param aws_conn_id: the Airflow AWS connection (``None``: boto3's default chain, as the amazon provider does).
    :param region_name: the region to sign for; the AWS connection's region when ``None``.
    """

    def __init__(self, aws_conn_id: str | None, region_name: str | None = None) -> None:
        self.aws_conn_id = aws_conn_id
        self._region = region_name
        self._credentials: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.aws_conn_id!r}, {self._region!r})"

    def _load(self) -> Any:
        with self._lock:
            if self._credentials is None:
                try:
                    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
                except ImportError as err:
                    raise InvalidRequestError(MISSING_EXTRA, field="aws_conn_id") from err
                hook = AwsBaseHook(aws_conn_id=self.aws_conn_id, client_type="bedrock", region_name=self._region)
                session = hook.get_session(region_name=self._region)
                credentials = session.get_credentials()
                if credentials is None:
                    raise InvalidRequestError(
                        f"aws_conn_id: the AWS connection {self.aws_conn_id!r} gave no credentials", field="aws_conn_id"
                    )
                self._region = self._region or hook.conn_region_name or session.region_name
                self._credentials = credentials
            return self._credentials

    @property
    def region(self) -> str:
        """The region requests are signed for (reads the AWS connection if none was given)."""
        if self._region is None:
            self._load()
        if not self._region:
            raise InvalidRequestError(
                "region_name: neither the connection nor its AWS connection names a region", field="region_name"
            )
        return self._region

    def frozen(self) -> Any:
        """A consistent snapshot of the credentials (refreshed first when they are about to expire)."""
        return self._load().get_frozen_credentials()

    def _fresh(self) -> Any:
        """The snapshot when it needs no I/O; ``None`` when the connection is unread or a refresh is due."""
        credentials = self._credentials
        if credentials is None or not self._region:
            return None
        refresh_needed = getattr(credentials, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():
            return None
        return credentials.get_frozen_credentials()

    async def afrozen(self) -> Any:
        """:meth:`frozen` without blocking the event loop: reading the connection and refreshing run in a thread."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        return await asyncio.to_thread(lambda: (self.region, self.frozen())[1])


#: Headers that are signed: what AWS requires and what no proxy or client changes on the way.
_SIGNED = ("host", "content-type")


class SigV4Auth(httpx.Auth):
    """Sign each request with botocore's SigV4 signer.

    :param credentials: where the credentials come from.
    :param service: the signing name (``bedrock``).
    """

    requires_request_body = True

    def __init__(self, credentials: AwsCredentials, service: str = "bedrock") -> None:
        self.credentials = credentials
        self.service = service

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.credentials!r}, {self.service!r})"

    def sign(self, request: httpx.Request, frozen: Any, region: str) -> None:
        """Add ``Authorization``, ``X-Amz-Date`` (and ``X-Amz-Security-Token``) to ``request``."""
        from botocore.auth import SigV4Auth as BotocoreSigV4
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        for name in ("authorization", "x-amz-date", "x-amz-security-token"):
            request.headers.pop(name, None)  # a retried request is signed afresh
        headers = {k: v for k, v in request.headers.items() if k.lower() in _SIGNED or k.lower().startswith("x-amz-")}
        aws = AWSRequest(method=request.method, url=str(request.url), data=request.content, headers=headers)
        credentials = Credentials(frozen.access_key, frozen.secret_key, frozen.token)
        BotocoreSigV4(credentials, self.service, region).add_auth(aws)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in aws.headers:
                request.headers[name] = aws.headers[name]

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Sign a sync request."""
        self.sign(request, self.credentials.frozen(), self.credentials.region)
        yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Sign an async request; credentials that need I/O are fetched in a thread."""
        frozen = await self.credentials.afrozen()
        self.sign(request, frozen, self.credentials.region)
        yield request
