"""Operators that share a fine-tuned model checkpoint with projects and revoke what was shared, idempotently.

Importing this module is cheap: the hook, httpx and pydantic are only imported when a task runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.operators.base import _FineTuningOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["FineTuningCheckpointPermissionOperator", "FineTuningCheckpointPermissionRevokeOperator"]


def _ids(value: Any, name: str) -> list[str]:
    """One id or a list of ids (as rendered), without duplicates, in the order given."""
    from airflow_provider_finetune.exceptions import InvalidRequestError

    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset) or not all(
        isinstance(item, str) and item.strip() for item in items
    ):
        raise InvalidRequestError(f"{name} must be a list of non-empty strings, got {value!r}", field=name)
    return list(dict.fromkeys(item.strip() for item in items))


def _checkpoint_name(value: Any) -> str:
    from airflow_provider_finetune.exceptions import InvalidRequestError

    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(
            f"checkpoint must be a fine-tuned model checkpoint name, got {value!r}", field="checkpoint"
        )
    return value.strip()


class FineTuningCheckpointPermissionOperator(_FineTuningOperator):
    """Share a fine-tuned model checkpoint with projects; projects that already have it are left alone.

    Idempotent: the checkpoint's permissions are listed first and a permission is only created for the
    projects that have none, so a retry or a second run creates nothing new. Needs an admin API key.

    XComs: the return value is the list of permission ids, one per requested project, in their order
    (existing and new alike); ``permissions`` maps each project to its permission id.

    :param checkpoint: the fine-tuned model checkpoint (templated), e.g. ``ft:gpt-4o-mini:org:sfx:abc:ckpt-step-10``.
    :param project_ids: the projects to share it with (templated); one id or a list.
    :param finetune_conn_id: the connection.
    """

    capability = "checkpoint_permissions"
    template_fields: Sequence[str] = ("checkpoint", "project_ids")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        checkpoint: str,
        project_ids: list[str] | str,
        finetune_conn_id: str = "finetune_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.checkpoint = checkpoint
        self.project_ids = project_ids

    def execute(self, context: Context) -> list[str]:
        """Create the missing permissions; return every requested project's permission id."""
        self._refuse_if_unsupported()
        from airflow_provider_finetune.exceptions import FineTuningError
        from airflow_provider_finetune.models import CreateCheckpointPermissionRequest, build_request

        checkpoint = _checkpoint_name(self.checkpoint)
        projects = _ids(self.project_ids, "project_ids")
        build_request(CreateCheckpointPermissionRequest, project_ids=projects)  # refuse bad ids before I/O
        permissions: dict[str, str] = {}
        for existing in self.hook.iter_checkpoint_permissions(checkpoint, limit=100):
            if existing.project_id in projects:
                permissions.setdefault(existing.project_id, existing.id)
        missing = [project for project in projects if project not in permissions]
        if permissions:
            self.log.info("%s is already shared with %s", checkpoint, ", ".join(sorted(permissions)))
        if missing:
            made = self.hook.create_checkpoint_permissions(checkpoint, missing)
            for created in made.data:
                if created.project_id in missing:
                    permissions.setdefault(created.project_id, created.id)
            self.log.info("Shared %s with %s", checkpoint, ", ".join(missing))
        absent = [project for project in projects if project not in permissions]
        if absent:
            raise FineTuningError(f"The service made no permission of {checkpoint} for {', '.join(absent)}")
        context["ti"].xcom_push(key="permissions", value={p: permissions[p] for p in projects})
        return [permissions[project] for project in projects]


class FineTuningCheckpointPermissionRevokeOperator(_FineTuningOperator):
    """Revoke permissions of a fine-tuned model checkpoint, by project or by permission id.

    Idempotent: revoking a permission that does not exist (or no longer does) is fine. Needs an admin
    API key. The return value is the list of the permission ids deleted by this run.

    :param checkpoint: the fine-tuned model checkpoint (templated).
    :param project_ids: revoke the permissions of these projects (templated).
    :param permission_ids: revoke these permissions (templated), e.g. what
        :class:`FineTuningCheckpointPermissionOperator` returned.
    :param finetune_conn_id: the connection.
    """

    capability = "checkpoint_permissions"
    template_fields: Sequence[str] = ("checkpoint", "project_ids", "permission_ids")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        checkpoint: str,
        project_ids: list[str] | str | None = None,
        permission_ids: list[str] | str | None = None,
        finetune_conn_id: str = "finetune_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        if project_ids is None and permission_ids is None:
            from airflow_provider_finetune.exceptions import InvalidRequestError

            raise InvalidRequestError("give project_ids or permission_ids to revoke", field="project_ids")
        self.checkpoint = checkpoint
        self.project_ids = project_ids
        self.permission_ids = permission_ids

    def execute(self, context: Context) -> list[str]:
        """Delete the matching permissions that exist; return the ids deleted."""
        self._refuse_if_unsupported()
        from airflow_provider_finetune.exceptions import FineTuningError, NotFoundError

        checkpoint = _checkpoint_name(self.checkpoint)
        projects = set(_ids(self.project_ids, "project_ids")) if self.project_ids is not None else set()
        wanted = set(_ids(self.permission_ids, "permission_ids")) if self.permission_ids is not None else set()
        matching = [
            permission
            for permission in self.hook.iter_checkpoint_permissions(checkpoint, limit=100)
            if permission.id in wanted or permission.project_id in projects
        ]
        deleted: list[str] = []
        for permission in matching:
            try:
                answer = self.hook.delete_checkpoint_permission(checkpoint, permission.id)
            except NotFoundError:
                self.log.info("Permission %s of %s is already gone", permission.id, checkpoint)
                continue
            if not answer.deleted or answer.id != permission.id:  # the service's own answer says what it did
                raise FineTuningError(
                    f"Revoking permission {permission.id} ({permission.project_id}) of {checkpoint}: the service "
                    f"answered {answer.id} deleted={answer.deleted}; the permission may still be in force"
                )
            deleted.append(permission.id)
            self.log.info("Revoked permission %s (%s) of %s", permission.id, permission.project_id, checkpoint)
        seen = {p.id for p in matching} | {p.project_id for p in matching}
        absent = sorted((projects | wanted) - seen)
        if absent:
            self.log.info("Nothing to revoke for %s: no such permission of %s", ", ".join(absent), checkpoint)
        return deleted
