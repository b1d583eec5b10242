"""Checkpoint permissions: share a fine-tuned model or checkpoint with projects (list, create, delete).

The service requires an admin key for these endpoints; the app checks it, this module keeps the records.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_finetune.emulator.config import Clock
from airflow_provider_finetune.emulator.errors import invalid_request, not_found
from airflow_provider_finetune.emulator.jobs import JobService
from airflow_provider_finetune.emulator.params import cursor_page, parse_body, parse_limit
from airflow_provider_finetune.emulator.store import Record, Store
from airflow_provider_finetune.models import CreateCheckpointPermissionRequest

__all__ = ["PermissionService"]


class PermissionService:
    """Permissions by checkpoint (a fine-tuned model or checkpoint name), in creation order.

    :param store: where permissions are kept.
    :param jobs: tells which checkpoints exist.
    :param clock: the time source.
    """

    def __init__(self, store: Store, jobs: JobService, clock: Clock) -> None:
        self._store = store
        self._jobs = jobs
        self._clock = clock
        self._by_checkpoint: dict[str, list[str]] = {}
        for record in store.records("permission").values():
            self._by_checkpoint.setdefault(record["checkpoint"], []).append(record["id"])

    def _require_checkpoint(self, checkpoint: str) -> None:
        if self._jobs.find_model(checkpoint) is None:
            raise not_found(
                f"The fine-tuned model checkpoint {checkpoint!r} does not exist or you do not have access to it.",
                param="fine_tuned_model_checkpoint",
                code="model_not_found",
            )

    def list(
        self,
        checkpoint: str,
        *,
        project_id: str | None,
        after: str | None,
        limit: str | None,
        order: str | None,
    ) -> dict[str, Any]:
        """One page of a checkpoint's permissions (newest first unless ``order`` is ``ascending``)."""
        self._require_checkpoint(checkpoint)
        size = parse_limit(limit, default=10, maximum=100)
        if order not in (None, "ascending", "descending"):
            raise invalid_request(f"order must be 'ascending' or 'descending', got {order!r}", param="order")
        records = [self._store.records("permission")[pid] for pid in self._by_checkpoint.get(checkpoint, [])]
        if project_id:
            records = [record for record in records if record["project_id"] == project_id]
        if order != "ascending":
            records.reverse()
        if after:
            ids = [record["id"] for record in records]
            if after not in ids:
                raise invalid_request(f"No such checkpoint permission: {after}", param="after")
            records = records[ids.index(after) + 1 :]
        return cursor_page([_render(record) for record in records[:size]], has_more=len(records) > size)

    def create(self, checkpoint: str, body: Any) -> dict[str, Any]:
        """Share a checkpoint with projects; a project that has access already keeps its permission."""
        request = parse_body(CreateCheckpointPermissionRequest, body)
        self._require_checkpoint(checkpoint)
        existing = {
            self._store.records("permission")[pid]["project_id"]: self._store.records("permission")[pid]
            for pid in self._by_checkpoint.get(checkpoint, [])
        }
        data = []
        for project_id in dict.fromkeys(request.project_ids):
            record = existing.get(project_id)
            if record is None:
                record = {
                    "id": self._store.new_id("cp_"),
                    "created_at": int(self._clock()),
                    "project_id": project_id,
                    "checkpoint": checkpoint,
                }
                self._store.save("permission", record)
                self._by_checkpoint.setdefault(checkpoint, []).append(record["id"])
            data.append(_render(record))
        return cursor_page(data, has_more=False)

    def delete(self, checkpoint: str, permission_id: str) -> dict[str, Any]:
        """Delete a permission of a checkpoint."""
        self._require_checkpoint(checkpoint)
        ids = self._by_checkpoint.get(checkpoint, [])
        if permission_id not in ids:
            raise not_found(
                f"No such checkpoint permission: {permission_id}", param="permission_id", code="permission_not_found"
            )
        ids.remove(permission_id)
        self._store.delete("permission", permission_id)
        return {"object": "checkpoint.permission", "id": permission_id, "deleted": True}


def _render(record: Record) -> dict[str, Any]:
    return {
        "object": "checkpoint.permission",
        "id": record["id"],
        "created_at": record["created_at"],
        "project_id": record["project_id"],
    }
