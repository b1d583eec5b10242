"""The job operator's lineage policy: which job's model the task returned, for the OpenLineage listener.

The listener of ``apache-airflow-providers-openlineage`` calls the operator's ``get_openlineage_facets_on_start``
and ``..._on_complete``; they ask this policy, which imports the facets (:mod:`.openlineage`, and with them
``openlineage``) only then: without that provider nothing of OpenLineage is imported and nothing changes.

Importing this module is cheap: the hook, httpx, pydantic and OpenLineage are only imported when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_finetune.core.statuses import SUCCEEDED
from airflow_provider_finetune.operators.job.policy import JobPolicy, JobRun

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJob

__all__ = ["LineagePolicy"]


class LineagePolicy(JobPolicy):
    """Keep the job whose model the task returned (an earlier job's, when that was reused), for the facets."""

    def __init__(self) -> None:
        #: The job whose model the task returned.
        self.returned_job: FineTuningJob | None = None
        #: The earlier job whose model was returned without training (``skip_if_unchanged``).
        self.reused_job_id: str | None = None

    def at_end(self, run: JobRun, job: FineTuningJob) -> None:
        """Keep a succeeded job, and the earlier job it is when it was reused."""
        if job.status.value == SUCCEEDED:
            self.returned_job, self.reused_job_id = job, run.reused_job_id

    def facets(
        self, hook: FineTuningHook, request: CreateFineTuningJobRequest, job_id: str | None, *, complete: bool
    ) -> OperatorLineage:
        """The lineage of the task: its training data in, its job as a run facet; its model out once complete.

        :param complete: whether the task has ended (then the returned job's model, id and trained tokens count).
        """
        from airflow_provider_finetune.operators.job.openlineage import operator_lineage

        if not complete:
            return operator_lineage(hook, request, job_id=job_id)
        job = self.returned_job
        return operator_lineage(
            hook,
            request,
            job_id=job.id if job is not None else job_id,
            fine_tuned_model=job.fine_tuned_model if job is not None else None,
            trained_tokens=job.trained_tokens if job is not None else None,
            reused_job_id=self.reused_job_id,
        )
