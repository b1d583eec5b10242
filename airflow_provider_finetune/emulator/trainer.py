"""The simulated trainer: a fine-tuning job's progress as a pure function of time.

Nothing runs in the background. A job record holds what was decided when it was created (the file
validation's outcome, the resolved hyperparameters, the step count, the phase durations) and what people
did to it since (pauses, resumes, a cancel). Its status, events, metrics, checkpoints and
``estimated_finish`` are derived from that record and the clock whenever a request looks at the job.
That keeps the emulator deterministic (same seed, same answers), restart-safe (a restarted emulator
derives the same state from the same record, and time spent down counts as training) and cheap with
thousands of jobs.

Time, in seconds of wall clock:

* ``t0`` is when the job was created;
* a *hold* is an interval when the job does not progress: ``paused`` (from a pause to its resume) or
  ``queued`` (a short wait after a resume, as the service re-queues a resumed job);
* the job's *active time* is the time since ``t0`` outside holds; its phases are fixed spans of active
  time: ``validating_files``, then ``queued``, then ``running`` (one span per step), then ``succeeded``.
  A bad file ends the job ``failed`` at the end of validation; a forced failure (metadata
  ``emulator_force_failure``) ends it ``failed`` half-way through training; a cancel ends it at once.

A job whose metadata holds ``emulator_overfit_after`` (a share of training, e.g. ``"0.3"``) overfits from
that point on: its training loss still falls, but its validation loss jumps above anything it reached before
and keeps rising, so that it never improves again (what early stopping is for).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_finetune.emulator.config import Timings
from airflow_provider_finetune.emulator.errors import conflict
from airflow_provider_finetune.emulator.store import Record, token
from airflow_provider_finetune.rules.budget import auto_epochs as auto_n_epochs

__all__ = [
    "FORCE_FAILURE_KEY",
    "OVERFIT_KEY",
    "TERMINAL",
    "EventRow",
    "SimJob",
    "Snapshot",
    "auto_batch_size",
    "auto_n_epochs",
    "durations",
    "overfit_point",
    "plan_training",
    "requested_hyperparameters",
    "resolve_hyperparameters",
]

#: Metadata key that makes a job fail half-way through training, with the key's value as error code.
FORCE_FAILURE_KEY = "emulator_force_failure"
#: Metadata key whose value (a share of training in (0, 1), e.g. ``"0.3"``) makes the validation loss stop
#: improving from that point of training on.
OVERFIT_KEY = "emulator_overfit_after"
#: Statuses a job never leaves.
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

#: Learning rate multiplier ``auto`` resolves to.
AUTO_LEARNING_RATE_MULTIPLIER = 1.8
#: DPO ``beta`` ``auto`` resolves to.
AUTO_BETA = 0.1
#: At most this many ``metrics`` events per job; longer jobs report every few steps.
MAX_METRICS_EVENTS = 100
#: Checkpoints are kept for the last this many epochs, as the service does.
CHECKPOINT_EPOCHS = 3

# Comparisons of float times tolerate this much, so that a clock moved to a phase's exact end sees it.
_EPS = 1e-6
_MASK = (1 << 64) - 1

_COMMON_HYPERPARAMETERS = ("batch_size", "learning_rate_multiplier", "n_epochs")
_METHOD_HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "supervised": _COMMON_HYPERPARAMETERS,
    "dpo": ("beta", *_COMMON_HYPERPARAMETERS),
    "reinforcement": (
        *_COMMON_HYPERPARAMETERS,
        "eval_interval",
        "eval_samples",
        "compute_multiplier",
        "reasoning_effort",
    ),
}


# ---------------------------------------------------------------------------------------------------------
# Hyperparameters and plan, decided when the job is created.
# ---------------------------------------------------------------------------------------------------------


def auto_batch_size(examples: int) -> int:
    """Batch size ``batch_size: "auto"`` resolves to: about 0.2% of the examples, from 1 to 256."""
    return max(1, min(256, round(examples * 0.002)))


def requested_hyperparameters(method_type: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The hyperparameters of a method as the job reports them before its files are validated.

    :param method_type: ``supervised``, ``dpo`` or ``reinforcement``.
    :param given: what the request set; the rest is ``"auto"`` (``reasoning_effort``: ``"default"``).
    """
    given = given or {}
    result: dict[str, Any] = {}
    for name in _METHOD_HYPERPARAMETERS[method_type]:
        value = given.get(name)
        result[name] = value if value is not None else ("default" if name == "reasoning_effort" else "auto")
    return result


