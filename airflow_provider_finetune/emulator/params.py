"""Reading request parameters the way the service does: limits, request bodies, cursor pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from airflow_provider_finetune.emulator.errors import invalid_request
from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.models import build_request

__all__ = ["cursor_page", "newest_first_page", "parse_body", "parse_limit"]

_M = TypeVar("_M", bound=BaseModel)
_T = TypeVar("_T")


def parse_limit(value: str | None, *, default: int, maximum: int) -> int:
    """Read a ``limit`` query parameter: a positive integer, at most ``maximum`` (larger ones are cut)."""
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise invalid_request(f"limit must be an integer, got {value!r}", param="limit") from None
    if limit < 1:
        raise invalid_request(f"limit must be at least 1, got {limit}", param="limit")
    return min(limit, maximum)


def parse_body(model_cls: type[_M], body: Any) -> _M:
    """Validate a JSON body with the provider's request model; a bad one is a 400 naming the field."""
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object")
    try:
        return build_request(model_cls, body)
    except InvalidRequestError as exc:
        raise invalid_request(exc.message, param=exc.field) from None


def newest_first_page(
    items: Sequence[_T],
    *,
    key: Callable[[_T], str],
    after: str | None,
    limit: int,
    what: str,
) -> tuple[list[_T], bool]:
    """Return one page of ``items`` (oldest first) listed newest first, and whether more follow.

    :param items: every item, oldest first.
    :param key: an item's id.
    :param after: the id of the last item of the previous page; the page holds the items older than it.
    :param limit: page size.
    :param what: what the items are, for the error when ``after`` is unknown.
    """
    end = len(items)
    if after:
        for index in range(len(items) - 1, -1, -1):
            if key(items[index]) == after:
                end = index
                break
        else:
            raise invalid_request(f"No such {what}: {after}", param="after")
    start = max(0, end - limit)
    return list(reversed(items[start:end])), start > 0


def cursor_page(data: list[dict[str, Any]], *, has_more: bool, no_id: str | None = None) -> dict[str, Any]:
    """A cursor page as the API lists it: the items, the ids of its first and last, and whether more follow.

    :param data: the page's items, as rendered.
    :param has_more: whether items follow the page.
    :param no_id: ``first_id`` and ``last_id`` of an empty page.
    """
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else no_id,
        "last_id": data[-1]["id"] if data else no_id,
        "has_more": has_more,
    }
