"""No retraining on unchanged data, the part that reads the service: file digests and the recorded job.

The rules (digests, fingerprints, the record, the metadata tag) are in
:mod:`airflow_provider_finetune.rules.unchanged`; what here needs the connection's hook.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.core.statuses import SUCCEEDED
from airflow_provider_finetune.exceptions import FineTuningError, NotFoundError
from airflow_provider_finetune.rules.unchanged import DATA_KEY, FILE_FIELDS, TrainingRecord, tag_value

if TYPE_CHECKING:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJob

__all__ = ["file_digests", "reuse_refusal"]


def file_digests(
    hook: FineTuningHook, request: CreateFineTuningJobRequest, uploaded: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, str | None], str | None]:
    """The content digest of each file the job will train on, and why there is none when one is missing.

    A file's digest is the one its upload task recorded (``uploaded``: file id -> the upload operator's
    :data:`FILE_DIGEST_KEY` record), checked against the size the service reports; else the SHA-256 of its
    content as the service serves it. A file that can be neither vouched for nor read has no digest, and the
    data cannot be shown unchanged.

    :param hook: the connection's hook.
    :param request: the create request.
    :param uploaded: what upstream upload tasks recorded, by file id.
    :return: the digests by role, and the reason when a file's digest could not be had (``None`` when all were).
    """
    digests: dict[str, str | None] = {}
    for role in FILE_FIELDS:
        reference = getattr(request, role, None)
        if not reference:
            digests[role] = None
            continue
        record = uploaded.get(reference)
        try:
            if record is not None and isinstance(record.get("sha256"), str):
                size = record.get("bytes")
                if size is not None and hook.backend.file_reference == "file_id":
                    reported = hook.get_file(reference).bytes
                    if reported is not None and reported != size:
                        return digests, f"{role} {reference} holds {reported} bytes, not the {size} its upload recorded"
                digests[role] = str(record["sha256"])
            elif hook.backend.file_reference == "file_id":
                digests[role] = hashlib.sha256(hook.get_file_content(reference)).hexdigest()
            else:
                return digests, f"the content of {role} {reference} cannot be read to tell whether it changed"
        except FineTuningError as err:
            return digests, f"the content of {role} {reference} could not be read ({err}) to tell whether it changed"
    return digests, None


def reuse_refusal(
    record: TrainingRecord,
    *,
    digest: str,
    fingerprint: str,
    finetune_conn_id: str,
    model: str,
    hook: FineTuningHook,
) -> tuple[FineTuningJob | None, str]:
    """Check a recorded job against this run and against the service's own view of it.

    :return: the job when its model may be returned (and why), else ``None`` and the reason it may not.
    """
    if record.finetune_conn_id != finetune_conn_id:
        return None, f"the last successful job {record.job_id} was made through connection {record.finetune_conn_id}"
    if record.training_data_digest != digest:
        return None, f"the training data changed since job {record.job_id}"
    if record.request_fingerprint != fingerprint:
        return None, f"the request changed since job {record.job_id}"
    try:
        job = hook.get_job(record.job_id)
    except NotFoundError:
        return None, f"the last successful job {record.job_id} no longer exists on the service"
    if job.status.value != SUCCEEDED:
        return None, f"the service says job {job.id} is {job.status.value}, not succeeded"
    if not job.fine_tuned_model or job.fine_tuned_model != record.fine_tuned_model:
        return None, f"the service names no fine-tuned model {record.fine_tuned_model} for job {job.id}"
    if job.model != model:
        return None, f"job {job.id} was made from base model {job.model}, not {model}"
    if hook.backend.supports("job_metadata") and (job.metadata or {}).get(DATA_KEY) != tag_value(digest, fingerprint):
        return None, f"job {job.id} does not carry this run's training data digest and request fingerprint"
    return job, (
        f"the training data (digest {digest}) and the request (fingerprint {fingerprint}) are the same as those of "
        f"job {job.id}, the last successful job of this task"
    )
