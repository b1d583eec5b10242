"""A file upload as one flow: the source opened and measured, then one request, the Uploads API, or the service's own.

:func:`upload_route` says how a file of a size goes up (refusing, before any request, one the service cannot
take); :func:`route_flow` opens the source and returns the backend's flow for that route, which the hook's
flow drivers carry out.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from airflow_provider_finetune.exceptions import InvalidRequestError

if TYPE_CHECKING:
    from airflow_provider_finetune.core.flows import Flow
    from airflow_provider_finetune.models import FileObject

__all__ = ["FILES_API_LIMIT", "FileSource", "route_flow", "upload_route"]

MB = 1024 * 1024
#: Files up to this size go through ``POST /files``; larger ones through the Uploads API (at most the backend's
#: ``max_file_size``), or where the service has its own, its multipart upload (``multipart_threshold``).
FILES_API_LIMIT = 512 * MB

FileSource = str | os.PathLike[str] | bytes | IO[bytes]
Route = Literal["single", "parts", "multipart"]


def upload_route(backend: Any, size: int, name: str, threshold: int) -> Route:
    """How a file of ``size`` bytes goes up; refused, naming the file, before any request when it cannot.

    ``single``: one request; ``parts``: the Uploads API, above ``threshold``; ``multipart``: the service's own
    multipart upload, above its backend's ``multipart_threshold`` (Together).

    :raises InvalidRequestError: for a file larger than the service takes.
    :raises UnsupportedCapabilityError: for a file that needs the Uploads API on a service without it.
    """
    if size > backend.max_file_size:
        raise InvalidRequestError(
            f"{name} is {size} bytes; {backend.label} takes at most {backend.max_file_size} bytes", field="file"
        )
    if backend.multipart_threshold is not None:
        return "single" if size <= backend.multipart_threshold else "multipart"
    if size <= threshold:
        return "single"
    backend.require("uploads")  # a file this large goes up in parts
    return "parts"


def route_flow(
    backend: Any, source: FileSource, *, purpose: str, filename: str | None, threshold: int, part_size: int
) -> Flow[FileObject]:
    """Upload ``source`` by the route its size takes (:func:`upload_route`); the source is closed at the end.

    :param backend: the connection's backend (its service must have the files API).
    :param source: a path, bytes, or a binary file object opened for reading (and seeking).
    :param purpose: the file's purpose.
    :param filename: the name the service records; the path's name by default.
    :param threshold: files larger than this many bytes go through the Uploads API.
    :param part_size: the size of one Uploads API part.
    """
    backend.require("files")
    with _opened(source, filename) as (stream, name, size):
        route = upload_route(backend, size, name, threshold)
        if route == "single":
            file: FileObject = yield from backend.file_flow(stream, name, purpose)
        elif route == "multipart":
            file = yield from backend.multipart_flow(stream, name, size, purpose)
        else:
            file = yield from backend.parts_flow(stream, name, size, purpose, part_size)
        return file


class _opened:
    """Open a file source for reading and measure it; closes only what it opened."""

    def __init__(self, source: FileSource, filename: str | None) -> None:
        self.source = source
        self.filename = filename
        self.owned: IO[bytes] | None = None

    def __enter__(self) -> tuple[IO[bytes], str, int]:
        source = self.source
        if isinstance(source, bytes):
            stream: IO[bytes] = io.BytesIO(source)
            name = self.filename or "data.jsonl"
        elif isinstance(source, str | os.PathLike):
            path = Path(source)
            stream = self.owned = path.open("rb")
            name = self.filename or path.name
        else:
            stream = source
            name = self.filename or Path(str(getattr(source, "name", "data.jsonl"))).name
        start = stream.tell()
        size = stream.seek(0, os.SEEK_END) - start
        stream.seek(start)
        if size == 0:
            raise InvalidRequestError(f"{name} is empty", field="file")
        return stream, name, size

    def __exit__(self, *exc: object) -> None:
        if self.owned is not None:
            self.owned.close()
