"""The provider's Airflow plugin: a "Fine-tuning" page in the UI's navigation and a tab on task instances.

Registered by installing the package (the ``airflow.plugins`` entry point). Airflow 3.1+ mounts the FastAPI
app of :mod:`airflow_provider_finetune.plugins.app` in its api-server at ``/finetune`` and shows the two
external views: the page in the navigation, and the same view, scoped to one task instance, as a tab on
every task instance (Airflow's plugins cannot name an operator; the tab of a task that made no job says so).
The app is imported only where a FastAPI app is wanted (the api-server), so that workers and the scheduler,
which load plugins too, do not import FastAPI for it.

The icon is a ``data:`` URI: the navigation draws it with no request, so no credential is needed for it (on
Airflow 3.1 an image request carries none: its UI keeps the token out of the cookie).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_finetune.plugins.assets import ICON, URL_PREFIX

__all__ = ["ICON", "URL_PREFIX", "FineTuningPlugin"]


class _LazyApp(dict[str, Any]):
    """A plugin's FastAPI app entry whose ``app`` is imported on first access (by the api-server only)."""

    def __getitem__(self, key: str) -> Any:
        if key == "app":
            from airflow_provider_finetune.plugins.app import app

            return app
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key == "app" or key in self else default


class FineTuningPlugin(AirflowPlugin):
    """Fine-tuning jobs in the Airflow UI: list, curves, checkpoints, events, and pause, resume and cancel."""

    name = "finetune"
    fastapi_apps = [_LazyApp({"app": None, "url_prefix": URL_PREFIX, "name": "Fine-tuning"})]
    external_views = [
        {
            "name": "Fine-tuning",
            "href": f"{URL_PREFIX}/",
            "icon": ICON,
            "url_route": "finetune",
            "destination": "nav",
        },
        {
            "name": "Fine-tuning job",
            "href": f"{URL_PREFIX}/?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}&map_index={{MAP_INDEX}}",
            "icon": ICON,
            "url_route": "finetune_task",
            "destination": "task_instance",
        },
    ]
