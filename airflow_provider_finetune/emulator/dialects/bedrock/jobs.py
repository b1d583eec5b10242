"""Bedrock model customization jobs and the custom models they make, over the simulated trainer.

A job is a :class:`~airflow_provider_finetune.emulator.trainer.SimJob` (the same progress, metrics and
lifecycle as the OpenAI dialect's jobs) whose record also keeps the Bedrock request. Its trainer statuses
read as Bedrock's: ``validating_files``, ``queued`` and ``running`` are ``InProgress`` (with
``statusDetails`` saying which of validation, data processing and training is under way), ``succeeded``
is ``Completed``, ``failed`` is ``Failed``, and a stopped job is ``Stopping`` for a short while, then
``Stopped``.

The training data is read from S3 when the job is created; a missing object or a bad record fails the
job when its validation ends, with a ``failureMessage`` naming the file and line. A completed job makes a
custom model (``GetCustomModel``) and writes its metrics to the output S3 URI, as Bedrock does:
``<output>/model-customization-job-<id>/training_artifacts/step_wise_training_metrics.csv`` and, with
validation data, ``.../validation_artifacts/post_fine_tuning_validation/validation/validation_metrics.csv``.

Job names are unique in the account: a name in use is a ``ValidationException`` "The provided job name is
currently in use." (what the service answers, and what Airflow's amazon provider looks for), whatever the
job's status. A custom model name in use is refused the same way ("The provided model name is currently in
use."), but a custom model is made only when its job completes (AWS: "After the model-customization job
completes successfully, your custom model resource will be ready to use"; "Amazon Bedrock doesn't create an
intermediate custom model for a stopped job"). AWS documents when the model is made, not when its name is taken;
the emulator holds the name for a completed job's model and for a job that may still make it (``InProgress``,
``Stopping``), not for a ``Failed`` or ``Stopped`` job, so a new job may take the name of one that ended without
a model. A ``clientRequestToken`` sent again with the same request gives the same job; with another request it is
a ``ConflictException``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from airflow_provider_finetune.emulator.config import EmulatorConfig
from airflow_provider_finetune.emulator.counters import Counters
from airflow_provider_finetune.emulator.dialects.bedrock.catalog import (
    DISTILLATION,
    FINE_TUNING,
    REINFORCEMENT_FINE_TUNING,
    BedrockBaseModel,
    find_bedrock_model,
)
from airflow_provider_finetune.emulator.dialects.bedrock.data import DataError, check_dataset
from airflow_provider_finetune.emulator.dialects.bedrock.errors import (
    access_denied,
    conflict,
    not_found,
    quota_exceeded,
    validation,
)
from airflow_provider_finetune.emulator.dialects.bedrock.s3 import S3Error
from airflow_provider_finetune.emulator.store import Record, Store, token
from airflow_provider_finetune.emulator.trainer import FORCE_FAILURE_KEY, SimJob, durations, plan_training

__all__ = [
    "JOB_KIND",
    "BedrockJobs",
    "CreateJob",
    "JobState",
    "in_window",
    "iso",
    "job_state",
    "list_answer",
    "listed",
    "page_of",
    "short_id",
]

#: The store's kind of Bedrock job records.
JOB_KIND = "bedrock-job"
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_ACTIVE = ("validating_files", "queued", "running")
#: The Bedrock statuses of a job that holds its custom model's name: it made the model, or may still make it.
_HOLDS_MODEL_NAME = ("InProgress", "Stopping", "Completed")
_T = TypeVar("_T")


def iso(moment: float) -> str:
    """A time as AWS's JSON answers write it: ISO 8601, UTC, milliseconds."""
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def in_window(moment: float, after: datetime | None, before: datetime | None) -> bool:
    """Whether a time is strictly between the bounds of a list filter, compared to the millisecond (as shown)."""
    shown = math.floor(moment * 1000)
    if after is not None and not shown > math.floor(after.timestamp() * 1000):
        return False
    return before is None or shown < math.floor(before.timestamp() * 1000)


