"""Errors of the AWS Bedrock dialect, as AWS's ``restJson1`` protocol answers them.

An error is its HTTP status, the ``x-amzn-ErrorType`` header naming the exception (the shape name that
botocore's service model knows, so that boto3 raises a ``ClientError`` with that code) and a JSON body
``{"message": ...}``. Nothing here needs botocore: the fault injector renders its answers with it too.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BEDROCK_PREFIX",
    "RUNTIME_PREFIX",
    "AWSError",
    "access_denied",
    "aws_fault",
    "conflict",
    "is_bedrock_path",
    "not_found",
    "quota_exceeded",
    "validation",
]

#: Path prefix of the control plane (``bedrock``): give boto3 ``endpoint_url=<root>/bedrock``.
BEDROCK_PREFIX = "/bedrock"
#: Path prefix of the runtime (``bedrock-runtime``): ``endpoint_url=<root>/bedrock-runtime``.
RUNTIME_PREFIX = "/bedrock-runtime"

# The statuses the fault injector answers, with the exception each stands for.
_FAULT_TYPES = {
    429: "ThrottlingException",
    500: "InternalServerException",
    502: "InternalServerException",
    503: "ServiceUnavailableException",
}


class AWSError(Exception):
    """An AWS error answer: raised anywhere in the Bedrock dialect and rendered by its routes.

    :param status: the HTTP status.
    :param error_type: the exception's name (``ValidationException``...), sent as ``x-amzn-ErrorType``.
    :param message: the message, for a person; never holds a secret.
    """

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def headers(self) -> dict[str, str]:
        """The answer's headers."""
        return {"x-amzn-ErrorType": self.error_type}

    def body(self) -> dict[str, Any]:
        """The answer's JSON body."""
        return {"message": self.message}


def is_bedrock_path(path: str) -> bool:
    """Whether a request path belongs to the Bedrock dialect (control plane or runtime)."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in (BEDROCK_PREFIX, RUNTIME_PREFIX))


def validation(message: str) -> AWSError:
    """A 400 ``ValidationException``."""
    return AWSError(400, "ValidationException", message)


def not_found(message: str) -> AWSError:
    """A 404 ``ResourceNotFoundException``."""
    return AWSError(404, "ResourceNotFoundException", message)


def conflict(message: str) -> AWSError:
    """A 400 ``ConflictException`` (the service model gives it status 400)."""
    return AWSError(400, "ConflictException", message)


def quota_exceeded(message: str) -> AWSError:
    """A 400 ``ServiceQuotaExceededException``."""
    return AWSError(400, "ServiceQuotaExceededException", message)


def access_denied(message: str) -> AWSError:
    """A 403 ``AccessDeniedException``."""
    return AWSError(403, "AccessDeniedException", message)


def aws_fault(status: int, message: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of an injected fault (429, 500, 502, 503) on a Bedrock path."""
    return {"message": message}, {"x-amzn-ErrorType": _FAULT_TYPES.get(status, "InternalServerException")}
