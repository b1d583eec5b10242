"""Together's multipart upload, for files larger than its single upload takes (5 GiB), as its SDK makes it.

``POST /files/multipart/initiate`` (``file_name``, ``file_size``, ``num_parts``, ``purpose``, ``file_type``,
``checksum``) answers the upload's ``upload_id``, the ``file_id`` it will make and, for each part, a presigned
``URL`` (with ``Headers``) to ``PUT`` it to; each ``PUT`` answers the part's ``ETag``; ``POST
/files/multipart/complete`` (``upload_id``, ``file_id`` and ``parts``: ``part_number`` and ``etag`` each) makes the
file. After a failure, ``POST /files/multipart/abort`` lets the service discard the parts. A ``409`` to the
initiate names (``file_id``) a file of the same content that exists already: it is used once its own size says
it is that file.

Parts are about 250 MiB, at most 250 of them, none smaller than 5 MiB but the last (the SDK's rule: S3's
limits); one part is in memory at a time, read again from the file for each attempt. The API key never goes
with a part: its URL is presigned. The steps are a generator that does no I/O (:func:`multipart_steps`); as a
flow (:func:`multipart_flow`) they are carried out by the hook's flow drivers.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from airflow_provider_finetune.backends.base import Call
from airflow_provider_finetune.core.digests import content_digest
from airflow_provider_finetune.core.flows import Flow, Transfer, translated
from airflow_provider_finetune.exceptions import (
    ConflictError,
    FineTuningAPIError,
    FineTuningError,
    InvalidRequestError,
    UnsafeToRetryError,
)
from airflow_provider_finetune.models import FileObject

__all__ = [
    "MAX_PARTS",
    "MAX_SIZE",
    "MIN_PART",
    "TARGET_PART",
    "PutPart",
    "multipart_flow",
    "multipart_steps",
    "part_plan",
]

#: No part but the last is smaller (S3's limit, as the SDK keeps it).
MIN_PART = 5 * 2**20
#: The size a part aims at.
TARGET_PART = 250 * 2**20
#: The most parts an upload has.
MAX_PARTS = 250
#: The largest file Together fine-tunes on (50.1 GiB, the SDK's bound).
MAX_SIZE = int(50.1 * 2**30)
#: A part's ``PUT`` may take long to write: 300 s to connect and read, an hour to write (the SDK's).
PART_TIMEOUT = httpx.Timeout(300.0, write=3600.0)


def part_plan(size: int) -> tuple[int, int]:
    """The part size and the number of parts of a file of ``size`` bytes (the SDK's ``_calculate_parts``)."""
    if size <= TARGET_PART:
        return size, 1
    count = min(MAX_PARTS, math.ceil(size / TARGET_PART))
    part = math.ceil(size / count)
    if part < MIN_PART:
        part = MIN_PART
        count = math.ceil(size / part)
    return part, count


@dataclass(frozen=True)
class PutPart:
    """``PUT`` bytes ``offset`` to ``offset + length`` of the file to a presigned ``url``; answered with its ETag."""

    url: str
    number: int
    offset: int
    length: int
    headers: Mapping[str, str] = field(default_factory=dict)


Step = Call[Any] | PutPart
Steps = Generator[Step, Any, FileObject]


def multipart_steps(files: Any, name: str, size: int, kind: str, checksum: str, purpose: str) -> Steps:
    """The requests of one multipart upload; return the file made.

    Each step is answered with its result, or with the :class:`FineTuningError` that ended it.

    :param files: what makes the calls (the Together backend: ``multipart_initiate``, ``multipart_complete``,
        ``multipart_abort`` and ``get_file``).
    :param name: the file's name.
    :param size: its size in bytes.
    :param kind: ``jsonl``, ``parquet`` or ``csv``.
    :param checksum: the SHA-256 of the content, hex.
    :param purpose: the file's purpose.
    """
    part_size, count = part_plan(size)
    begin = {
        "file_name": name,
        "file_size": size,
        "num_parts": count,
        "purpose": purpose,
        "file_type": kind,
        "checksum": checksum,
    }
    started = yield files.multipart_initiate(begin)
    if isinstance(started, ConflictError) and isinstance(started.body, Mapping) and started.body.get("file_id"):
        existing = yield files.get_file(str(started.body["file_id"]))
        if isinstance(existing, FineTuningError):
            raise existing
        unlike = _unlike(existing, size, purpose)
        if unlike:
            raise FineTuningAPIError(
                409, f"Together named {existing.id} as the file of this content, but {unlike}: not used"
            )
        return existing
    if isinstance(started, FineTuningError):
        raise started
    upload_id, file_id, urls = _started(started, count)
    ids = {"upload_id": upload_id, "file_id": file_id}
    try:
        parts = []
        for number, (url, headers) in enumerate(urls, start=1):
            offset = (number - 1) * part_size
            etag = yield PutPart(url, number, offset, min(part_size, size - offset), headers)
            if isinstance(etag, FineTuningError):
                raise etag
            parts.append({"part_number": number, "etag": etag})
        done = yield files.multipart_complete({**ids, "parts": parts})
        if isinstance(done, UnsafeToRetryError):
            raise Made(done)  # the file may have been made: not aborted, the caller looks it up
        if isinstance(done, InvalidRequestError):  # made, and Together's check found it invalid: not kept
            yield files.delete_file(file_id)
            raise Made(done)
        if isinstance(done, FineTuningError):
            raise done
    except Made as made:
        raise made.error from None
    except BaseException as failure:
        if isinstance(failure, GeneratorExit):
            raise
        yield files.multipart_abort(ids)  # the service discards the parts; its answer changes nothing
        raise
    file: FileObject = done
    unlike = _unlike(file, size, purpose) if file.id == file_id else f"it is {file.id}, not {file_id}"
    if unlike:
        raise FineTuningAPIError(200, f"Together's multipart complete answered a file unlike the upload: {unlike}")
    return file


def _unlike(file: FileObject, size: int, purpose: str) -> str:
    """What in a file's own fields says it is not the one uploaded (``""`` when nothing does)."""
    if file.bytes != size:
        return f"it has {file.bytes} bytes, not {size}"
    if file.purpose != purpose:
        return f"its purpose is {file.purpose!r}, not {purpose!r}"
    if file.status == "error":
        return f"Together's check of it failed ({file.status_details})"
    return ""


class Made(Exception):
    """A complete that made the file, or may have: the upload is not aborted (the caller looks the file up)."""

    def __init__(self, error: FineTuningError) -> None:
        super().__init__(str(error))
        self.error = error


def _started(answer: Any, count: int) -> tuple[str, str, list[tuple[str, dict[str, str]]]]:
    """The upload's id, its file's id and each part's presigned URL and headers, in part order."""
    if not isinstance(answer, Mapping) or not answer.get("upload_id") or not answer.get("file_id"):
        keys = sorted(answer) if isinstance(answer, Mapping) else type(answer).__name__
        # Named by its keys only: its parts' presigned URLs carry credentials.
        raise FineTuningAPIError(200, f"Together's multipart initiate answered no upload_id or file_id (keys: {keys})")
    by_number: dict[int, tuple[str, dict[str, str]]] = {}
    for part in answer.get("parts") or []:
        number = part.get("PartNumber", part.get("part_number"))
        url = part.get("URL", part.get("UploadURL"))
        if isinstance(number, int) and isinstance(url, str) and url:
            by_number[number] = (url, {str(k): str(v) for k, v in (part.get("Headers") or {}).items()})
    if sorted(by_number) != list(range(1, count + 1)):
        raise FineTuningAPIError(
            200, f"Together's multipart initiate answered parts {sorted(by_number)}, not 1 to {count}"
        )
    return (
        str(answer["upload_id"]),
        str(answer["file_id"]),
        [by_number[n] for n in sorted(by_number)],
    )


def _put(client: httpx.Client | httpx.AsyncClient, step: PutPart, stream: IO[bytes], start: int) -> httpx.Request:
    stream.seek(start + step.offset)
    data = stream.read(step.length)
    return client.build_request("PUT", step.url, content=data, headers=dict(step.headers))


def _etag(response: httpx.Response, step: PutPart) -> str:
    etag = response.headers.get("ETag", "").strip('"')
    if not etag:
        raise FineTuningAPIError(response.status_code, f"No ETag answered for part {step.number} of the upload")
    return etag


def multipart_flow(files: Any, stream: IO[bytes], name: str, kind: str, size: int, purpose: str) -> Flow[FileObject]:
    """Upload ``size`` bytes of ``stream`` (from where it stands) as one Together file: :func:`multipart_steps`.

    Each part's ``PUT`` is a :class:`~airflow_provider_finetune.core.flows.Transfer` to its presigned URL (no API
    key goes with it), its bytes read again from the file for each attempt.
    """
    start = stream.tell()
    _, checksum = content_digest(stream, start)  # the stream from here to its end is the file's size
    steps = multipart_steps(files, name, size, kind, checksum, purpose)
    put = lambda step: _transfer(step, stream, start) if isinstance(step, PutPart) else step  # noqa: E731
    return (yield from translated(steps, put))


def _transfer(step: PutPart, stream: IO[bytes], start: int) -> Transfer[str]:
    return Transfer(lambda client: _put(client, step, stream, start), lambda answer: _etag(answer, step), PART_TIMEOUT)