def short_id(*parts: object) -> str:
    """A 12-character lowercase resource id, as the last part of Bedrock's ARNs."""
    number = int.from_bytes(token(*parts).encode(), "big")
    chars = []
    for _ in range(12):
        number, index = divmod(number, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[index])
    return "".join(chars)


def page_of(
    items: list[Any], *, max_results: int | None, next_token: str | None, what: str
) -> tuple[list[Any], str | None]:
    """One page of ``items`` and the token of the next page (``None`` on the last page).

    :param what: the operation, named in the error of a token that is not one of its own.
    """
    start = 0
    if next_token is not None:
        try:
            decoded = json.loads(base64.urlsafe_b64decode(next_token.encode()))
            start = int(decoded["offset"])
            if decoded["what"] != what or start < 0:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise validation("The provided pagination token is invalid.") from None
    size = max_results or 100
    page = items[start : start + size]
    end = start + len(page)
    if end >= len(items):
        return page, None
    return page, base64.urlsafe_b64encode(json.dumps({"what": what, "offset": end}).encode()).decode()


def listed(
    query: Mapping[str, Any],
    created: float,
    name: str,
    *,
    window: tuple[str, str] = ("creationTimeAfter", "creationTimeBefore"),
    equal: Mapping[str, Any] | None = None,
) -> bool:
    """Whether an item passes a list operation's filters (each one the query gives).

    :param query: the operation's query members.
    :param created: the item's creation time, which must be inside the ``window`` members (after, before).
    :param name: the item's name, which must hold ``nameContains``.
    :param equal: query member -> the item's value, which must be the member's.
    """
    if not in_window(created, query.get(window[0]), query.get(window[1])):
        return False
    if query.get("nameContains") and query["nameContains"] not in name:
        return False
    return all(not query.get(member) or query[member] == value for member, value in (equal or {}).items())


def list_answer(
    query: Mapping[str, Any],
    chosen: list[tuple[float, str, _T]],
    *,
    member: str,
    summary: Callable[[float, _T], dict[str, Any]],
    what: str,
) -> dict[str, Any]:
    """A list operation's answer: one page of the chosen items' summaries, and the token of the next page.

    The items are sorted by creation time, then id, newest first unless ``sortOrder`` is ``Ascending``.

    :param query: the operation's query members (``sortOrder``, ``maxResults``, ``nextToken``).
    :param chosen: each item that passed the filters, as ``(creation time, id, item)``.
    :param member: the answer's member that lists the summaries.
    :param summary: an item's summary, from its creation time and the item.
    :param what: what the operation lists, named in its page tokens.
    """
    descending = query.get("sortOrder", "Descending") == "Descending"
    ordered = sorted(chosen, key=lambda row: (row[0], row[1]), reverse=descending)
    page, next_token = page_of(
        ordered, max_results=query.get("maxResults"), next_token=query.get("nextToken"), what=what
    )
    answer: dict[str, Any] = {member: [summary(created, item) for created, _, item in page]}
    if next_token is not None:
        answer["nextToken"] = next_token
    return answer


@dataclass(frozen=True)
class CreateJob:
    """A create request that passed the checks made at once, and what was read for it.

    :param body: the request body.
    :param base: the base model.
    :param base_model_arn: the base model's ARN, as the job reports it.
    :param customization_type: the customization type.
    :param epochs: the epochs it trains for.
    :param batch_size: its batch size.
    :param hyperparameters: every hyperparameter, defaults filled in.
    """

    body: dict[str, Any]
    base: BedrockBaseModel
    base_model_arn: str
    customization_type: str
    epochs: int
    batch_size: int
    hyperparameters: dict[str, str]


