"""Files and uploads of the emulator.

``/files``: multipart upload, retrieve, list, delete, content. ``/uploads``: create, parts, complete (with
an md5 check), cancel.
"""

from __future__ import annotations

import hashlib
from typing import Any

from airflow_provider_finetune.emulator.config import Clock
from airflow_provider_finetune.emulator.counters import Counters
from airflow_provider_finetune.emulator.errors import invalid_request, not_found
from airflow_provider_finetune.emulator.params import cursor_page, parse_body, parse_limit
from airflow_provider_finetune.emulator.store import Record, Store
from airflow_provider_finetune.models import CompleteUploadRequest, CreateUploadRequest

__all__ = ["MAX_FILE_BYTES", "MAX_PART_BYTES", "UPLOAD_SECONDS", "FileService"]

#: Largest file ``POST /files`` takes.
MAX_FILE_BYTES = 512 * 1024**2
#: Largest part ``POST /uploads/{id}/parts`` takes.
MAX_PART_BYTES = 64 * 1024**2
#: An upload must be completed within this many seconds of its creation.
UPLOAD_SECONDS = 3600


class FileService:
    """Files (with their bytes) and multi-part uploads.

    :param store: where files, uploads and parts are kept.
    :param clock: the time source.
    :param counters: counts the files created.
    """

    def __init__(self, store: Store, clock: Clock, counters: Counters) -> None:
        self._store = store
        self._clock = clock
        self._counters = counters
        # Creation order and positions, for listing and `after` in O(page).
        self._order: list[str | None] = list(store.records("file"))
        self._positions: dict[str, int] = {
            file_id: index for index, file_id in enumerate(self._order) if file_id is not None
        }

    # -- files -------------------------------------------------------------------------------------------

    def create(
        self,
        *,
        filename: str,
        purpose: str,
        data: bytes,
        expires_after: int | None = None,
        file_id: str | None = None,
        created_at: float | None = None,
    ) -> Record:
        """Store a file and return its record.

        :param filename: the file's name.
        :param purpose: its purpose (``fine-tune``, ``fine-tune-results``...).
        :param data: its bytes.
        :param expires_after: seconds after creation when it expires; never when ``None``.
        :param file_id: the id to give it (derived files); a fresh id when ``None``.
        :param created_at: its creation time; now when ``None``.
        """
        if len(data) > MAX_FILE_BYTES:
            raise invalid_request(
                f"File is {len(data)} bytes; files up to {MAX_FILE_BYTES} bytes are accepted "
                "(use the Uploads API for larger ones)",
                param="file",
            )
        if purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
            raise invalid_request(
                f"Invalid file format for Fine-Tuning API. Must be .jsonl (got {filename!r})", param="file"
            )
        created = self._clock() if created_at is None else created_at
        record: Record = {
            "id": file_id or self._store.new_id("file-"),
            "bytes": len(data),
            "created_at": int(created),
            "expires_at": int(created) + expires_after if expires_after is not None else None,
            "filename": filename,
            "purpose": purpose,
        }
        self._store.put_blob(_blob(record["id"]), data)
        self._store.save("file", record)
        if record["id"] not in self._positions:
            self._positions[record["id"]] = len(self._order)
            self._order.append(record["id"])
        self._counters.files_created += 1
        return record

    def find(self, file_id: str) -> Record | None:
        """Return a file that exists and has not expired, or ``None``."""
        record = self._store.get("file", file_id)
        if record is None or self._expired(record):
            return None
        return record

    def get(self, file_id: str) -> Record:
        """Return a file, or raise 404."""
        record = self.find(file_id)
        if record is None:
            raise not_found(f"No such File object: {file_id}", param="id")
        return record

    def content(self, file_id: str) -> bytes:
        """Return a file's bytes, or raise 404."""
        self.get(file_id)
        data = self._store.get_blob(_blob(file_id))
        if data is None:  # pragma: no cover - a record without bytes is a store bug
            raise not_found(f"No content for File object: {file_id}", param="id")
        return data

    def delete(self, file_id: str) -> dict[str, Any]:
        """Delete a file; raise 404 if there is none."""
        self.get(file_id)
        self._store.delete("file", file_id)
        self._store.delete_blob(_blob(file_id))
        position = self._positions.pop(file_id, None)
        if position is not None:
            self._order[position] = None
        return {"id": file_id, "object": "file", "deleted": True}

    def list(self, *, purpose: str | None, limit: str | None, order: str | None, after: str | None) -> dict[str, Any]:
        """One page of files, newest first unless ``order`` is ``asc``."""
        size = parse_limit(limit, default=10_000, maximum=10_000)
        if order not in (None, "asc", "desc"):
            raise invalid_request(f"order must be 'asc' or 'desc', got {order!r}", param="order")
        descending = order != "asc"
        start = len(self._order) - 1 if descending else 0
        if after:
            position = self._positions.get(after)
            if position is None:
                raise invalid_request(f"No such File object: {after}", param="after")
            start = position - 1 if descending else position + 1
        step = -1 if descending else 1
        data: list[dict[str, Any]] = []
        has_more = False
        index = start
        while 0 <= index < len(self._order):
            file_id = self._order[index]
            index += step
            record = self.find(file_id) if file_id else None
            if record is None or (purpose and record["purpose"] != purpose):
                continue
            if len(data) == size:
                has_more = True
                break
            data.append(self.render(record))
        # The spec types first_id and last_id as strings: an empty page has empty ones.
        return cursor_page(data, has_more=has_more, no_id="")

    @staticmethod
    def render(record: Record) -> dict[str, Any]:
        """The API object of a file (``OpenAIFile``)."""
        result = {
            "id": record["id"],
            "object": "file",
            "bytes": record["bytes"],
            "created_at": record["created_at"],
            "filename": record["filename"],
            "purpose": record["purpose"],
            "status": "processed",
        }
        if record.get("expires_at") is not None:
            result["expires_at"] = record["expires_at"]
        return result

    def _expired(self, record: Record) -> bool:
        expires_at = record.get("expires_at")
        return expires_at is not None and self._clock() >= expires_at

    # -- uploads -----------------------------------------------------------------------------------------

    def create_upload(self, body: Any) -> dict[str, Any]:
        """Start a multi-part upload (``POST /uploads``)."""
        request = parse_body(CreateUploadRequest, body)
        if request.purpose == "fine-tune" and not request.filename.lower().endswith(".jsonl"):
            raise invalid_request(
                f"Invalid file format for Fine-Tuning API. Must be .jsonl (got {request.filename!r})",
                param="filename",
            )
        now = self._clock()
        record: Record = {
            "id": self._store.new_id("upload_"),
            "bytes": request.bytes,
            "created_at": int(now),
            "expires_at": int(now) + UPLOAD_SECONDS,
            "filename": request.filename,
            "purpose": request.purpose,
            "mime_type": request.mime_type,
            "status": "pending",
            "file_expires_after": request.expires_after.seconds if request.expires_after else None,
            "parts": [],
            "received": 0,
            "file_id": None,
        }
        self._store.save("upload", record)
        return self.render_upload(record)

    def add_part(self, upload_id: str, data: bytes) -> dict[str, Any]:
        """Add a part to a pending upload (``POST /uploads/{id}/parts``)."""
        upload = self._pending_upload(upload_id, "add a part to")
        if len(data) > MAX_PART_BYTES:
            raise invalid_request(f"Part is {len(data)} bytes; parts hold at most {MAX_PART_BYTES}", param="data")
        if upload["received"] + len(data) > upload["bytes"]:
            raise invalid_request(
                f"Upload {upload_id} was created for {upload['bytes']} bytes; this part would bring it to "
                f"{upload['received'] + len(data)}",
                param="data",
            )
        part: Record = {
            "id": self._store.new_id("part_"),
            "created_at": int(self._clock()),
            "upload_id": upload_id,
            "bytes": len(data),
        }
        self._store.put_blob(_blob(part["id"]), data)
        self._store.save("part", part)
        upload["parts"].append(part["id"])
        upload["received"] += len(data)
        self._store.save("upload", upload)
        return {"id": part["id"], "object": "upload.part", "created_at": part["created_at"], "upload_id": upload_id}

    def complete_upload(self, upload_id: str, body: Any) -> dict[str, Any]:
        """Join the parts into a file, checking the size and the md5 (``POST /uploads/{id}/complete``)."""
        request = parse_body(CompleteUploadRequest, body)
        upload = self._pending_upload(upload_id, "complete")
        if len(set(request.part_ids)) != len(request.part_ids):
            raise invalid_request("part_ids lists a part more than once", param="part_ids")
        unknown = [part_id for part_id in request.part_ids if part_id not in upload["parts"]]
        if unknown:
            raise invalid_request(f"part_ids {unknown} are not parts of upload {upload_id}", param="part_ids")
        chunks = [self._store.get_blob(_blob(part_id)) or b"" for part_id in request.part_ids]
        data = b"".join(chunks)
        if len(data) != upload["bytes"]:
            raise invalid_request(
                f"The parts hold {len(data)} bytes; upload {upload_id} was created for {upload['bytes']}",
                param="part_ids",
            )
        if request.md5 is not None:
            actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if actual != request.md5.lower():
                raise invalid_request(
                    f"The md5 checksum of the uploaded bytes is {actual}, not {request.md5}",
                    param="md5",
                    code="md5_mismatch",
                )
        record = self.create(
            filename=upload["filename"],
            purpose=upload["purpose"],
            data=data,
            expires_after=upload["file_expires_after"],
        )
        for part_id in upload["parts"]:
            self._store.delete_blob(_blob(part_id))
            self._store.delete("part", part_id)
        upload.update(status="completed", file_id=record["id"], parts=[])
        self._store.save("upload", upload)
        return self.render_upload(upload)

    def cancel_upload(self, upload_id: str) -> dict[str, Any]:
        """Cancel a pending upload (``POST /uploads/{id}/cancel``)."""
        upload = self._pending_upload(upload_id, "cancel")
        for part_id in upload["parts"]:
            self._store.delete_blob(_blob(part_id))
            self._store.delete("part", part_id)
        upload.update(status="cancelled", parts=[])
        self._store.save("upload", upload)
        return self.render_upload(upload)

    def _pending_upload(self, upload_id: str, action: str) -> Record:
        upload = self._store.get("upload", upload_id)
        if upload is None:
            raise not_found(f"No such Upload object: {upload_id}", param="upload_id")
        status = self._upload_status(upload)
        if status != "pending":
            raise invalid_request(
                f"Cannot {action} upload {upload_id}: its status is {status!r}, not 'pending'",
                param="upload_id",
                code="upload_not_pending",
            )
        return upload

    def _upload_status(self, upload: Record) -> str:
        if upload["status"] == "pending" and self._clock() >= upload["expires_at"]:
            return "expired"
        return str(upload["status"])

    def render_upload(self, upload: Record) -> dict[str, Any]:
        """The API object of an upload (``upload``)."""
        file_record = self._store.get("file", upload["file_id"]) if upload.get("file_id") else None
        return {
            "id": upload["id"],
            "object": "upload",
            "bytes": upload["bytes"],
            "created_at": upload["created_at"],
            "expires_at": upload["expires_at"],
            "filename": upload["filename"],
            "purpose": upload["purpose"],
            "status": self._upload_status(upload),
            "file": self.render(file_record) if file_record else None,
        }


def _blob(object_id: str) -> str:
    return f"bytes:{object_id}"
