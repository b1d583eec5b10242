"""Request checks of the Bedrock dialect, driven by botocore's own service models.

The shapes of ``bedrock`` and ``bedrock-runtime`` say it all: required members, types, lengths, ranges,
enums and patterns, checked as the service checks them, with AWS's message (``1 validation error detected:
Value 'x' at 'jobName' failed to satisfy constraint: Member must satisfy regular expression pattern: ...``).

Query strings are read the same way: each member of the operation's input bound to the query is taken
from its ``locationName`` and converted to the member's type.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime, timezone
from typing import Any

from airflow_provider_finetune.emulator.dialects.bedrock.errors import AWSError, validation

__all__ = ["botocore_session", "check_input", "check_output", "check_uri", "read_query"]


_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@functools.cache
def botocore_session() -> Any:
    """One botocore session for the emulator: its loader reads each service model once."""
    import botocore.session

    return botocore.session.Session()


@functools.cache
def _service(service: str) -> Any:
    return botocore_session().get_service_model(service)


@functools.cache
def _operation(service: str, name: str) -> Any:
    return _service(service).operation_model(name)


@functools.cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _violation(value: Any, where: str, constraint: str) -> AWSError:
    shown = "null" if value is None else f"'{value}'" if isinstance(value, str) else str(value)
    if len(shown) > 200:
        shown = shown[:200] + "...'"
    return validation(
        f"1 validation error detected: Value {shown} at '{where}' failed to satisfy constraint: {constraint}"
    )


def check_input(service: str, operation: str, body: dict[str, Any]) -> None:
    """Check a request body against the operation's input shape; raise ``ValidationException`` naming the field.

    :param service: ``bedrock`` or ``bedrock-runtime``.
    :param operation: the operation's name (``CreateModelCustomizationJob``...).
    :param body: the JSON body (members bound to the URI or the query are not checked here).
    """
    shape = _operation(service, operation).input_shape
    _check_structure(shape, body, "", body_only=True)


def check_output(service: str, operation: str, body: dict[str, Any]) -> None:
    """Check an answer's body against the operation's output shape (the conformance tests' check).

    :raises AWSError: naming the member that is missing or of the wrong shape.
    """
    shape = _operation(service, operation).output_shape
    if shape is not None:
        _check_structure(shape, body, "", body_only=True)


def check_uri(service: str, operation: str, params: dict[str, str]) -> None:
    """Check the members an operation takes from its URI (``jobIdentifier``...): pattern and length.

    :param params: the URI's labels, percent-decoded, by name.
    """
    shape = _operation(service, operation).input_shape
    for name, member in shape.members.items():
        if member.serialization.get("location") == "uri":
            label = member.serialization.get("name", name)
            if label in params:
                _check(member, params[label], name)


def _check(shape: Any, value: Any, where: str) -> None:
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            raise _violation(value, where, "Member must be an object")
        _check_structure(shape, value, where + ".")
    elif kind == "list":
        if not isinstance(value, list):
            raise _violation(value, where, "Member must be a list")
        _check_length(shape, value, where)
        for index, item in enumerate(value):
            _check(shape.member, item, f"{where}.{index + 1}.member")
    elif kind == "map":
        if not isinstance(value, dict):
            raise _violation(value, where, "Member must be a map")
        _check_length(shape, value, where)
        for key, item in value.items():
            _check(shape.key, key, f"{where}.key")
            _check(shape.value, item, f"{where}.{key}")
    elif kind == "string":
        if not isinstance(value, str):
            raise _violation(value, where, "Member must be a string")
        _check_length(shape, value, where)
        if shape.enum and value not in shape.enum:
            raise _violation(value, where, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        pattern = shape.metadata.get("pattern")
        if pattern and _pattern(pattern).fullmatch(value) is None:
            raise _violation(value, where, f"Member must satisfy regular expression pattern: {pattern}")
    elif kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _violation(value, where, "Member must be an integer")
        _check_range(shape, value, where)
    elif kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _violation(value, where, "Member must be a number")
        _check_range(shape, value, where)
    elif kind == "boolean" and not isinstance(value, bool):
        raise _violation(value, where, "Member must be a boolean")
    elif kind == "timestamp" and not (isinstance(value, str) and _ISO.fullmatch(value)):
        raise _violation(value, where, "Member must be an ISO 8601 timestamp")


def _check_structure(shape: Any, value: dict[str, Any], prefix: str, *, body_only: bool = False) -> None:
    for name in shape.required_members:
        member = shape.members[name]
        if body_only and member.serialization.get("location"):
            continue
        if value.get(name) is None:
            raise _violation(None, prefix + name, "Member must not be null")
    for name, member in shape.members.items():
        if body_only and member.serialization.get("location"):
            continue
        if value.get(name) is not None:
            _check(member, value[name], prefix + name)


def _check_length(shape: Any, value: Any, where: str) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and len(value) < low:
        raise _violation(value, where, f"Member must have length greater than or equal to {low}")
    if high is not None and len(value) > high:
        raise _violation(value, where, f"Member must have length less than or equal to {high}")


def _check_range(shape: Any, value: float, where: str) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and value < low:
        raise _violation(value, where, f"Member must have value greater than or equal to {low}")
    if high is not None and value > high:
        raise _violation(value, where, f"Member must have value less than or equal to {high}")


def read_query(service: str, operation: str, query: Any) -> dict[str, Any]:
    """The operation's query-bound members, converted to their types and checked.

    :param query: the request's query parameters (a mapping with ``get``).
    :returns: member name -> value (a ``datetime`` for a timestamp), for the members present.
    """
    shape = _operation(service, operation).input_shape
    found: dict[str, Any] = {}
    for name, member in shape.members.items():
        if member.serialization.get("location") != "querystring":
            continue
        raw = query.get(member.serialization.get("name", name))
        if raw is None:
            continue
        kind = member.type_name
        if kind == "timestamp":
            found[name] = _timestamp(raw, name)
            continue
        if kind == "integer":
            try:
                value: Any = int(raw)
            except ValueError:
                raise _violation(raw, name, "Member must be an integer") from None
        elif kind == "boolean":
            if raw not in ("true", "false"):
                raise _violation(raw, name, "Member must be a boolean")
            value = raw == "true"
        else:
            value = raw
        _check(member, value, name)
        found[name] = value
    return found


def _timestamp(raw: str, name: str) -> datetime:
    try:
        if re.fullmatch(r"\d+(\.\d+)?", raw):
            return datetime.fromtimestamp(float(raw), tz=timezone.utc)
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _violation(raw, name, "Member must be a timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