class BedrockJobs:
    """Customization jobs and custom models of one account.

    :param store: where records are kept.
    :param config: speed, timings, clock, and the Bedrock region and account.
    :param counters: counts the jobs created.
    """

    def __init__(self, store: Store, config: EmulatorConfig, counters: Counters) -> None:
        self._store = store
        self._config = config
        self._bedrock = config.bedrock
        self._clock = config.clock
        self._counters = counters
        self._jobs: dict[str, SimJob] = {}
        self._by_name: dict[str, str] = {}
        self._by_token: dict[str, str] = {}
        #: Custom model name -> the jobs that asked for it, oldest first (a name freed by a job that ended
        #: without a model may be asked for again).
        self._models: dict[str, list[str]] = {}
        for record in store.records(JOB_KIND).values():
            self._index(SimJob(record))

    def _index(self, job: SimJob) -> None:
        record = job.record
        self._jobs[job.id] = job
        self._by_name[record["name"]] = job.id
        if record.get("client_token"):
            self._by_token[record["client_token"]] = job.id
        named = self._models.setdefault(record["model_name"], [])
        if job.id not in named:
            named.append(job.id)

    def _arn(self, kind: str, path: str) -> str:
        return f"arn:aws:bedrock:{self._bedrock.region}:{self._bedrock.account_id}:{kind}/{path}"

    # -- create ------------------------------------------------------------------------------------------

    def prepare(self, body: dict[str, Any]) -> CreateJob | str:
        """Check a create request (its shape already checked); return it ready, or the ARN of the job it repeats.

        :raises AWSError: ``ValidationException`` naming the field or for a name in use, ``ConflictException``
            for a token sent before with another request.
        """
        existing = self._repeat(body)
        if existing is not None:
            return existing
        self._check_names(body)
        self._check_quota()
        role_account = body["roleArn"].split(":")[4]
        if role_account and role_account != self._bedrock.account_id:
            raise access_denied(
                f"The caller is not authorized to perform iam:PassRole on {body['roleArn']}: the role belongs to "
                f"account {role_account}, not {self._bedrock.account_id}."
            )
        customization_type = body.get("customizationType") or FINE_TUNING
        base = self._base_model(body["baseModelIdentifier"])
        if customization_type not in base.customizations:
            raise validation(
                f"The model {base.model_id} does not support customization type {customization_type} "
                f"(it supports {', '.join(base.customizations)})."
            )
        self._check_customization(body, customization_type)
        hyperparameters = self._hyperparameters(base, body.get("hyperParameters") or {}, customization_type)
        if not body["trainingDataConfig"].get("s3Uri"):
            raise validation(
                "trainingDataConfig.s3Uri is required: the emulator reads training data from S3 "
                "(invocation logs as training data are not emulated)."
            )
        epochs = int(float(hyperparameters.get("epochCount", "1")))
        rft = (body.get("customizationConfig") or {}).get("rftConfig") or {}
        epochs = int((rft.get("hyperParameters") or {}).get("epochCount", epochs))
        batch_size = int(float(hyperparameters.get("batchSize", "8")))
        base_arn = f"arn:aws:bedrock:{self._bedrock.region}::foundation-model/{base.model_id}"
        return CreateJob(body, base, base_arn, customization_type, epochs, batch_size, hyperparameters)

    def _check_quota(self) -> None:
        quota = self._bedrock.max_active_jobs
        if quota is None:
            return
        now = self._clock()
        active = sum(1 for job in self._jobs.values() if job_state(job, now).status in ("InProgress", "Stopping"))
        if active >= quota:
            raise quota_exceeded(
                f"The number of model customization jobs in progress ({active}) has reached the account's quota "
                f"of {quota}. Wait for a job to end, or ask for a quota increase."
            )

    def _check_names(self, body: dict[str, Any]) -> None:
        if body["jobName"] in self._by_name:
            raise validation("The provided job name is currently in use.")
        now = self._clock()
        for job_id in self._models.get(body["customModelName"], ()):
            if job_state(self._jobs[job_id], now).status in _HOLDS_MODEL_NAME:
                raise validation("The provided model name is currently in use.")

    def _repeat(self, body: dict[str, Any]) -> str | None:
        client_token = body.get("clientRequestToken")
        if not client_token or client_token not in self._by_token:
            return None
        job = self._jobs[self._by_token[client_token]]
        if job.record["fingerprint"] != _fingerprint(body):
            raise conflict(
                f"The client request token {client_token} was already used with a different request "
                "(idempotent parameter mismatch)."
            )
        return str(job.record["arn"])

    def _base_model(self, identifier: str) -> BedrockBaseModel:
        base = find_bedrock_model(identifier)
        if base is None and ":custom-model/" in identifier:
            # Customizing a custom model again: it trains from the same foundation model.
            for job in self._jobs.values():
                if job.record["model_arn"] == identifier and self._completed(job):
                    base = find_bedrock_model(job.record["base"])
        if base is None:
            raise validation(f"The provided model identifier is invalid: {identifier} cannot be customized.")
        return base

    def _check_customization(self, body: dict[str, Any], customization_type: str) -> None:
        config = body.get("customizationConfig") or {}
        if customization_type == DISTILLATION and not config.get("distillationConfig"):
            raise validation("customizationConfig.distillationConfig is required for customization type DISTILLATION.")
        if customization_type != DISTILLATION and config.get("distillationConfig"):
            raise validation(
                f"customizationConfig.distillationConfig is only for DISTILLATION, not {customization_type}."
            )
        if customization_type == REINFORCEMENT_FINE_TUNING:
            grader = (config.get("rftConfig") or {}).get("graderConfig") or {}
            if not grader.get("lambdaGrader"):
                raise validation(
                    "customizationConfig.rftConfig.graderConfig.lambdaGrader is required for customization type "
                    "REINFORCEMENT_FINE_TUNING."
                )
            if body.get("hyperParameters"):
                raise validation(
                    "hyperParameters is not used by REINFORCEMENT_FINE_TUNING: set "
                    "customizationConfig.rftConfig.hyperParameters instead."
                )
        elif config.get("rftConfig"):
            raise validation(
                f"customizationConfig.rftConfig is only for REINFORCEMENT_FINE_TUNING, not {customization_type}."
            )

    def _hyperparameters(
        self, base: BedrockBaseModel, given: Mapping[str, str], customization_type: str
    ) -> dict[str, str]:
        if customization_type == REINFORCEMENT_FINE_TUNING:
            return {}
        result: dict[str, str] = {}
        for name, value in given.items():
            spec = base.hyperparameters.get(name)
            if spec is None:
                known = ", ".join(sorted(base.hyperparameters))
                raise validation(
                    f"Hyperparameter {name} is not supported for model {base.model_id} (it takes {known})."
                )
            try:
                number = float(value)
            except ValueError:
                raise validation(f"Hyperparameter {name} must be a number, got '{value}'.") from None
            if (spec.integer and not number.is_integer()) or not spec.low <= number <= spec.high or math.isnan(number):
                kind = "an integer" if spec.integer else "a number"
                raise validation(
                    f"Hyperparameter {name} must be {kind} from {spec.low:g} to {spec.high:g} "
                    f"for model {base.model_id}, got '{value}'."
                )
            result[name] = value
        for name, spec in base.hyperparameters.items():
            result.setdefault(name, spec.default)
        return result

    def create(self, prepared: CreateJob, data: bytes | S3Error, validation_data: bytes | S3Error | None) -> str:
        """Create the job for a prepared request and the data read for it; return its ARN.

        Checks the name and token again (another create may have taken them while S3 was read).
        """
        body = prepared.body
        existing = self._repeat(body)
        if existing is not None:
            return existing
        self._check_names(body)
        self._check_quota()
        now = self._clock()
        job_id = short_id(self._store.seed, "bedrock-job", self._store.new_id("bedrock-job-"))
        base = prepared.base
        failure, records, tokens = self._check_data(prepared, data, validation_data)
        tags = {tag["key"]: tag["value"] for tag in body.get("jobTags") or []}
        plan = None
        if failure is None:
            plan = plan_training(
                {"batch_size": prepared.batch_size, "n_epochs": prepared.epochs},
                records,
                tokens,
                force_failure=FORCE_FAILURE_KEY in tags,
            )
        validators = (body.get("validationDataConfig") or {}).get("validators") or []
        record: Record = {
            "id": job_id,
            "arn": self._arn("model-customization-job", f"{base.model_id}/{job_id}"),
            "name": body["jobName"],
            "model_name": body["customModelName"],
            "model_arn": self._arn("custom-model", f"{base.model_id}/{short_id(job_id, 'model')}"),
            "base": base.model_id,
            "base_arn": prepared.base_model_arn,
            "customization_type": prepared.customization_type,
            "hyperparameters": prepared.hyperparameters,
            "client_token": body.get("clientRequestToken"),
            "fingerprint": _fingerprint(body),
            "request": body,
            "created_at": now,
            "t0": now,
            "seed": self._store.random_int(f"seed:{job_id}", 2**31),
            "metadata": {FORCE_FAILURE_KEY: tags[FORCE_FAILURE_KEY]} if FORCE_FAILURE_KEY in tags else None,
            "training_file": body["trainingDataConfig"].get("s3Uri"),
            "validation_file": validators[0]["s3Uri"] if validators else None,
            "plan": plan,
            "file_error": {"message": failure, "code": "invalid_training_data", "param": None} if failure else None,
            "durations": durations(self._config.timings, self._config.speed, plan["steps"] if plan else 0),
            "stopping": self._bedrock.stopping_seconds / self._config.speed,
            "holds": [],
            "cancelled_at": None,
            "events": [],
            "outputs_written": False,
        }
        self._store.save(JOB_KIND, record)
        if failure is None and isinstance(data, bytes):
            self._store.put_blob(_data_blob(job_id), data)
        self._index(SimJob(record))
        self._counters.jobs_created += 1
        return str(record["arn"])

    def _check_data(
        self, prepared: CreateJob, data: bytes | S3Error, validation_data: bytes | S3Error | None
    ) -> tuple[str | None, int, int]:
        """The failure message a job's validation phase ends with, or the training data's counts."""
        body = prepared.body
        checks: list[tuple[str, bytes | S3Error | None]] = [(body["trainingDataConfig"]["s3Uri"], data)]
        validators = (body.get("validationDataConfig") or {}).get("validators") or []
        if validators:
            checks.append((validators[0]["s3Uri"], validation_data))
        counts: tuple[int, int] = (0, 0)
        for index, (uri, content) in enumerate(checks):
            role = "training" if index == 0 else "validation"
            if isinstance(content, S3Error) or content is None:
                return f"Validation of the {role} data failed: {content or 'no data'}.", 0, 0
            try:
                found = check_dataset(
                    content,
                    customization_type=prepared.customization_type,
                    data_format=prepared.base.data_format,
                    name=uri,
                )
            except DataError as exc:
                return f"Validation of the {role} data failed: {exc}.", 0, 0
            if index == 0:
                counts = (found.records, found.tokens)
        return None, *counts

    # -- read --------------------------------------------------------------------------------------------

    def find(self, identifier: str) -> SimJob:
        """The job an ARN or a job name names; ``ResourceNotFoundException`` otherwise."""
        job_id = self._by_name.get(identifier)
        if job_id is None and ":model-customization-job/" in identifier:
            job_id = identifier.rsplit("/", 1)[-1]
        job = self._jobs.get(job_id or "")
        if job is None or (identifier.startswith("arn:") and job.record["arn"] != identifier):
            raise not_found(f"Could not find model customization job {identifier}.")
        return job

    def by_id(self, job_id: str) -> SimJob | None:
        """The job of an id, if any."""
        return self._jobs.get(job_id)

    def describe(self, job: SimJob) -> dict[str, Any]:
        """``GetModelCustomizationJob``'s answer for a job."""
        now = self._clock()
        record = job.record
        request = record["request"]
        state = self.state(job, now)
        answer: dict[str, Any] = {
            "jobArn": record["arn"],
            "jobName": record["name"],
            "outputModelName": record["model_name"],
            "roleArn": request["roleArn"],
            "status": state.status,
            "statusDetails": state.details,
            "creationTime": iso(record["created_at"]),
            "lastModifiedTime": iso(state.modified),
            "baseModelArn": record["base_arn"],
            "hyperParameters": record["hyperparameters"],
            "trainingDataConfig": request["trainingDataConfig"],
            "validationDataConfig": request.get("validationDataConfig") or {"validators": []},
            "outputDataConfig": request["outputDataConfig"],
            "customizationType": record["customization_type"],
        }
        for source, target in (
            ("clientRequestToken", "clientRequestToken"),
            ("vpcConfig", "vpcConfig"),
            ("customizationConfig", "customizationConfig"),
        ):
            if request.get(source) is not None:
                answer[target] = request[source]
        if state.ended is not None:
            answer["endTime"] = iso(state.ended)
        if state.status == "Failed":
            answer["failureMessage"] = state.failure
        if state.status == "Completed":
            answer["outputModelArn"] = record["model_arn"]
            answer.update(self._final_metrics(job))
        return answer

    def summary(self, job: SimJob, now: float) -> dict[str, Any]:
        """A job as ``ListModelCustomizationJobs`` shows it."""
        record = job.record
        state = self.state(job, now)
        summary: dict[str, Any] = {
            "jobArn": record["arn"],
            "baseModelArn": record["base_arn"],
            "jobName": record["name"],
            "status": state.status,
            "statusDetails": state.details,
            "lastModifiedTime": iso(state.modified),
            "creationTime": iso(record["created_at"]),
            "customModelName": record["model_name"],
            "customizationType": record["customization_type"],
        }
        if state.ended is not None:
            summary["endTime"] = iso(state.ended)
        if state.status == "Completed":
            summary["customModelArn"] = record["model_arn"]
        return summary

    def list_jobs(self, query: Mapping[str, Any]) -> dict[str, Any]:
        """``ListModelCustomizationJobs``: filters, sort and pages."""
        now = self._clock()
        status = query.get("statusEquals")
        chosen = []
        for job in self._jobs.values():
            if not listed(query, job.record["created_at"], job.record["name"]):
                continue
            if status and self.state(job, now).status != status:
                continue
            chosen.append((job.record["created_at"], job.id, job))
        return list_answer(
            query,
            chosen,
            member="modelCustomizationJobSummaries",
            summary=lambda _, job: self.summary(job, now),
            what="jobs",
        )

    # -- stop --------------------------------------------------------------------------------------------

    def stop(self, identifier: str) -> None:
        """``StopModelCustomizationJob``: an ``InProgress`` job goes ``Stopping``, then ``Stopped``.

        Stopping a job that is stopping or stopped again does nothing (the operation is idempotent); a
        job that has ended otherwise cannot be stopped (``ValidationException``).
        """
        job = self.find(identifier)
        now = self._clock()
        status = job.snapshot(now).status
        if status == "cancelled":
            return
        if status not in _ACTIVE:
            state = self.state(job, now).status
            raise validation(f"The job {job.record['name']} cannot be stopped: its status is {state}, not InProgress.")
        job.cancel(now)
        self._store.save(JOB_KIND, job.record)

    # -- state -------------------------------------------------------------------------------------------

    def state(self, job: SimJob, now: float) -> JobState:
        """A job's Bedrock status, status details, times and failure at ``now``."""
        return job_state(job, now)

    def _completed(self, job: SimJob) -> bool:
        return job.snapshot(self._clock()).status == "succeeded"

    def _final_metrics(self, job: SimJob) -> dict[str, Any]:
        plan = job.record["plan"]
        last = job.metrics(plan["steps"])
        answer: dict[str, Any] = {"trainingMetrics": {"trainingLoss": last["train_loss"]}}
        if "valid_loss" in last:
            answer["validationMetrics"] = [{"validationLoss": last["valid_loss"]}]
        return answer

    # -- outputs and models ------------------------------------------------------------------------------

    def pending_outputs(self) -> list[tuple[SimJob, dict[str, bytes]]]:
        """Completed jobs whose metrics files are not yet in S3, with the files to write (URI -> bytes)."""
        now = self._clock()
        found = []
        for job in self._jobs.values():
            if not job.record["outputs_written"] and job.snapshot(now).status == "succeeded":
                found.append((job, self.output_files(job)))
        return found

    def output_files(self, job: SimJob) -> dict[str, bytes]:
        """A completed job's metrics files, by S3 URI, as Bedrock writes them."""
        record = job.record
        plan = record["plan"]
        root = record["request"]["outputDataConfig"]["s3Uri"].rstrip("/") + f"/model-customization-job-{job.id}"
        training = ["step_number,epoch_number,training_loss"]
        validation_rows = ["step_number,epoch_number,validation_loss,perplexity"]
        per_epoch = max(1, plan["steps_per_epoch"])
        for step in range(1, plan["steps"] + 1):
            values = job.metrics(step)
            epoch = (step - 1) // per_epoch
            training.append(f"{step},{epoch},{values['train_loss']}")
            if "valid_loss" in values and step % per_epoch == 0:
                loss = values["valid_loss"]
                validation_rows.append(f"{step},{epoch},{loss},{round(math.exp(loss), 4)}")
        files = {f"{root}/training_artifacts/step_wise_training_metrics.csv": ("\n".join(training) + "\n").encode()}
        if record["validation_file"]:
            path = f"{root}/validation_artifacts/post_fine_tuning_validation/validation/validation_metrics.csv"
            files[path] = ("\n".join(validation_rows) + "\n").encode()
        return files

    def outputs_written(self, job: SimJob) -> None:
        """Note that a job's metrics files have been written (or tried)."""
        job.record["outputs_written"] = True
        self._store.save(JOB_KIND, job.record)

    def find_model(self, identifier: str) -> SimJob:
        """The completed job whose custom model an ARN or name names; ``ResourceNotFoundException`` otherwise."""
        named = self._models.get(identifier, [])
        job_id = next((job_id for job_id in named if self._completed(self._jobs[job_id])), None)
        if job_id is None:
            job_id = next((job.id for job in self._jobs.values() if job.record["model_arn"] == identifier), None)
        job = self._jobs.get(job_id or "")
        if job is None or not self._completed(job):
            raise not_found(f"Could not find model {identifier}.")
        return job

    def describe_model(self, job: SimJob) -> dict[str, Any]:
        """``GetCustomModel``'s answer."""
        record = job.record
        request = record["request"]
        finished = job.snapshot(self._clock()).finished_at or record["created_at"]
        answer: dict[str, Any] = {
            "modelArn": record["model_arn"],
            "modelName": record["model_name"],
            "jobName": record["name"],
            "jobArn": record["arn"],
            "baseModelArn": record["base_arn"],
            "customizationType": record["customization_type"],
            "hyperParameters": record["hyperparameters"],
            "trainingDataConfig": request["trainingDataConfig"],
            "validationDataConfig": request.get("validationDataConfig") or {"validators": []},
            "outputDataConfig": request["outputDataConfig"],
            "creationTime": iso(finished),
            "modelStatus": "Active",
            **self._final_metrics(job),
        }
        if request.get("customizationConfig") is not None:
            answer["customizationConfig"] = request["customizationConfig"]
        return answer

    def list_models(self, query: Mapping[str, Any]) -> dict[str, Any]:
        """``ListCustomModels``: the custom models of completed jobs, filtered, sorted and paged."""
        now = self._clock()
        chosen = []
        for job in self._jobs.values():
            snapshot = job.snapshot(now)
            if snapshot.status != "succeeded":
                continue
            created = snapshot.finished_at or job.record["created_at"]
            record = job.record
            equal = {
                "baseModelArnEquals": record["base_arn"],
                "foundationModelArnEquals": record["base_arn"],
                "modelStatus": "Active",
            }
            if listed(query, created, record["model_name"], equal=equal):
                chosen.append((created, job.id, job))
        return list_answer(query, chosen, member="modelSummaries", summary=self._model_summary, what="models")

    def _model_summary(self, created: float, job: SimJob) -> dict[str, Any]:
        return {
            "modelArn": job.record["model_arn"],
            "modelName": job.record["model_name"],
            "creationTime": iso(created),
            "baseModelArn": job.record["base_arn"],
            "baseModelName": job.record["base"].split(":")[0],
            "customizationType": job.record["customization_type"],
            "ownerAccountId": self._bedrock.account_id,
            "modelStatus": "Active",
        }

    def training_data(self, job: SimJob) -> bytes:
        """The training data a job was created with (a deployed model answers from it)."""
        return self._store.get_blob(_data_blob(job.id)) or b""


