"""What the operators of this provider share: the connection, a hook made on first use, the job's XComs.

Importing this module is cheap (DAG files are parsed every 30 s): the hook, httpx and pydantic are only imported
when a task runs.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_finetune.links.finetune import FineTuningJobLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import FineTuningJob

__all__ = ["task_tag"]


def task_tag(context: Context) -> str:
    """The metadata tag that ties a job to one task instance: its DAG, task, run and map index."""
    ti = context["ti"]
    key = "\x1f".join([ti.dag_id, ti.task_id, ti.run_id, str(getattr(ti, "map_index", -1))])
    return "ti-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def _run_start(context: Context) -> float | None:
    """When the DAG run started: no job of one of its task instances can be older (a search stops there)."""
    dag_run = context.get("dag_run")
    start = getattr(dag_run, "start_date", None) or getattr(dag_run, "queued_at", None)
    return start.timestamp() if start is not None else None


def _seconds(value: float | timedelta | None) -> float | None:
    """Seconds, from a number or a timedelta."""
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


# A grader's own placeholders (``{{sample.output_text}}``, ``{{ item.label }}``) look like Jinja; they are
# kept as they are when the grader is rendered, instead of failing as undefined Jinja variables.
_GRADER_PLACEHOLDER = re.compile(r"\{\{\s*(?:sample|item)\b[^{}]*\}\}")


class _FineTuningOperator(BaseOperator):
    """What every operator of this provider shares: the connection and a hook made on first use."""

    #: What the service must be able to do for this operator (a capability of the backend), if anything.
    capability: str | None = None

    def _refuse_if_unsupported(self) -> None:
        """Fail before any request, in one line, when the connection's service cannot do what is asked."""
        if self.capability is not None:
            self.hook.require(self.capability)

    def __init__(self, *, finetune_conn_id: str = "finetune_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.finetune_conn_id = finetune_conn_id

    def render_template(
        self,
        content: Any,
        context: Context,
        jinja_env: Any = None,
        seen_oids: set[int] | None = None,
    ) -> Any:
        """Render a templated field's value as Airflow does, less what :meth:`_render_value` keeps from Jinja."""
        render = functools.partial(super().render_template, context=context, jinja_env=jinja_env, seen_oids=seen_oids)
        return self._render_value(content, render)

    def _render_value(self, content: Any, render: Callable[[Any], Any]) -> Any:
        """Render ``content`` with ``render`` (Airflow's own rendering), keeping from Jinja what is no template."""
        return render(content)

    @cached_property
    def hook(self) -> FineTuningHook:
        """The hook, made when the task runs."""
        from airflow_provider_finetune.hooks.finetune import FineTuningHook

        return FineTuningHook(self.finetune_conn_id)

    def _push_job(self, context: Context, job: FineTuningJob) -> None:
        """Push the job id and its page at once, before any wait, so that they survive a crash."""
        ti = context["ti"]
        ti.xcom_push(key="job_id", value=job.id)
        # The connection's id (never its settings), so that the job is found where it was made (the UI page).
        ti.xcom_push(key="finetune_conn_id", value=self.finetune_conn_id)
        # Pushed even when empty (a service with no job page), so that the link finds a value, not a 404.
        url = self.hook.job_url(job.id)
        ti.xcom_push(key=FineTuningJobLink.key, value=url)
        setattr(self, FineTuningJobLink.known_attribute, url or "")

    def _no_job_yet(self) -> None:
        """Say, for the link read when this try ends, that no job page was pushed in this process yet."""
        setattr(self, FineTuningJobLink.known_attribute, "")


class _GraderTemplates(_FineTuningOperator):
    """Renders templated fields that may hold graders without mistaking their placeholders for Jinja."""

    def _render_value(self, content: Any, render: Callable[[Any], Any]) -> Any:
        """Leave grader placeholders and python graders' source untouched."""
        if isinstance(content, str):
            content = _GRADER_PLACEHOLDER.sub(lambda m: "{% raw %}" + m.group(0) + "{% endraw %}", content)
        elif isinstance(content, dict) and content.get("type") == "python" and isinstance(content.get("source"), str):
            # Python source may hold "{{" of its own (f-strings); it is code, never a template.
            rest = {key: value for key, value in content.items() if key != "source"}
            return {**render(rest), "source": content["source"]}
        return render(content)
