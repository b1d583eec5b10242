"""The test deployment's auth manager: the simple auth manager, with one user who may read one DAG only.

The simple auth manager lets every user read every DAG, so "a user sees only the jobs of the DAGs they may read"
cannot be seen with it. Here :data:`PARTIAL_USER` may read and edit :data:`PRIVATE_DAG` only, and that DAG is
hidden from every other user, so the tests of admin, editor and viewer see the demo DAG's jobs as before.
Used by tests/ui/harness.py only (``AIRFLOW__CORE__AUTH_MANAGER=tests.ui.auth_manager.PartialAuthManager``).
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

PARTIAL_USER = "partial"
PRIVATE_DAG = "finetune_ui_private"


def _may_see(user: Any, dag_id: str | None) -> bool:
    # ``dag_id`` None is a question about every DAG at once: the partial user is refused it, the others are not.
    if user.get_name() == PARTIAL_USER:
        return dag_id == PRIVATE_DAG
    return dag_id != PRIVATE_DAG


class PartialAuthManager(SimpleAuthManager):
    """:class:`SimpleAuthManager`, where :data:`PARTIAL_USER` and :data:`PRIVATE_DAG` only meet each other."""

    def is_authorized_dag(self, *, user: Any, details: Any = None, **kwargs: Any) -> bool:
        dag_id = getattr(details, "id", None)
        return _may_see(user, dag_id) and bool(super().is_authorized_dag(user=user, details=details, **kwargs))

    def get_authorized_dag_ids(self, *, user: Any, **kwargs: Any) -> set[str]:
        return {d for d in super().get_authorized_dag_ids(user=user, **kwargs) if _may_see(user, d)}