@dataclass(frozen=True)
class JobState:
    """A job as Bedrock reports it at one moment.

    :param status: ``InProgress``, ``Completed``, ``Failed``, ``Stopping`` or ``Stopped``.
    :param details: ``statusDetails``: validation, data processing and training, each with its status and times.
    :param modified: ``lastModifiedTime``.
    :param ended: ``endTime``, once the job has ended.
    :param failure: ``failureMessage`` of a failed job.
    """

    status: str
    details: dict[str, Any]
    modified: float
    ended: float | None
    failure: str | None


def job_state(job: SimJob, now: float) -> JobState:
    """A job's Bedrock status at ``now``, from the trainer's snapshot."""
    record = job.record
    snapshot = job.snapshot(now)
    spans = record["durations"]
    created = float(record["t0"])
    validated = job.time_at(spans["validating"])
    started = job.time_at(spans["validating"] + spans["queued"])
    # (status, creationTime, lastModifiedTime) of each phase; a phase that has not started is NotStarted.
    phases: list[list[Any]] = [["InProgress", created, created], ["NotStarted", None, None], ["NotStarted", None, None]]
    trainer = snapshot.status
    cancelled_at = record.get("cancelled_at")
    moment = now if cancelled_at is None else min(now, float(cancelled_at))
    if moment + 1e-6 >= validated and record["plan"] is not None:
        phases[0] = ["Completed", created, validated]
        phases[1] = ["InProgress", validated, validated]
    if moment + 1e-6 >= started and record["plan"] is not None:
        phases[1] = ["Completed", validated, started]
        phases[2] = ["InProgress", started, started]
    failure = None
    ended: float | None = None
    status = "InProgress"
    if trainer == "succeeded":
        ended = float(snapshot.finished_at or now)
        phases[2] = ["Completed", started, ended]
        status = "Completed"
    elif trainer == "failed":
        ended = float(snapshot.finished_at or now)
        failure = str((snapshot.error or {}).get("message") or "The job failed.")
        index = 0 if record["plan"] is None else 2
        phases[index] = ["Failed", phases[index][1] or created, ended]
        status = "Failed"
    elif trainer == "cancelled":
        assert cancelled_at is not None
        stopped_at = float(cancelled_at) + float(record.get("stopping", 0.0))
        stopping = now < stopped_at
        status = "Stopping" if stopping else "Stopped"
        ended = None if stopping else stopped_at
        for phase in phases:
            if phase[0] == "InProgress":
                phase[0] = status
                phase[2] = float(cancelled_at) if stopping else stopped_at
    names = ("validationDetails", "dataProcessingDetails", "trainingDetails")
    details: dict[str, Any] = {}
    modified = created
    for name, (phase_status, phase_created, phase_modified) in zip(names, phases, strict=True):
        item: dict[str, Any] = {"status": phase_status}
        if phase_created is not None:
            item["creationTime"] = iso(phase_created)
            item["lastModifiedTime"] = iso(phase_modified)
            modified = max(modified, phase_modified)
        details[name] = item
    return JobState(status, details, modified, ended, failure)


def _fingerprint(body: Mapping[str, Any]) -> str:
    return token(json.dumps({key: value for key, value in body.items() if key != "clientRequestToken"}, sort_keys=True))


def _data_blob(job_id: str) -> str:
    return f"bedrock-training-data/{job_id}"
