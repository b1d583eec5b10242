"""The provider's operators, by the names DAG files import them under.

Each lives in a module of its own role: the job operator and its policies in :mod:`.job`, job actions in
:mod:`.actions`, the file upload in :mod:`.files`, checkpoint permissions in :mod:`.permissions`, graders in
:mod:`.graders`, what they share in :mod:`.base`.

Importing this module is cheap (DAG files are parsed every 30 s): httpx, pydantic and the models are only
imported when a task runs.
"""

from __future__ import annotations

from airflow_provider_finetune.operators.actions import (
    FineTuningJobCancelOperator,
    FineTuningJobPauseOperator,
    FineTuningJobResumeOperator,
)
from airflow_provider_finetune.operators.base import task_tag
from airflow_provider_finetune.operators.files import (
    UPLOAD_CLOCK_SLACK,
    UPLOAD_INTENT_KEY,
    FineTuningFileUploadOperator,
    open_source,
)
from airflow_provider_finetune.operators.graders import FineTuningGraderRunOperator, FineTuningGraderValidateOperator
from airflow_provider_finetune.operators.job import FineTuningJobOperator
from airflow_provider_finetune.operators.job.early_stopping import EARLY_STOPPED_KEY, EARLY_STOPPING_FIELDS
from airflow_provider_finetune.operators.permissions import (
    FineTuningCheckpointPermissionOperator,
    FineTuningCheckpointPermissionRevokeOperator,
)

__all__ = [
    "EARLY_STOPPED_KEY",
    "EARLY_STOPPING_FIELDS",
    "UPLOAD_CLOCK_SLACK",
    "UPLOAD_INTENT_KEY",
    "FineTuningCheckpointPermissionOperator",
    "FineTuningCheckpointPermissionRevokeOperator",
    "FineTuningFileUploadOperator",
    "FineTuningGraderRunOperator",
    "FineTuningGraderValidateOperator",
    "FineTuningJobCancelOperator",
    "FineTuningJobOperator",
    "FineTuningJobPauseOperator",
    "FineTuningJobResumeOperator",
    "open_source",
    "task_tag",
]
