"""The policies a job operator applies, in the order they act, made from the operator's own arguments."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.operators.job.budget import BudgetPolicy
from airflow_provider_finetune.operators.job.early_stopping import EarlyStoppingPolicy
from airflow_provider_finetune.operators.job.lineage import LineagePolicy
from airflow_provider_finetune.operators.job.quota import QuotaPolicy
from airflow_provider_finetune.operators.job.timeout import TimeoutPolicy
from airflow_provider_finetune.operators.job.unchanged import UnchangedPolicy

if TYPE_CHECKING:
    from airflow_provider_finetune.operators.job.policy import JobPolicy

__all__ = ["policies_of"]


def policies_of(operator: Any) -> tuple[tuple[JobPolicy, ...], LineagePolicy]:
    """The policies of one try of a job operator: timeout, skip-if-unchanged, early stopping, budget, quota, lineage."""
    lineage = LineagePolicy()
    policies = (
        TimeoutPolicy(operator.cancel_on_timeout),
        UnchangedPolicy(operator.skip_if_unchanged, operator.finetune_conn_id, operator.upstream_task_ids),
        EarlyStoppingPolicy(operator.early_stopping, operator.validation_file),
        BudgetPolicy(
            operator.model,
            operator.service_options,
            operator.max_cost,
            operator.price_per_million_tokens,
            operator.training_tokens,
            operator.training_examples,
        ),
        QuotaPolicy(operator.max_active_jobs, operator.quota_retry_interval, operator.deferrable),
        lineage,
    )
    return policies, lineage
