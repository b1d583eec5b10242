"""Fine-tuning jobs over the simulated trainer.

Create, list (after, limit, metadata filter), retrieve, pause, resume, cancel, events and checkpoints; and
delete, which only Azure's authoring surface has.

Creating a job checks the request the way the service does at once (the body against the request model,
the base model and method, the files' existence and purpose) and reads the files' contents then, but
reveals a content problem only when the job's validation phase ends: the job goes ``failed`` with an
``invalid_training_file`` (or ``invalid_validation_file``) error whose message names the line and reason.
"""

from __future__ import annotations

import io
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from typing import Any

from airflow_provider_finetune.emulator.catalog import BaseModelInfo, find_base_model
from airflow_provider_finetune.emulator.config import EmulatorConfig
from airflow_provider_finetune.emulator.counters import Counters
from airflow_provider_finetune.emulator.errors import APIError, conflict, invalid_request, not_found
from airflow_provider_finetune.emulator.files import FileService
from airflow_provider_finetune.emulator.graders import check_grader
from airflow_provider_finetune.emulator.params import cursor_page, newest_first_page, parse_body, parse_limit
from airflow_provider_finetune.emulator.store import Record, Store, token
from airflow_provider_finetune.emulator.trainer import (
    FORCE_FAILURE_KEY,
    TERMINAL,
    SimJob,
    durations,
    plan_training,
    requested_hyperparameters,
    resolve_hyperparameters,
)
from airflow_provider_finetune.models import CreateFineTuningJobRequest
from airflow_provider_finetune.training_data import TrainingDataError, validate_file

__all__ = ["MIN_TRAINING_EXAMPLES", "JobService"]

#: Fewest examples a training file must hold.
MIN_TRAINING_EXAMPLES = 10
#: Fewest examples a validation file must hold.
MIN_VALIDATION_EXAMPLES = 1
_MAX_PAGE = 100
_NO_METADATA = ("", "\x00no-metadata")

# What a file check found: (examples, tokens, format) or an error object.
_FileCheck = tuple[int, int, str] | dict[str, Any]


