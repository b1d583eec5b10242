"""Deferrable waits on fine-tuning jobs, run by the triggerer: async only, restart-safe, one event each.

A trigger keeps nothing that a restart on another triggerer would lose: its deadline is absolute, and the
events it has logged are re-read from the job. It shares the process-wide async client of its connection.

The triggerer imports a trigger's module in its event loop, so this module is light: the hook, its models
and its service dialects (over half a second to import) are imported by the first trigger's ``run`` in a
worker thread (:func:`hook_class`), while the loop goes on serving the other triggers.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from airflow.exceptions import AirflowNotFoundException

from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.hooks.waits import job_and_checkpoints, wait_async, waiting
from airflow_provider_finetune.rules.budget import Budget
from airflow_provider_finetune.rules.early_stopping import EarlyStopping
from airflow_provider_finetune.rules.waiting import (
    TERMINAL,
    WAIT_ERROR,
    Outcome,
    watch,
)
from airflow_provider_finetune.triggers.base import _FineTuningTrigger
from airflow_provider_finetune.triggers.poller import shared_poller

if TYPE_CHECKING:
    from airflow_provider_finetune.core.flows import Flow
    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import FineTuningJob, FineTuningJobCheckpoint
    from airflow_provider_finetune.rules.checkpoints import ReadCheckpoints
    from airflow_provider_finetune.triggers.offloop import OffLoopLog

__all__ = ["FineTuningCheckpointTrigger", "FineTuningJobTrigger", "hook_class"]

#: The connection a trigger uses when none is named (``FineTuningHook.default_conn_name``).
DEFAULT_CONN_ID = "finetune_default"
_HOOK_MODULE = "airflow_provider_finetune.hooks.finetune"
_hook_class: type[FineTuningHook] | None = None


async def hook_class() -> type[FineTuningHook]:
    """The hook class, its module imported in a worker thread the first time, off the event loop.

    Threads that import it at once wait on Python's import lock of the module, so each gets it whole.
    """
    global _hook_class
    if _hook_class is None:
        module = await asyncio.to_thread(importlib.import_module, _HOOK_MODULE)
        _hook_class = module.FineTuningHook
    return _hook_class


async def _hook(conn_id: str) -> FineTuningHook:
    return (await hook_class())(conn_id)


class FineTuningJobTrigger(_FineTuningTrigger):
    """Wait for a fine-tuning job to reach a status, without holding a worker.

    Fires exactly one event, whose payload is ``{"status", "job_id", "message", "last_event_id"}``:
    ``status`` is the job's status when it reached one of ``target_statuses`` or a terminal one, or
    ``timeout`` when the deadline passed, or ``error`` when the job could not be read. With
    ``early_stopping``, it may also be ``early_stopped`` (the job still runs: the task stops it), with what the
    wait saw under ``early_stopping`` (best value and step, evaluations since); the message gives the reason.

    :param job_id: the job.
    :param finetune_conn_id: the connection.
    :param poll_interval: seconds between polls.
    :param deadline: absolute deadline, seconds since the epoch; a triggerer restart does not move it.
    :param target_statuses: statuses that end the wait besides succeeded, failed and cancelled.
    :param cancel_on_kill: cancel the job when a person kills the deferred task (mark failed, clear,
        mark success); never on a triggerer restart.
    :param max_consecutive_errors: failed polls in a row, after the hook's own retries, that end the wait.
    :param last_event_id: the newest event already logged, so that it is not logged again.
    :param early_stopping: the early-stopping rule
        (:meth:`~airflow_provider_finetune.rules.early_stopping.EarlyStopping.to_json`). A restarted trigger
        rebuilds what it knew by reading the job's history again.
    :param budget: the job's cost cap (:meth:`~airflow_provider_finetune.rules.budget.Budget.to_json`): past it, the
        event's status is ``over_budget`` (the job still runs: the task cancels it).
    """

    def __init__(
        self,
        job_id: str,
        *,
        finetune_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 60.0,
        deadline: float | None = None,
        target_statuses: Sequence[str] = (),
        cancel_on_kill: bool = True,
        max_consecutive_errors: int = 10,
        last_event_id: str | None = None,
        early_stopping: dict[str, Any] | None = None,
        budget: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.early_stopping = None if early_stopping is None else dict(early_stopping)
        self.budget = None if budget is None else dict(budget)
        self.job_id = job_id
        self.finetune_conn_id = finetune_conn_id
        self.poll_interval = float(poll_interval)
        self.deadline = None if deadline is None else float(deadline)
        self.target_statuses = sorted(set(target_statuses))
        self.cancel_on_kill = cancel_on_kill
        self.max_consecutive_errors = int(max_consecutive_errors)
        self.last_event_id = last_event_id

    async def _wait(self, log: OffLoopLog) -> dict[str, Any]:
        """Poll the job until the wait is over, logging progress; the outcome."""
        hook = await _hook(self.finetune_conn_id)
        try:
            poller = await shared_poller(hook)
        except (FineTuningError, AirflowNotFoundException) as err:  # no such connection, or unusable extras
            message = f"Connection {self.finetune_conn_id!r} cannot be used: {err}"
            return Outcome(WAIT_ERROR, self.job_id, message, self.last_event_id).payload()
        rule = EarlyStopping.of(self.early_stopping)
        steps = watch(
            self.job_id,
            targets=self.target_statuses,
            deadline=self.deadline,
            poll_interval=self.poll_interval,
            max_consecutive_errors=self.max_consecutive_errors,
            last_event_id=self.last_event_id,
            log=log,
            events=poller.events,
            early_stopping=rule,
            budget=Budget.of(self.budget),
        )
        try:
            if rule is not None and not poller.events:
                # Judged on checkpoints, which the shared poller does not read: this wait reads for itself.
                outcome = await wait_async(hook, self.job_id, steps)
            else:
                outcome = await poller.wait(self.job_id, steps, poll_interval=self.poll_interval)
        except FineTuningError as err:
            outcome = Outcome(WAIT_ERROR, self.job_id, str(err), self.last_event_id)
        return outcome.payload()

    async def on_kill(self) -> None:
        """Cancel the job when a person kills the deferred task (Airflow 3.3+ calls this)."""
        if not self.cancel_on_kill:
            return
        hook = await _hook(self.finetune_conn_id)
        try:
            job = await asyncio.wait_for(hook.aget_job(self.job_id), timeout=30)
            if job.status.value not in TERMINAL:
                await asyncio.wait_for(hook.acancel_job(self.job_id), timeout=30)
                self.log.info("Cancelled fine-tuning job %s because its task was killed", self.job_id)
        except (FineTuningError, asyncio.TimeoutError) as err:
            self.log.warning("Could not cancel fine-tuning job %s: %s", self.job_id, err)


class FineTuningCheckpointTrigger(_FineTuningTrigger):
    """Wait until a job has enough checkpoints, or one whose metric meets a threshold.

    Fires one event: ``{"status": "found", "job_id", "checkpoint": {...}, "message"}`` with the chosen
    checkpoint, or ``{"status": "job_ended" | "timeout" | "error", "job_id", "message"}``. With
    ``early_stopping``, also ``{"status": "early_stopped", "job_id", "checkpoint": {...}, "message",
    "early_stopping": {...}}`` when the checkpoints stopped improving (the job still runs: the task stops it).

    :param job_id: the job.
    :param finetune_conn_id: the connection.
    :param min_checkpoints: how many checkpoints there must be at least.
    :param metric: a checkpoint metric (e.g. ``valid_loss``); with ``threshold``, a checkpoint must meet it.
    :param threshold: the value the metric must reach.
    :param mode: ``min`` when lower is better (losses), ``max`` when higher is better (accuracies).
    :param poll_interval: seconds between polls.
    :param deadline: absolute deadline, seconds since the epoch.
    :param max_consecutive_errors: failed polls in a row that end the wait.
    :param early_stopping: the early-stopping rule
        (:meth:`~airflow_provider_finetune.rules.early_stopping.EarlyStopping.to_json`), judged on the checkpoints.
    """

    def __init__(
        self,
        job_id: str,
        *,
        finetune_conn_id: str = DEFAULT_CONN_ID,
        min_checkpoints: int = 1,
        metric: str | None = None,
        threshold: float | None = None,
        mode: str = "min",
        poll_interval: float = 60.0,
        deadline: float | None = None,
        max_consecutive_errors: int = 10,
        early_stopping: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.early_stopping = None if early_stopping is None else dict(early_stopping)
        self.job_id = job_id
        self.finetune_conn_id = finetune_conn_id
        self.min_checkpoints = int(min_checkpoints)
        self.metric = metric
        self.threshold = None if threshold is None else float(threshold)
        self.mode = mode
        self.poll_interval = float(poll_interval)
        self.deadline = None if deadline is None else float(deadline)
        self.max_consecutive_errors = int(max_consecutive_errors)

    async def _wait(self, log: OffLoopLog) -> dict[str, Any]:
        """Poll the job's checkpoints until the condition holds (the rules of ``watch_checkpoints``); the outcome."""
        from airflow_provider_finetune.rules.checkpoints import CheckpointCondition, watch_checkpoints

        condition = CheckpointCondition(self.min_checkpoints, self.metric, self.threshold, self.mode)
        hook = await _hook(self.finetune_conn_id)
        steps = watch_checkpoints(
            self.job_id,
            condition,
            deadline=self.deadline,
            poll_interval=self.poll_interval,
            max_consecutive_errors=self.max_consecutive_errors,
            early_stopping=EarlyStopping.of(self.early_stopping),
        )

        def read(step: ReadCheckpoints) -> Flow[tuple[FineTuningJob, list[FineTuningJobCheckpoint]]]:
            try:
                return (yield from job_and_checkpoints(hook.backend, self.job_id))
            except FineTuningError as err:
                log.warning("Could not read checkpoints of %s: %s", self.job_id, err)
                raise

        await hook.asettings()
        outcome = cast("Outcome", await hook.arun_flow(waiting(steps, read)))
        payload: dict[str, Any] = {"status": outcome.status, "job_id": self.job_id, "message": outcome.message}
        if outcome.checkpoint is not None:
            payload["checkpoint"] = outcome.checkpoint.model_dump(mode="json")
        if outcome.early_stopping is not None:
            payload["early_stopping"] = outcome.early_stopping
        return payload
