"""The job operator's skip-if-unchanged policy: no retraining when the data and the request are the same.

With ``skip_if_unchanged``, when the last successful job of this DAG and task trained on the same data (content
digest) with the same request (fingerprint), and the service still shows it succeeded with its model, the task
returns that model instead of training again (XComs ``reused_job_id``, ``skipped_because``); otherwise it says why
it trains (``trained_because``) and, once its job succeeds, records it for the next run to compare itself with.

The rules (digests, fingerprints, the record, the metadata tag) are in
:mod:`airflow_provider_finetune.rules.unchanged`; what here needs the connection's hook.

Importing this module is cheap: the hook, httpx and pydantic are only imported when a task runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.core.statuses import SUCCEEDED
from airflow_provider_finetune.operators.base import task_tag
from airflow_provider_finetune.operators.job.policy import Done, JobPolicy, JobRun

if TYPE_CHECKING:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJob
    from airflow_provider_finetune.rules.unchanged import TrainingRecord

__all__ = ["UnchangedPolicy", "file_digests", "reuse_refusal"]


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
    from airflow_provider_finetune.exceptions import FineTuningError
    from airflow_provider_finetune.rules.unchanged import FILE_FIELDS

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
    from airflow_provider_finetune.exceptions import NotFoundError
    from airflow_provider_finetune.rules.unchanged import DATA_KEY, tag_value

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


class UnchangedPolicy(JobPolicy):
    """Return the last successful job's model when nothing changed; record a successful job for the next run.

    :param skip_if_unchanged: whether the policy acts at all.
    :param finetune_conn_id: the connection (a recorded job made through another is never reused).
    :param upstream_task_ids: the tasks whose upload XComs vouch for the files' contents.
    """

    def __init__(
        self, skip_if_unchanged: bool = False, finetune_conn_id: str = "", upstream_task_ids: Collection[str] = ()
    ) -> None:
        self.skip_if_unchanged, self.finetune_conn_id = skip_if_unchanged, finetune_conn_id
        self.upstream_task_ids = upstream_task_ids

    def before_create(self, run: JobRun) -> Done | None:
        """The last successful job's model when nothing changed; else tag the request with its data digest."""
        if not self.skip_if_unchanged:
            return None
        from airflow_provider_finetune.rules import unchanged

        ti = run.context["ti"]
        request = run.request
        digests, unknown = file_digests(run.hook, request, self._uploaded_digests(run))
        if unknown is not None:
            return self._train_because(run, unknown)
        digest = unchanged.data_digest(digests)
        fingerprint = unchanged.settings_fingerprint(request.to_body())
        ti.xcom_push(key=unchanged.DIGEST_KEY, value=digest)
        ti.xcom_push(key=unchanged.FINGERPRINT_KEY, value=fingerprint)
        backend = run.hook.backend
        if backend.supports("job_metadata"):
            limit = backend.limits.max_metadata_keys
            tagged = unchanged.tagged_metadata(request.metadata, digest, fingerprint, limit)
            run.request = request.model_copy(update={"metadata": tagged})
        if self._has_own_job(run):
            return self._train_because(run, "an earlier try of this task instance made a job, which is reattached to")
        pulled = ti.xcom_pull(
            task_ids=ti.task_id, key=unchanged.RECORD_KEY, include_prior_dates=True, map_indexes=_map_index(ti)
        )
        record = unchanged.TrainingRecord.from_json(pulled)
        if record is None:
            return self._train_because(run, "no earlier successful job of this task to compare with")
        job, why = reuse_refusal(
            record,
            digest=digest,
            fingerprint=fingerprint,
            finetune_conn_id=self.finetune_conn_id,
            model=request.model,
            hook=run.hook,
        )
        if job is None:
            return self._train_because(run, why)
        run.log.info("Not training again, nothing paid: %s. Returning its model %s", why, job.fine_tuned_model)
        run.show(job)
        ti.xcom_push(key=unchanged.REUSED_KEY, value=job.id)
        run.reused_job_id = job.id
        ti.xcom_push(key=unchanged.SKIPPED_KEY, value=why)
        return Done(run.finish(job))

    def at_end(self, run: JobRun, job: FineTuningJob) -> None:
        """Leave the record the next run compares itself with: the job, its model, data digest and fingerprint."""
        if not self.skip_if_unchanged or job.status.value != SUCCEEDED:
            return
        from airflow_provider_finetune.rules import unchanged

        ti = run.context["ti"]
        digest, fingerprint = (
            ti.xcom_pull(task_ids=ti.task_id, key=key, map_indexes=_map_index(ti))
            for key in (unchanged.DIGEST_KEY, unchanged.FINGERPRINT_KEY)
        )
        if job.fine_tuned_model and isinstance(digest, str) and isinstance(fingerprint, str):
            record = unchanged.TrainingRecord(job.id, job.fine_tuned_model, digest, fingerprint, self.finetune_conn_id)
            ti.xcom_push(key=unchanged.RECORD_KEY, value=record.to_json())

    @staticmethod
    def _train_because(run: JobRun, why: str) -> None:
        """Say, in the log and XCom (``trained_because``), why this run trains instead of reusing a model."""
        from airflow_provider_finetune.rules.unchanged import TRAINED_KEY

        run.log.info("Training: %s", why)
        run.context["ti"].xcom_push(key=TRAINED_KEY, value=why)

    def _uploaded_digests(self, run: JobRun) -> dict[str, Any]:
        """What the upstream upload tasks recorded of their files (content SHA-256, size), by file id."""
        from airflow_provider_finetune.rules.unchanged import FILE_DIGEST_KEY

        upstream = sorted(self.upstream_task_ids)
        if not upstream:
            return {}
        values = run.context["ti"].xcom_pull(task_ids=upstream, key=FILE_DIGEST_KEY)
        found: dict[str, Any] = {}
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, Mapping) and isinstance(value.get("file_id"), str):
                found[value["file_id"]] = value
        return found

    @staticmethod
    def _has_own_job(run: JobRun) -> bool:
        """Whether an earlier try of this task instance may have made a job (then it is reattached to, not skipped)."""
        if getattr(run.context["ti"], "try_number", 1) <= 1:
            return False
        if not run.hook.backend.supports("job_metadata"):
            return True  # no tag to look for: a retry never skips
        return run.hook.find_job_by_tag(task_tag(run.context)) is not None


def _map_index(ti: Any) -> int:
    index = getattr(ti, "map_index", -1)
    return -1 if index is None else int(index)
