"""Operator extra link to a fine-tuning job's page on the service's dashboard (the backend knows the page)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

__all__ = ["FineTuningJobLink"]


class FineTuningJobLink(BaseOperatorLink):
    """The "Fine-tuning job" button: the job's page, for the services that have one; none for the others."""

    name = "Fine-tuning job"
    #: XCom key under which the operators push the job's page as soon as the job exists.
    key = "job_url"

    #: Attribute of a running operator that holds the page it pushed in this process ("" for none yet), so that
    #: a try that failed before its job existed is not looked up (a read that logs "XCom not found").
    known_attribute = "_job_link"

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        """Return the job's page pushed by the task, or an empty string when there is none."""
        known = getattr(operator, self.known_attribute, None)
        if known is not None:
            return str(known)
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=self.key) or ""
