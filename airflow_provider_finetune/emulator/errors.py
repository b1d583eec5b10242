"""Errors the emulator answers, in the API's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["APIError", "conflict", "error_body", "invalid_request", "not_found"]


class APIError(Exception):
    """An answer other than 2xx, raised anywhere in the emulator and rendered by the app.

    :param status: HTTP status.
    :param message: the error's message, for a person.
    :param error_type: the API's error type (``invalid_request_error``, ``server_error``, ``requests``...).
    :param param: the request parameter at fault, if any.
    :param code: the machine-readable code, if any.
    :param headers: extra response headers (``retry-after``, ``x-should-retry``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """Return the JSON body of the answer."""
        return error_body(self.message, self.error_type, self.param, self.code)


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """Return the API's error envelope."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 ``invalid_request_error``."""
    return APIError(400, message, param=param, code=code)


def not_found(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    """A 404 ``invalid_request_error``."""
    return APIError(404, message, param=param, code=code)


def conflict(message: str, *, code: str = "invalid_job_state") -> APIError:
    """A 409: the object's state does not allow the request (resuming a running job...).

    It carries ``x-should-retry: false``: clients that retry 409 as a lock timeout (openai-python, this
    provider's hook) must not retry a request that can never succeed.
    """
    return APIError(409, message, code=code, headers={"x-should-retry": "false"})
