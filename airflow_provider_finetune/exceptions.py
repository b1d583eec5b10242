"""Typed errors of the provider: one class per way a call can fail, never a string to match.

``FineTuningAPIError`` answers "the service said no" and carries what the service said (status, code,
param, message, request id); ``FineTuningConnectionError`` and ``FineTuningTimeoutError`` answer "we never
heard back". ``InvalidRequestError`` is raised before anything is sent.

Inside Airflow every error here is an ``AirflowException``, which Airflow handles as its own (a deferrable
sensor's ``soft_fail`` skips on it, for one). This module does not import Airflow to get it, though: the
emulator and the models use these errors and must start without Airflow's import (seconds). The base is
``AirflowException`` when Airflow is already loaded, as it is in every Airflow process (task, triggerer, DAG
processor, scheduler) before a provider module; a process that imports the models or the emulator with no
Airflow loaded gets plain ``Exception`` subclasses, with the same attributes and messages.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ChangedRequestError",
    "ConflictError",
    "FineTuningAPIError",
    "FineTuningConnectionError",
    "FineTuningError",
    "FineTuningFailure",
    "FineTuningJobEnded",
    "FineTuningJobFailed",
    "FineTuningNotAllowedError",
    "FineTuningTimeoutError",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "UnprocessableEntityError",
    "UnsafeToRetryError",
    "UnsupportedCapabilityError",
    "api_error_for_status",
]


def _airflow_or_plain_base() -> type[Exception]:
    """``AirflowException`` if Airflow is already loaded, else ``Exception`` (loading it costs seconds)."""
    if "airflow" not in sys.modules:
        return Exception
    try:
        from airflow.exceptions import AirflowException
    except ImportError:  # a module of that name that is not Airflow
        return Exception
    return AirflowException


def _fail_or_plain_base() -> type[Exception]:
    """``AirflowFailException`` (the task fails without its retries) if Airflow is loaded, else ``Exception``."""
    if "airflow" not in sys.modules:
        return Exception
    try:
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:
        try:
            from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]  # Airflow 3.1
        except ImportError:
            return Exception
    return AirflowFailException


if TYPE_CHECKING:
    from airflow.exceptions import AirflowException as _Base
    from airflow.exceptions import AirflowFailException as _FailBase
else:
    _Base = _airflow_or_plain_base()
    _FailBase = _fail_or_plain_base()


class FineTuningError(_Base):
    """Base class of every error this provider raises."""


class FineTuningFailure(FineTuningError, _FailBase):
    """An error no retry of the task can mend: Airflow fails the task at once, without its retries.

    An answer that will be the same on the next try is one: a refused key (401, 403), a request the service
    refuses as invalid (400, 404, 422), a request refused before it was sent (:class:`InvalidRequestError`, bad
    training data among them), an account that may not fine-tune, a cost cap reached (a retry would create the
    same job again and spend as much again). Trouble that passes (429, 5xx, timeouts, dropped connections, a
    quota that frees up, a 409 about a job's state of the moment) is not one: the task keeps its retries.

    Each carries a note (PEP 678, shown under the error's line in the task's log) that says it is not retried.
    """

    #: Why the task is not retried, as the note under the error's own line says it.
    not_retried = "Not retried: the next try would get the same answer."

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.add_note(self.not_retried)


class InvalidRequestError(FineTuningFailure, ValueError):
    """A request was refused on the client side, before anything was sent: the task fails without its retries.

    :param message: what is wrong, naming the field.
    :param field: dotted path of the offending field, when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class FineTuningConnectionError(FineTuningError):
    """The service could not be reached, or the connection dropped before an answer came."""


class FineTuningTimeoutError(FineTuningConnectionError):
    """The service did not answer in time."""


class UnsafeToRetryError(FineTuningError):
    """A request that creates something may or may not have reached the service.

    Raised instead of re-sending it blindly; the caller looks the object up (for jobs, by their metadata
    tag) before deciding to send again.

    :param method: HTTP method of the request.
    :param path: path of the request, relative to the base URL.
    :param cause: the error that left the outcome unknown.
    """

    def __init__(self, method: str, path: str, cause: BaseException) -> None:
        super().__init__(
            f"{method} {path} may have reached the service before it failed ({cause}); "
            "it was not sent again, to avoid creating a second object"
        )
        self.method = method
        self.path = path
        self.cause = cause


class FineTuningAPIError(FineTuningError):
    """The service answered with an error.

    :param status_code: HTTP status of the answer.
    :param message: the service's message.
    :param code: the service's machine-readable code, if any.
    :param param: the request parameter the error is about, if any.
    :param error_type: the service's error type, if any.
    :param request_id: the ``x-request-id`` of the answer, for support tickets.
    :param body: the decoded error body.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        # AirflowException declares ``status_code`` as an HTTPStatus for its own API; ours is the
        # service's status, which may be any integer.
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type
        self.request_id = request_id
        self.body = body
        super().__init__(str(self))

    status_code: int  # type: ignore[assignment]

    def __str__(self) -> str:
        parts = [f"{self.status_code}"]
        if self.code:
            parts.append(f"[{self.code}]")
        text = " ".join(parts) + f" {self.message}"
        if self.param:
            text += f" (param: {self.param})"
        if self.request_id:
            text += f" (request id: {self.request_id})"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the keyword-only attributes when the error crosses a process boundary.
        return (_rebuild_api_error, (type(self), self.status_code, self.message, self._kwargs()))

    def _kwargs(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "param": self.param,
            "error_type": self.error_type,
            "request_id": self.request_id,
            "body": self.body,
        }


def _rebuild_api_error(
    cls: type[FineTuningAPIError], status_code: int, message: str, kwargs: dict[str, Any]
) -> FineTuningAPIError:
    return cls(status_code, message, **kwargs)


class BadRequestError(FineTuningAPIError, FineTuningFailure):
    """400: the service refused the request as malformed or invalid (an unknown model, a refused option)."""


class AuthenticationError(FineTuningAPIError, FineTuningFailure):
    """401: the API key is missing, wrong or revoked."""


class PermissionDeniedError(FineTuningAPIError, FineTuningFailure):
    """403: the key may not do this (checkpoint permissions need an admin key)."""


class NotFoundError(FineTuningAPIError, FineTuningFailure):
    """404: no such job, file, checkpoint or path (a wrong base URL answers this too)."""


class ConflictError(FineTuningAPIError):
    """409: the object is in a state that does not allow this (e.g. resuming a running job)."""


class UnprocessableEntityError(FineTuningAPIError, FineTuningFailure):
    """422: the request was understood but cannot be processed."""


class RateLimitError(FineTuningAPIError):
    """429: too many requests, or the quota is used up."""


class QuotaExceededError(RateLimitError):
    """The service refused a create for a quota that frees up with time: active jobs, creates per day.

    Not retried by the request core: the create operator waits for the quota (deferred, or on the worker)
    and tries again, up to its deadline. Its backend's error reader says which answers are one.

    :param quota: what the quota counts, in words (``active fine-tuning jobs``...), when the reader knows.
    :param retry_after: the seconds the service asked to wait (``retry-after``), if it said.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        quota: str | None = None,
        retry_after: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.quota = quota
        self.retry_after = retry_after
        super().__init__(status_code, message, **kwargs)

    def _kwargs(self) -> dict[str, Any]:
        return {**super()._kwargs(), "quota": self.quota, "retry_after": self.retry_after}


class FineTuningNotAllowedError(RateLimitError, FineTuningFailure):
    """A 429 that no wait clears: the service will not fine-tune for this account until a person acts.

    OpenAI's ``insufficient_quota`` (the billing quota is used up) is one. Never retried, by the request core
    nor by Airflow: the create operator fails its task at once, in one line.
    """


class InternalServerError(FineTuningAPIError):
    """5xx: the service failed."""


class FineTuningJobFailed(FineTuningError):
    """A fine-tuning job ended failed, cancelled, or did not end in time.

    :param job_id: the job.
    :param status: the job's last known status.
    :param message: what happened, with the service's error code, message and param.
    :param code: the job's error code, if any.
    :param param: the job's error param, if any.
    """

    def __init__(
        self,
        job_id: str,
        status: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.status = status
        self.code = code
        self.param = param

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_job_failed, (type(self), self.job_id, self.status, str(self), self.code, self.param))


class FineTuningJobEnded(FineTuningJobFailed, FineTuningFailure):
    """A job a sensor waits on ended where it can never reach the status waited for: no retry can change that.

    Unlike :class:`FineTuningJobFailed` raised by the create operator (whose retry makes a new job), the task fails
    at once, without its retries (and with ``soft_fail``, is skipped).
    """

    not_retried = "Not retried: the job has ended and can no longer reach the status waited for."


def _rebuild_job_failed(
    cls: type[FineTuningJobFailed], job_id: str, status: str, message: str, code: str | None, param: str | None
) -> FineTuningJobFailed:
    return cls(job_id, status, message, code=code, param=param)


_BY_STATUS: dict[int, type[FineTuningAPIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def api_error_for_status(status_code: int) -> type[FineTuningAPIError]:
    """Return the error class for an HTTP status."""
    if status_code >= 500:
        return InternalServerError
    return _BY_STATUS.get(status_code, FineTuningAPIError)


class UnsupportedCapabilityError(InvalidRequestError):
    """The service cannot do what was asked (pause, checkpoints, graders...): refused before any request.

    :param message: one line naming the service and what it lacks.
    :param service: the service (``azure``, ``bedrock``...).
    :param capability: the capability it lacks (a field of the backend's capabilities).
    """

    def __init__(self, message: str, *, service: str, capability: str) -> None:
        super().__init__(message, field=capability)
        self.service = service
        self.capability = capability


class ChangedRequestError(FineTuningFailure):
    """The job this task instance made before was made from another request (the DAG or its data changed).

    Raised when ``on_changed_request="fail"``; with ``"cancel_and_create"`` the old job is cancelled and a
    new one is made instead.
    """
