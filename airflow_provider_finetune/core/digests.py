"""Digests that identify content and requests: the same bytes or the same request give the same digest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import IO, Any

__all__ = ["content_digest", "request_fingerprint"]


def content_digest(stream: IO[bytes], start: int) -> tuple[int, str]:
    """Size and SHA-256 of a stream's content from ``start`` to its end, read a block at a time; left at ``start``."""
    digest = hashlib.sha256()
    stream.seek(start)
    size = 0
    while chunk := stream.read(1024 * 1024):
        digest.update(chunk)
        size += len(chunk)
    stream.seek(start)
    return size, digest.hexdigest()


def request_fingerprint(
    body: Mapping[str, Any], *, ignore_metadata: frozenset[str] = frozenset(), metadata_field: str = "metadata"
) -> str:
    """A digest of a create request: the same request gives the same digest, whatever the key order.

    :param body: the request body, as sent.
    :param ignore_metadata: metadata keys left out (the provider's own tags).
    :param metadata_field: the body's field that holds the job's metadata (the service's word for it).
    """
    kept = dict(body)
    metadata = {k: v for k, v in (kept.pop(metadata_field, None) or {}).items() if k not in ignore_metadata}
    if metadata:
        kept[metadata_field] = metadata
    blob = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return "rq-" + hashlib.sha256(blob.encode()).hexdigest()[:32]