def resolve_hyperparameters(requested: Mapping[str, Any], examples: int) -> dict[str, Any]:
    """Replace every ``"auto"`` by the value the trainer uses, for a file of ``examples`` examples."""
    resolved = dict(requested)
    batch_size = resolved.get("batch_size")
    if batch_size == "auto":
        batch_size = resolved["batch_size"] = auto_batch_size(examples)
    if resolved.get("n_epochs") == "auto":
        resolved["n_epochs"] = auto_n_epochs(examples)
    if resolved.get("learning_rate_multiplier") == "auto":
        resolved["learning_rate_multiplier"] = AUTO_LEARNING_RATE_MULTIPLIER
    if resolved.get("beta") == "auto":
        resolved["beta"] = AUTO_BETA
    if resolved.get("compute_multiplier") == "auto":
        resolved["compute_multiplier"] = 1.0
    if resolved.get("eval_samples") == "auto":
        resolved["eval_samples"] = 1
    if resolved.get("eval_interval") == "auto":
        per_epoch = math.ceil(examples / int(batch_size or 1))
        resolved["eval_interval"] = max(1, per_epoch * int(resolved["n_epochs"]) // 10)
    return resolved


def plan_training(
    hyperparameters: Mapping[str, Any], examples: int, tokens: int, *, force_failure: bool
) -> dict[str, Any]:
    """Return the step plan of a job whose files are valid.

    steps = ceil(examples / batch_size) * n_epochs; checkpoints at the ends of the last three epochs;
    a forced failure half-way.
    """
    batch_size = int(hyperparameters["batch_size"])
    n_epochs = int(hyperparameters["n_epochs"])
    per_epoch = math.ceil(examples / batch_size)
    steps = per_epoch * n_epochs
    first = max(1, n_epochs - CHECKPOINT_EPOCHS + 1)
    fail_step = max(1, steps // 2) if force_failure else None
    checkpoints = [epoch * per_epoch for epoch in range(first, n_epochs + 1)]
    if fail_step is not None:
        checkpoints = [step for step in checkpoints if step < fail_step]
    return {
        "examples": examples,
        "tokens": tokens,
        "steps_per_epoch": per_epoch,
        "steps": steps,
        "checkpoint_steps": checkpoints,
        "fail_step": fail_step,
    }


def durations(timings: Timings, speed: float, steps: int) -> dict[str, float]:
    """Wall-clock durations of a job's phases, for its step count and the emulator's speed."""
    running = min(max(steps * timings.step, timings.min_running), timings.max_running) if steps else 0.0
    return {
        "validating": timings.validating / speed,
        "queued": timings.queued / speed,
        "running": running / speed,
        "requeue": timings.requeue / speed,
    }


# ---------------------------------------------------------------------------------------------------------
# Deterministic noise for metrics.
# ---------------------------------------------------------------------------------------------------------


def _mix(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def _unit(seed: int, step: int, salt: int) -> float:
    """A number in [0, 1) fixed by (seed, step, salt)."""
    return _mix(_mix(seed * 1_000_003 + salt) ^ step) / 2.0**64


def metrics_at(
    seed: int, step: int, steps: int, *, validation: bool, overfit_after: float | None = None
) -> dict[str, float]:
    """Training metrics at a step: losses that fall and accuracies that rise, with seeded noise.

    With ``overfit_after`` (a share of training), the validation loss past that point is above every value
    it took before (its noise is at most 0.05 either side of its curve; the jump is 0.1) and rises.
    """
    start = 1.4 + 1.2 * _unit(seed, 0, 1)
    floor = 0.08 + 0.3 * _unit(seed, 0, 2)
    progress = step / max(steps, 1)
    train_loss = floor + (start - floor) * math.exp(-4.0 * progress) + 0.12 * (_unit(seed, step, 3) - 0.5)
    train_loss = max(0.001, train_loss)
    result = {
        "step": step,
        "train_loss": round(train_loss, 4),
        "train_mean_token_accuracy": round(_clamp(1 - train_loss / 3 + 0.04 * (_unit(seed, step, 4) - 0.5)), 4),
    }
    if validation:
        valid_loss = floor * 1.15 + (start - floor) * math.exp(-3.5 * progress) + 0.1 * (_unit(seed, step, 5) - 0.5)
        if overfit_after is not None and progress > overfit_after:
            turn = floor * 1.15 + (start - floor) * math.exp(-3.5 * overfit_after)
            valid_loss = turn + 0.1 + 1.5 * (progress - overfit_after) + 0.05 * _unit(seed, step, 5)
        valid_loss = max(0.001, valid_loss)
        result["valid_loss"] = round(valid_loss, 4)
        result["valid_mean_token_accuracy"] = round(_clamp(1 - valid_loss / 3 + 0.04 * (_unit(seed, step, 6) - 0.5)), 4)
    return result


def overfit_point(metadata: Mapping[str, Any] | None) -> float | None:
    """The share of training after which the job overfits (metadata :data:`OVERFIT_KEY`), if it is one in (0, 1)."""
    raw = (metadata or {}).get(OVERFIT_KEY)
    try:
        point = float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
    return point if point is not None and 0.0 < point < 1.0 else None


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


# ---------------------------------------------------------------------------------------------------------
# A job in time.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A job's state at one moment.

    :param status: the job's status.
    :param steps_done: training steps completed.
    :param finished_at: when it ended, for a terminal job.
    :param estimated_finish: when it should succeed, while it is queued or running.
    :param error: the job's error, for a failed job.
    """

    status: str
    steps_done: int
    finished_at: float | None
    estimated_finish: float | None
    error: dict[str, Any] | None


@dataclass(frozen=True)
class EventRow:
    """A job event before it is rendered: when it happened and what it is.

    :param time: when it happened (wall clock).
    :param order: tie-breaker among events of the same time.
    :param event_id: the event's id.
    :param kind: what happened (``created``, ``metrics``, ``checkpoint``, ``paused``...).
    :param step: the step of a ``metrics`` or ``checkpoint`` event.
    :param level: ``info`` or ``error``.
    :param message: the message of an event people caused (pause, resume, cancel).
    """

    time: float
    order: tuple[int, int]
    event_id: str
    kind: str
    step: int = 0
    level: str = "info"
    message: str = ""


class SimJob:
    """A job record with everything derived from it; the record is the only state.

    The record's fields: ``id``, ``t0``, ``durations`` (wall-clock seconds of each phase), ``plan``
    (:func:`plan_training`, or ``None`` when a file was refused), ``file_error`` (the refusal),
    ``holds`` (``[start, end or None, status]``), ``cancelled_at``, ``events`` (events people caused:
    ``[time, level, message]``), and the request's fields.

    :param record: the job's record; :meth:`pause`, :meth:`resume` and :meth:`cancel` change it in place
        (the caller saves it).
    """

    __slots__ = ("_static", "record")

    def __init__(self, record: Record) -> None:
        self.record = record
        self._static: list[tuple[float, str, int]] | None = None

    @property
    def id(self) -> str:
        """The job's id."""
        return str(self.record["id"])

    # -- time --------------------------------------------------------------------------------------------

    def active(self, now: float) -> float:
        """Seconds the job has progressed by ``now``: time since creation outside holds."""
        t0 = self.record["t0"]
        if now <= t0:
            return 0.0
        held = 0.0
        for start, end, _ in self.record["holds"]:
            if start >= now:
                break
            held += (now if end is None or end > now else end) - start
        return now - t0 - held

    def time_at(self, active: float) -> float:
        """When the job reaches ``active`` seconds of progress (infinite while a hold has no end)."""
        real = self.record["t0"]
        progressed = 0.0
        for start, end, _ in self.record["holds"]:
            span = start - real
            if progressed + span >= active:
                return float(real + (active - progressed))
            progressed += span
            if end is None:
                return math.inf
            real = end
        return float(real + (active - progressed))

    def _bounds(self) -> tuple[float, float, float]:
        """Active time at which validation ends, training starts, and the job ends."""
        spans = self.record["durations"]
        validated = spans["validating"]
        started = validated + spans["queued"]
        plan = self.record["plan"]
        if plan is None:
            return validated, started, validated
        if plan["fail_step"] is not None:
            return validated, started, started + self._step_time() * plan["fail_step"]
        return validated, started, started + spans["running"]

    def _step_time(self) -> float:
        plan = self.record["plan"]
        return float(self.record["durations"]["running"]) / max(1, plan["steps"] if plan else 1)

    # -- state -------------------------------------------------------------------------------------------

    def snapshot(self, now: float) -> Snapshot:
        """The job's state at ``now``."""
        record = self.record
        cancelled_at = record.get("cancelled_at")
        moment = now if cancelled_at is None else min(now, cancelled_at)
        active = self.active(moment)
        validated, started, end = self._bounds()
        plan = record["plan"]
        if active + _EPS >= end:
            finished_at = self.time_at(end)
            if plan is None:
                return Snapshot("failed", 0, finished_at, None, record["file_error"])
            if plan["fail_step"] is not None:
                return Snapshot("failed", plan["fail_step"], finished_at, None, self._forced_error())
            return Snapshot("succeeded", plan["steps"], finished_at, None, None)
        steps_done = 0
        if plan is not None and active + _EPS >= started:
            steps_done = min(plan["steps"], int((active - started) / self._step_time() + _EPS))
        if cancelled_at is not None:
            return Snapshot("cancelled", steps_done, float(cancelled_at), None, None)
        hold = self._open_hold(now)
        if hold is not None:
            status = hold[2]
        elif active + _EPS < validated:
            status = "validating_files"
        elif active + _EPS < started:
            status = "queued"
        else:
            status = "running"
        estimated = None
        if status in ("queued", "running") and (hold is None or hold[1] is not None):
            estimated = self.time_at(end)
        return Snapshot(status, steps_done, None, estimated, None)

    def _open_hold(self, now: float) -> list[Any] | None:
        holds = self.record["holds"]
        if holds:
            start, end, _ = holds[-1]
            if start <= now and (end is None or now < end):
                return list(holds[-1])
        return None

    def _forced_error(self) -> dict[str, Any]:
        plan = self.record["plan"]
        code = self.record["metadata"][FORCE_FAILURE_KEY]
        return {
            "code": code,
            "message": (
                f"Fine-tuning failed at step {plan['fail_step']}/{plan['steps']}: "
                f"failure forced by metadata {FORCE_FAILURE_KEY}={code!r}"
            ),
            "param": None,
        }

    # -- transitions -------------------------------------------------------------------------------------

    def pause(self, now: float) -> None:
        """Pause a validating, queued or running job; anything else is a conflict."""
        status = self.snapshot(now).status
        if status not in ("validating_files", "queued", "running"):
            raise conflict(f"Job {self.id} cannot be paused: its status is {status!r}")
        self._end_holds(now)
        self.record["holds"].append([now, None, "paused"])
        self._note(now, "Fine-tuning job paused")

    def resume(self, now: float) -> None:
        """Resume a paused job; it waits in ``queued`` briefly once its files are validated."""
        status = self.snapshot(now).status
        if status != "paused":
            raise conflict(f"Job {self.id} cannot be resumed: its status is {status!r}, not 'paused'")
        self._end_holds(now)
        if self.active(now) + _EPS >= self._bounds()[0]:
            self.record["holds"].append([now, now + self.record["durations"]["requeue"], "queued"])
        self._note(now, "Fine-tuning job resumed")

    def cancel(self, now: float) -> None:
        """Cancel a job that has not ended; cancelling an ended job is a conflict."""
        status = self.snapshot(now).status
        if status in TERMINAL:
            raise conflict(f"Job {self.id} cannot be cancelled: it has already {_ended(status)}")
        self._end_holds(now)
        self.record["cancelled_at"] = now
        self._note(now, "Fine-tuning job cancelled")

    def _end_holds(self, now: float) -> None:
        for hold in self.record["holds"]:
            if hold[1] is None or hold[1] > now:
                hold[1] = max(hold[0], now)

    def _note(self, now: float, message: str) -> None:
        self.record["events"].append([now, "info", message])

    # -- events and checkpoints --------------------------------------------------------------------------

    def _static_plan(self) -> list[tuple[float, str, int]]:
        """Events fixed when the job was created: (active time, kind, step), in order."""
        if self._static is not None:
            return self._static
        validated, started, end = self._bounds()
        plan = self.record["plan"]
        rows: list[tuple[float, str, int]] = [(0.0, "created", 0), (0.0, "validating", 0)]
        if plan is None:
            rows.append((validated, "invalid", 0))
        else:
            rows += [(validated, "validated", 0), (started, "started", 0)]
            step_time = self._step_time()
            last = plan["fail_step"] or plan["steps"]
            stride = max(1, math.ceil(plan["steps"] / MAX_METRICS_EVENTS))
            checkpoints = set(plan["checkpoint_steps"])
            metric_steps = sorted({*range(stride, last + 1, stride), last, *checkpoints})
            for step in metric_steps:
                rows.append((started + step * step_time, "metrics", step))
                if step in checkpoints:
                    rows.append((started + step * step_time, "checkpoint", step))
            if plan["fail_step"] is not None:
                rows.append((end, "failed", plan["fail_step"]))
            else:
                rows += [(end, "model", 0), (end, "succeeded", 0)]
        self._static = rows
        return rows

    def event_rows(self, now: float) -> list[EventRow]:
        """Every event that has happened by ``now``, oldest first."""
        record = self.record
        cancelled_at = record.get("cancelled_at")
        horizon = now if cancelled_at is None else min(now, cancelled_at)
        rows: list[EventRow] = []
        for index, (active, kind, step) in enumerate(self._static_plan()):
            moment = self.time_at(active)
            if moment > horizon + _EPS:
                break
            level = "error" if kind in ("invalid", "failed") else "info"
            rows.append(EventRow(moment, (index, 0), "ftevent-" + token(self.id, "s", index), kind, step, level))
        for index, (moment, level, message) in enumerate(record["events"]):
            if moment <= now:
                rows.append(
                    EventRow(moment, (len(rows), 1), "ftevent-" + token(self.id, "d", index), "note", 0, level, message)
                )
        rows.sort(key=lambda row: (row.time, row.order[1], row.order[0]))
        return rows

    def checkpoint_steps(self, now: float) -> list[int]:
        """Steps of the checkpoints made by ``now``, oldest first."""
        plan = self.record["plan"]
        if plan is None:
            return []
        done = self.snapshot(now).steps_done
        return [step for step in plan["checkpoint_steps"] if step <= done]

    def fine_tuned_model(self) -> str:
        """The name of the model the job makes: ``ft:{base}:{org}:{suffix}:{id}``."""
        return self._name_prefix() + token(self.id, "model", length=8)

    def checkpoint_model(self, step: int) -> str:
        """The name of the checkpoint model made at a step."""
        return self._name_prefix() + token(self.id, "checkpoint", step, length=8) + f":ckpt-step-{step}"

    def checkpoint_id(self, step: int) -> str:
        """The id of the checkpoint made at a step."""
        return "ftckpt_" + token(self.id, "checkpoint-id", step)

    def _name_prefix(self) -> str:
        record = self.record
        model = str(record["model"])
        # Continuing from a fine-tuned model names the original base model.
        base = model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 2 else model
        return f"ft:{base}:{record['organization_name']}:{record.get('suffix') or ''}:"

    def render_event(self, row: EventRow) -> dict[str, Any]:
        """The API object of an event (``fine_tuning.job.event``)."""
        record = self.record
        plan = record["plan"]
        data: dict[str, Any] = {}
        kind = row.kind
        event_type = "message"
        if kind == "note":
            message = row.message
        elif kind == "created":
            message = f"Created fine-tuning job: {self.id}"
        elif kind == "validating":
            message = f"Validating training file: {record['training_file']}"
            if record.get("validation_file"):
                message += f" and validation file: {record['validation_file']}"
        elif kind == "invalid":
            message = str(record["file_error"]["message"])
        elif kind == "validated":
            message = "Files validated, moving job to queued state"
        elif kind == "started":
            message = "Fine-tuning job started"
        elif kind == "metrics":
            event_type = "metrics"
            data = {**self.metrics(row.step), "total_steps": plan["steps"]}
            message = f"Step {row.step}/{plan['steps']}: training loss={data['train_loss']:.2f}"
            if "valid_loss" in data:
                message += f", validation loss={data['valid_loss']:.2f}"
        elif kind == "checkpoint":
            data = {"step": row.step, "fine_tuned_model_checkpoint": self.checkpoint_model(row.step)}
            message = f"Checkpoint created at step {row.step}"
        elif kind == "failed":
            message = str(self._forced_error()["message"])
        elif kind == "model":
            message = f"New fine-tuned model created: {self.fine_tuned_model()}"
        else:  # succeeded
            message = "The job has successfully completed"
        return {
            "object": "fine_tuning.job.event",
            "id": row.event_id,
            "created_at": int(row.time),
            "level": row.level,
            "message": message,
            "data": data,
            "type": event_type,
        }

    def render_checkpoint(self, step: int) -> dict[str, Any]:
        """The API object of the checkpoint made at a step (``fine_tuning.job.checkpoint``)."""
        _, started, _ = self._bounds()
        metrics: dict[str, Any] = dict(self.metrics(step))
        if "valid_loss" in metrics:
            metrics["full_valid_loss"] = round(metrics["valid_loss"] * 0.97, 4)
            metrics["full_valid_mean_token_accuracy"] = metrics["valid_mean_token_accuracy"]
        return {
            "object": "fine_tuning.job.checkpoint",
            "id": self.checkpoint_id(step),
            "created_at": int(self.time_at(started + step * self._step_time())),
            "fine_tuned_model_checkpoint": self.checkpoint_model(step),
            "fine_tuning_job_id": self.id,
            "metrics": metrics,
            "step_number": step,
        }

    def metrics(self, step: int) -> dict[str, float]:
        """The metrics of a step of this job."""
        plan = self.record["plan"]
        return metrics_at(
            int(self.record["seed"]),
            step,
            plan["steps"] if plan else 1,
            validation=self.record.get("validation_file") is not None,
            overfit_after=overfit_point(self.record.get("metadata")),
        )

    def results_csv(self) -> bytes:
        """The results file of a job that succeeded: one row of metrics per step."""
        plan = self.record["plan"]
        lines = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
        for step in range(1, plan["steps"] + 1):
            values = self.metrics(step)
            lines.append(
                f"{step},{values['train_loss']},{values['train_mean_token_accuracy']},"
                f"{values.get('valid_loss', '')},{values.get('valid_mean_token_accuracy', '')}"
            )
        return ("\n".join(lines) + "\n").encode()


def _ended(status: str) -> str:
    return {"succeeded": "succeeded", "failed": "failed", "cancelled": "been cancelled"}.get(status, status)
