"""Errors the emulator answers, in the API's shape: ``{"error": {"message", "type", "param", "code"}}``.

On the Azure paths (``/openai/...``) the same errors are rendered in Azure's shapes by
:func:`azure_error_body`: the authoring surface's ``{"error": {"code", "message", "target", "details",
"innererror"}}`` with a camelCase code, and v1's ``{"error": {"code", "message", "param", "type": "error",
"inner_error"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "APIError",
    "azure_error_body",
    "check_accept",
    "conflict",
    "error_body",
    "error_body_for_path",
    "invalid_request",
    "not_found",
]


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
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        """Return the JSON body of the answer (with ``extra`` fields beside the error, where a service adds some)."""
        return {**error_body(self.message, self.error_type, self.param, self.code), **self.extra}


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """Return the API's error envelope."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 ``invalid_request_error``."""
    return APIError(400, message, param=param, code=code)


def not_found(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    """A 404 ``invalid_request_error``."""
    return APIError(404, message, param=param, code=code)


def check_accept(accept: str | None, *produced: str) -> None:
    """Refuse with 406, as a strict server does, an ``Accept`` that none of the answer's declared types meets.

    :param accept: the request's ``Accept`` header (none accepts anything).
    :param produced: the media types the API description declares for the answer.
    """
    if accept is None:
        return
    for item in accept.split(","):
        wanted, *params = (part.strip() for part in item.split(";"))
        if any(param.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for param in params):
            continue  # "not acceptable", said explicitly
        kind, _, subtype = wanted.lower().partition("/")
        for media_type in produced:
            have_kind, _, have_subtype = media_type.partition("/")
            if kind in ("*", have_kind) and subtype in ("*", have_subtype):
                return
    raise APIError(
        406,
        f"The answer is {' or '.join(produced)}, which the request's Accept ({accept}) does not take.",
        code="not_acceptable",
    )


def conflict(message: str, *, code: str = "invalid_job_state") -> APIError:
    """A 409: the object's state does not allow the request (resuming a running job...).

    It carries ``x-should-retry: false``: clients that retry 409 as a lock timeout (openai-python, this
    provider's hook) must not retry a request that can never succeed.
    """
    return APIError(409, message, code=code, headers={"x-should-retry": "false"})


# Azure authoring's ErrorCode enum has no code per OpenAI code: the HTTP status picks it.
_AUTHORING_CODES = {
    400: "invalidPayload",
    401: "unauthorized",
    403: "forbidden",
    404: "notFound",
    405: "notFound",
    409: "conflict",
    413: "invalidPayload",
    429: "tooManyRequests",
    500: "internalFailure",
    502: "serviceUnavailable",
    503: "serviceUnavailable",
}


def azure_error_body(
    surface: str,
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    error_type: str = "invalid_request_error",
) -> dict[str, Any]:
    """Return an error envelope in the shape of an Azure surface.

    :param surface: ``"authoring"`` (``{"code" (camelCase enum), "message", "target", "details",
        "innererror"}``) or ``"v1"`` (``{"code", "message", "param", "type": "error", "inner_error"}``).
    :param status: the HTTP status; on the authoring surface it picks the code.
    :param message: the message.
    :param code: the OpenAI-style code, if any (v1 keeps it; a state conflict is ``unexpectedEntityState``
        on the authoring surface).
    :param param: the request parameter at fault (``target`` on the authoring surface).
    :param error_type: the OpenAI-style error type; v1's code when there is no code.
    """
    if surface == "v1":
        v1: dict[str, Any] = {"code": code or error_type, "message": message, "type": "error", "inner_error": None}
        if param is not None:
            v1["param"] = param
        return {"error": v1}
    azure_code = _AUTHORING_CODES.get(status, "internalFailure" if status >= 500 else "invalidPayload")
    if status == 409 and code == "invalid_job_state":
        azure_code = "unexpectedEntityState"
    if code == "quotaExceeded":
        azure_code = code
    error: dict[str, Any] = {"code": azure_code, "message": message or azure_code, "details": []}
    if param is not None:
        error["target"] = param
    # InnerErrorCode's only value is invalidPayload: an inner error says more only for a bad request.
    error["innererror"] = {"code": "invalidPayload"} if azure_code == "invalidPayload" else {}
    return {"error": error}


def error_body_for_path(
    path: str, status: int, message: str, error_type: str, code: str | None = None
) -> dict[str, Any]:
    """The error envelope an answer on ``path`` has: Azure's shapes under ``/openai``, the API's elsewhere."""
    if path == "/openai/v1" or path.startswith("/openai/v1/"):
        return azure_error_body("v1", status, message, code=code, error_type=error_type)
    if path == "/openai" or path.startswith("/openai/"):
        return azure_error_body("authoring", status, message, code=code, error_type=error_type)
    return error_body(message, error_type, code=code)