class JobService:
    """The jobs of the emulator and their indexes (by id, by creation order, by metadata pair, by model).

    :param store: where job records are kept.
    :param files: the files jobs train on (and where results files go).
    :param config: speed, timings, organization and clock.
    :param counters: counts the jobs created.
    """

    def __init__(self, store: Store, files: FileService, config: EmulatorConfig, counters: Counters) -> None:
        self._store = store
        self._files = files
        self._config = config
        self._clock = config.clock
        self._counters = counters
        self._jobs: dict[str, SimJob] = {}
        self._order: list[str] = []
        self._positions: dict[str, int] = {}
        self._by_metadata: dict[tuple[str, str], list[int]] = {}
        self._models: dict[str, tuple[str, int | None]] = {}
        # File checks by (file id, method, role, legacy): files never change, so neither does the verdict.
        self._checked: dict[tuple[str, str, str, bool], _FileCheck] = {}
        #: The service's quotas and reported costs (changed at run time through ``/_emulator/faults``).
        self.faults = config.faults
        for record in store.records("job").values():
            self._index(SimJob(record))

    # -- indexes -----------------------------------------------------------------------------------------

    def _index(self, job: SimJob) -> None:
        position = len(self._order)
        self._jobs[job.id] = job
        self._order.append(job.id)
        self._positions[job.id] = position
        metadata = job.record.get("metadata") or {}
        for pair in metadata.items() if metadata else [_NO_METADATA]:
            self._by_metadata.setdefault(pair, []).append(position)
        plan = job.record["plan"]
        if plan is not None:
            if plan["fail_step"] is None:
                self._models[job.fine_tuned_model()] = (job.id, None)
            for step in plan["checkpoint_steps"]:
                self._models[job.checkpoint_model(step)] = (job.id, step)

    def get(self, job_id: str) -> SimJob:
        """Return a job, or raise 404."""
        job = self._jobs.get(job_id)
        if job is None:
            raise not_found(
                f"Could not find fine-tuning job: {job_id}", param="fine_tuning_job_id", code="fine_tune_not_found"
            )
        return job

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[SimJob]:
        return iter(self._jobs.values())

    def find_model(self, name: str) -> tuple[SimJob, int | None] | None:
        """Return the job (and checkpoint step) that made a model, if the model exists now."""
        entry = self._models.get(name)
        if entry is None:
            return None
        job = self._jobs[entry[0]]
        now = self._clock()
        step = entry[1]
        if step is None:
            return (job, None) if job.snapshot(now).status == "succeeded" else None
        return (job, step) if step in job.checkpoint_steps(now) else None

    # -- create ------------------------------------------------------------------------------------------

    def create(self, body: Any, *, dialect: str = "openai") -> dict[str, Any]:
        """Create a job (``POST /fine_tuning/jobs``) and return it.

        :param dialect: whose quotas and words apply: ``openai`` or ``azure``.
        """
        request = parse_body(CreateFineTuningJobRequest, body)
        method_type = request.method.type if request.method else "supervised"
        base = self._base_model(request.model, method_type)
        self._check_quota(request.model if base is None else base.id, dialect)
        training = self._file(request.training_file, "training_file")
        validation = self._file(request.validation_file, "validation_file") if request.validation_file else None
        block = getattr(request.method, method_type, None) if request.method else None
        grader = None
        if method_type == "reinforcement" and block is not None:
            check_grader(block.grader, param="method.reinforcement.grader")
            grader = block.grader.to_body()

        # The request is accepted: from here on nothing refuses it (a bad file fails the job later).
        now = self._clock()
        job_id = self._store.new_id("ftjob-")
        metadata = dict(request.metadata) if request.metadata else None
        file_error, examples, tokens = self._check_contents(training, validation, method_type, base)
        given = block.hyperparameters.to_body() if block is not None and block.hyperparameters else None
        requested = requested_hyperparameters(method_type, given)
        plan = resolved = None
        if file_error is None:
            resolved = resolve_hyperparameters(requested, examples)
            plan = plan_training(
                resolved, examples, tokens, force_failure=bool(metadata and FORCE_FAILURE_KEY in metadata)
            )
        record: Record = {
            "id": job_id,
            "created_at": int(now),
            "t0": now,
            "model": request.model if base is None else base.id,
            "organization_id": self._config.organization,
            "organization_name": self._config.organization_name,
            "training_file": request.training_file,
            "validation_file": request.validation_file,
            "suffix": request.suffix,
            "seed": request.seed if request.seed is not None else self._store.random_int(f"seed:{job_id}", 2**31),
            "metadata": metadata,
            "integrations": [self._integration(item.to_body(), job_id) for item in request.integrations or []],
            "method_type": method_type,
            "requested_hyperparameters": requested,
            "hyperparameters": resolved,
            "grader": grader,
            "plan": plan,
            "file_error": file_error,
            "durations": durations(self._config.timings, self._config.speed, plan["steps"] if plan else 0),
            "holds": [],
            "cancelled_at": None,
            "events": [],
            "result_file": None,
        }
        self._store.save("job", record)
        job = SimJob(record)
        self._index(job)
        self._counters.jobs_created += 1
        return self.render(job, now)

    def _check_quota(self, model: str, dialect: str) -> None:
        """Refuse a create the service's quotas do not allow, in the service's words (a 429 each)."""
        faults = self.faults
        if faults.refuse_fine_tuning and dialect == "openai":
            raise APIError(
                429,
                "You exceeded your current quota, please check your plan and billing details. For more "
                "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
                error_type="insufficient_quota",
                code="insufficient_quota",
            )
        now = self._clock()
        if faults.max_active_jobs:
            per_model = dialect == "openai"
            statuses = [
                job.snapshot(now).status for job in self._jobs.values() if not per_model or job.record["model"] == model
            ]
            active = [status for status in statuses if status not in TERMINAL]
            if len(active) >= faults.max_active_jobs:
                running = sum(1 for status in active if status == "running")
                if per_model:
                    raise APIError(
                        429,
                        "This fine-tune request has been rate-limited. Your organization has reached the maximum "
                        f"of {faults.max_active_jobs} active requests ({running} running, {len(active) - running} "
                        f"pending) for the model '{model}'.",
                        code="rate_limit_exceeded",
                    )
                raise APIError(
                    429,
                    f"Quota exceeded: this resource has {len(active)} fine-tuning jobs running or queued, the most "
                    "its quota allows. Try again when one of them has finished, or cancel one.",
                    code="quotaExceeded",
                )
        if faults.max_daily_jobs and dialect == "openai":
            since = now - 86_400
            made = sum(1 for job in self._jobs.values() if job.record["model"] == model and job.record["t0"] >= since)
            if made >= faults.max_daily_jobs:
                raise APIError(
                    429,
                    "This fine-tune request has been rate-limited. Your organization has reached the maximum of "
                    f"{faults.max_daily_jobs} fine-tuning requests per day for the model '{model}'.",
                    code="daily_rate_limit_exceeded",
                )

    def _base_model(self, name: str, method_type: str) -> BaseModelInfo | None:
        """The base model of a request (``None`` when continuing from a fine-tuned model)."""
        base = find_base_model(name)
        if base is None and name.startswith("ft:"):
            found = self.find_model(name)
            if found is not None:
                base = find_base_model(str(found[0].record["model"]))
                if base is not None and method_type in base.methods:
                    return None
        if base is None:
            raise invalid_request(
                f"Model {name} is not available for fine-tuning or does not exist.",
                param="model",
                code="model_not_available",
            )
        if method_type not in base.methods:
            raise invalid_request(
                f"Fine-tuning method {method_type!r} is not supported for model {base.id} "
                f"(it supports {', '.join(base.methods)})",
                param="method.type",
                code="unsupported_method",
            )
        return base

    def _file(self, file_id: str, param: str) -> Record:
        record = self._files.find(file_id)
        if record is None:
            raise invalid_request(f"invalid {param}: {file_id} (no such file)", param=param, code=f"invalid_{param}")
        if record["purpose"] != "fine-tune":
            raise invalid_request(
                f"invalid {param}: {file_id} has purpose {record['purpose']!r}; fine-tuning needs 'fine-tune'",
                param=param,
                code=f"invalid_{param}",
            )
        return record

    def _check_contents(
        self, training: Record, validation: Record | None, method_type: str, base: BaseModelInfo | None
    ) -> tuple[dict[str, Any] | None, int, int]:
        """Check the files' contents; return the first file's error, or the training file's counts."""
        legacy = bool(base and base.legacy)
        found = self._check_file(training, method_type, "training_file", legacy)
        if isinstance(found, dict):
            return found, 0, 0
        if validation is not None:
            verdict = self._check_file(validation, method_type, "validation_file", legacy)
            if isinstance(verdict, dict):
                return verdict, 0, 0
        return None, found[0], found[1]

    def _check_file(self, record: Record, method_type: str, field: str, legacy: bool) -> _FileCheck:
        key = (record["id"], method_type, field, legacy)
        if key not in self._checked:
            self._checked[key] = self._check_file_now(record, method_type, field, legacy)
        return self._checked[key]

    def _check_file_now(self, record: Record, method_type: str, field: str, legacy: bool) -> _FileCheck:
        role = field.removesuffix("_file")
        code = f"invalid_{field}"
        prefix = f"The job failed due to an invalid {role} file. "
        try:
            report = validate_file(
                io.BytesIO(self._files.content(record["id"])),
                method=method_type,  # type: ignore[arg-type]
                min_examples=MIN_TRAINING_EXAMPLES if role == "training" else MIN_VALIDATION_EXAMPLES,
                name=f"{role} file {record['id']} ({record['filename']})",
                field=field,
            )
        except TrainingDataError as exc:
            return {"code": code, "message": prefix + exc.message, "param": field}
        if legacy and report.format != "prompt_completion":
            message = f"this model trains on prompt-completion examples, but the file holds {report.format} examples"
            return {"code": code, "message": prefix + message, "param": field}
        if not legacy and report.format == "prompt_completion":
            message = (
                'this model trains on chat examples ({"messages": [...]}), '
                "but the file holds prompt-completion examples"
            )
            return {"code": code, "message": prefix + message, "param": field}
        return report.examples, report.tokens, report.format

    @staticmethod
    def _integration(item: dict[str, Any], job_id: str) -> dict[str, Any]:
        wandb = dict(item.get("wandb") or {})
        wandb.setdefault("name", None)
        wandb.setdefault("entity", None)
        wandb.setdefault("tags", [])
        wandb["run_id"] = job_id
        return {"type": "wandb", "wandb": wandb}

    # -- read --------------------------------------------------------------------------------------------

    def retrieve(self, job_id: str) -> dict[str, Any]:
        """Return a job (``GET /fine_tuning/jobs/{id}``)."""
        return self.render(self.get(job_id), self._clock())

    def list(self, *, after: str | None, limit: str | None, metadata: Mapping[str, str] | None) -> dict[str, Any]:
        """One page of jobs, newest first, optionally only those whose metadata has every given pair.

        :param metadata: the pairs to filter by; an empty mapping selects jobs without metadata.
        """
        size = parse_limit(limit, default=20, maximum=_MAX_PAGE)
        if metadata is None:
            positions: list[int] | range = range(len(self._order))
            others: list[tuple[str, str]] = []
        else:
            pairs = list(metadata.items()) or [_NO_METADATA]
            # Walk the shortest index; check the other pairs on each job found.
            chosen = min(pairs, key=lambda pair: len(self._by_metadata.get(pair, [])))
            positions = self._by_metadata.get(chosen, [])
            others = [pair for pair in pairs if pair != chosen]
        end = len(positions)
        if after:
            position = self._positions.get(after)
            if position is None:
                raise invalid_request(f"No such fine-tuning job: {after}", param="after")
            end = bisect_left(positions, position)
        now = self._clock()
        data: list[dict[str, Any]] = []
        has_more = False
        for index in range(end - 1, -1, -1):
            found = self._jobs.get(self._order[positions[index]])
            if found is None:  # deleted: its id stays in the order as a tombstone
                continue
            job = found
            job_metadata = job.record.get("metadata") or {}
            if any(job_metadata.get(key) != value for key, value in others):
                continue
            if len(data) == size:
                has_more = True
                break
            data.append(self.render(job, now))
        return {"object": "list", "data": data, "has_more": has_more}

    def delete(self, job_id: str) -> None:
        """Delete a job that has ended (``DELETE /fine_tuning/jobs/{id}``, Azure authoring only).

        A job that has not ended is a conflict: the emulator asks for a cancel first rather than stopping a
        job as a side effect of a delete. Its models (fine-tuned and checkpoints) go with it.
        """
        job = self.get(job_id)
        status = job.snapshot(self._clock()).status
        if status not in TERMINAL:
            raise conflict(f"Job {job_id} cannot be deleted: its status is {status!r}; cancel it first")
        del self._jobs[job_id]
        # Its id stays in `_order` (positions of later jobs and the metadata index stay valid); listing skips it.
        self._positions.pop(job_id, None)
        for name in [name for name, (owner, _) in self._models.items() if owner == job_id]:
            del self._models[name]
        self._store.delete("job", job_id)

    # -- transitions -------------------------------------------------------------------------------------

    def pause(self, job_id: str) -> dict[str, Any]:
        """Pause a job (``POST /fine_tuning/jobs/{id}/pause``)."""
        return self._transition(job_id, "pause")

    def resume(self, job_id: str) -> dict[str, Any]:
        """Resume a paused job (``POST /fine_tuning/jobs/{id}/resume``)."""
        return self._transition(job_id, "resume")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job that has not ended (``POST /fine_tuning/jobs/{id}/cancel``)."""
        return self._transition(job_id, "cancel")

    def _transition(self, job_id: str, action: str) -> dict[str, Any]:
        job = self.get(job_id)
        now = self._clock()
        getattr(job, action)(now)
        self._store.save("job", job.record)
        return self.render(job, now)

    # -- events and checkpoints --------------------------------------------------------------------------

    def events(self, job_id: str, *, after: str | None, limit: str | None) -> dict[str, Any]:
        """One page of a job's events, newest first (``GET /fine_tuning/jobs/{id}/events``)."""
        job = self.get(job_id)
        size = parse_limit(limit, default=20, maximum=_MAX_PAGE)
        rows = job.event_rows(self._clock())
        page, has_more = newest_first_page(rows, key=lambda row: row.event_id, after=after, limit=size, what="event")
        return {"object": "list", "data": [job.render_event(row) for row in page], "has_more": has_more}

    def checkpoints(self, job_id: str, *, after: str | None, limit: str | None) -> dict[str, Any]:
        """One page of a job's checkpoints, newest first (``GET /fine_tuning/jobs/{id}/checkpoints``)."""
        job = self.get(job_id)
        size = parse_limit(limit, default=10, maximum=_MAX_PAGE)
        steps = job.checkpoint_steps(self._clock())
        page, has_more = newest_first_page(steps, key=job.checkpoint_id, after=after, limit=size, what="checkpoint")
        return cursor_page([job.render_checkpoint(step) for step in page], has_more=has_more)

    # -- rendering ---------------------------------------------------------------------------------------

    def render(self, job: SimJob, now: float) -> dict[str, Any]:
        """The API object of a job at ``now`` (``fine_tuning.job``); a success makes its results file."""
        record = job.record
        snap = job.snapshot(now)
        validated = record["plan"] is not None and job.active(now) + 1e-6 >= record["durations"]["validating"]
        hyperparameters = record["hyperparameters"] if validated else record["requested_hyperparameters"]
        method_type = record["method_type"]
        block: dict[str, Any] = {"hyperparameters": hyperparameters}
        if method_type == "reinforcement":
            block = {"grader": record["grader"], "hyperparameters": hyperparameters, "response_format": None}
        succeeded = snap.status == "succeeded"
        if succeeded and record["result_file"] is None:
            self._write_results(job, snap.finished_at or now)
        plan = record["plan"]
        rendered = {
            "object": "fine_tuning.job",
            "id": job.id,
            "model": record["model"],
            "created_at": record["created_at"],
            "finished_at": int(snap.finished_at) if snap.finished_at is not None else None,
            "fine_tuned_model": job.fine_tuned_model() if succeeded else None,
            "organization_id": record["organization_id"],
            "result_files": [record["result_file"]] if succeeded else [],
            "status": snap.status,
            "validation_file": record["validation_file"],
            "training_file": record["training_file"],
            "hyperparameters": {
                key: hyperparameters[key] for key in ("batch_size", "learning_rate_multiplier", "n_epochs")
            },
            "trained_tokens": plan["tokens"] * hyperparameters["n_epochs"] if succeeded else None,
            "error": snap.error,
            "seed": record["seed"],
            "estimated_finish": int(snap.estimated_finish) if snap.estimated_finish is not None else None,
            "integrations": record["integrations"],
            "method": {"type": method_type, method_type: block},
            "metadata": record["metadata"],
            "user_provided_suffix": record["suffix"],
        }
        if self.faults.reported_price:
            rendered["total_price"] = self._cost_so_far(record, snap.steps_done)
        return rendered

    def _cost_so_far(self, record: Record, steps_done: int) -> float:
        """What the job has cost so far, in US dollars: the tokens of the steps trained, at the reported price."""
        plan = record["plan"]
        if plan is None or not plan["steps"]:
            return 0.0
        trained = (
            plan["tokens"] * record["hyperparameters"]["n_epochs"] * min(steps_done, plan["steps"]) / plan["steps"]
        )
        return round(trained * self.faults.reported_price / 1_000_000, 6)

    def _write_results(self, job: SimJob, finished_at: float) -> None:
        file_record = self._files.create(
            filename="step_metrics.csv",
            purpose="fine-tune-results",
            data=job.results_csv(),
            file_id="file-" + token(job.id, "results"),
            created_at=finished_at,
        )
        job.record["result_file"] = file_record["id"]
        self._store.save("job", job.record)
