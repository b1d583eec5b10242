"""The job operator and its policies: one job per task instance, and what it does around that job.

:class:`FineTuningJobOperator` (:mod:`.operator`) composes the policies of :mod:`.policy`: budget caps, early
stopping, quota waits, skipping unchanged data and lineage, each in a module of its own.
"""

from __future__ import annotations

from airflow_provider_finetune.operators.job.operator import FineTuningJobOperator
from airflow_provider_finetune.operators.job.policy import Done, JobPolicy, JobRun

__all__ = ["Done", "FineTuningJobOperator", "JobPolicy", "JobRun"]
