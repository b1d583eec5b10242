"""The job operator's early-stopping policy: stop a job whose validation metric stopped improving, return its best.

``early_stopping={"metric": "valid_loss", "mode": "min", "patience": 3, "min_delta": 0.0, "action": "cancel"}``
(every key optional; ``action: "pause"`` pauses where the service can, else cancels). The wait judges the job's
evaluations (its metrics events, or its checkpoints where the service keeps no event log) by
:mod:`airflow_provider_finetune.rules.early_stopping`; when patience runs out, the job is stopped and the task
returns its best checkpoint's model instead of the final one. XComs ``early_stopped``, ``early_stopping_reason``
and ``best_checkpoint`` say what happened; a service's own early-stopping results go to ``early_stopping``. A job
that succeeds or fails before the stop reaches it ends the task as any job does.

Importing this module is cheap: the hook, httpx and pydantic are only imported when a task runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.core import statuses
from airflow_provider_finetune.operators.job.policy import Done, JobPolicy, JobRun, checkpoint_json, job_checkpoints

if TYPE_CHECKING:
    from airflow_provider_finetune.models import FineTuningJob
    from airflow_provider_finetune.rules.early_stopping import EarlyStopping
    from airflow_provider_finetune.rules.waiting import Outcome

__all__ = ["EARLY_STOPPED_KEY", "EARLY_STOPPING_FIELDS", "EarlyStoppingPolicy"]

#: A job's early-stopping results, pushed to XCom (``early_stopping``) when the service reports them.
EARLY_STOPPING_FIELDS = ("early_stopped", "early_stopping_best_step", "early_stopping_best_metric")
#: Key of the record, in the task state store, of a job this task instance stopped early.
EARLY_STOPPED_KEY = "early_stopped_job"


class EarlyStoppingPolicy(JobPolicy):
    """Stop a job that ran out of patience and return its best checkpoint's model.

    :param early_stopping: the rule as given (rendered), or ``None`` for none.
    :param validation_file: the request's validation file (a validation metric needs one).
    """

    def __init__(self, early_stopping: dict[str, Any] | None = None, validation_file: str | None = None) -> None:
        self.early_stopping, self.validation_file = early_stopping, validation_file
        #: The rule, once checked.
        self.rule: EarlyStopping | None = None
        self.checked = False

    @property
    def outcomes(self) -> frozenset[str]:
        """The outcome this policy acts on."""
        from airflow_provider_finetune.rules.early_stopping import EARLY_STOPPED

        return frozenset({EARLY_STOPPED})

    def before_create(self, run: JobRun) -> Done | None:
        """Check the rule before anything is sent; return the best model of a job an earlier try stopped."""
        rule = self._rule(run)
        if rule is None:
            return None
        return self._stopped_before(run, rule)

    def wait_rules(self, run: JobRun) -> dict[str, Any]:
        """The rule the wait judges the job's evaluations by."""
        return {"early_stopping": self._rule(run)}

    def on_outcome(self, run: JobRun, job: FineTuningJob, outcome: Outcome) -> Done | None:
        """Stop a job that ran out of patience (pause where asked and possible, else cancel); return its best model.

        A job that succeeded or failed before the stop reached it finishes as any job does.
        """
        if outcome.status not in self.outcomes or job.status.is_terminal():
            return None
        from airflow_provider_finetune.hooks.actions import stop_early
        from airflow_provider_finetune.rules.early_stopping import EarlyStopping, ended_before_the_stop

        rule = EarlyStopping.of(self.early_stopping)
        assert rule is not None
        store = run.context.get("task_state_store")
        if store is not None:  # a retry after a crash from here on returns this job's best, not a new job's
            store.set(EARLY_STOPPED_KEY, {"job_id": job.id, "reason": outcome.message})
        job = stop_early(run.hook, job.id, rule, outcome.message, run.log)
        if ended_before_the_stop(job):  # its own end, not our stop: its result is its own, as for any job
            return Done(run.finish(job))
        return Done(self._return_best(run, job, rule, outcome.message))

    def at_end(self, run: JobRun, job: FineTuningJob) -> None:
        """Say that a succeeded job was not stopped early, and push the service's own early-stopping results."""
        if job.status.value != statuses.SUCCEEDED:
            return
        ti = run.context["ti"]
        if self.early_stopping is not None:
            ti.xcom_push(key="early_stopped", value=False)
        reported = job.model_extra or {}
        early = {k: reported[k] for k in EARLY_STOPPING_FIELDS if reported.get(k) is not None}
        if early:
            ti.xcom_push(key="early_stopping", value=early)

    def _rule(self, run: JobRun) -> EarlyStopping | None:
        """The early-stopping rule, checked against the request and the service before anything is sent."""
        if self.checked:
            return self.rule
        from airflow_provider_finetune.exceptions import InvalidRequestError
        from airflow_provider_finetune.rules.early_stopping import EarlyStopping

        rule = EarlyStopping.of(self.early_stopping)
        if rule is not None:
            if rule.metric.startswith(("valid_", "full_valid_")) and not self.validation_file:
                raise InvalidRequestError(
                    f"early_stopping.metric {rule.metric!r} is a validation metric: the job needs a validation_file",
                    field="validation_file",
                )
            # The result of a job stopped early is its best checkpoint, and stopping it is cancelling (or pausing) it.
            run.hook.require("checkpoints")
            run.hook.require("cancel")
        self.rule, self.checked = rule, True
        return rule

    def _stopped_before(self, run: JobRun, rule: EarlyStopping) -> Done | None:
        """The best model of the job an earlier try of this task instance stopped early (Airflow 3.3+), if any.

        Without it a retry after a crash between the stop and the XComs would find its job cancelled, and
        make a new one.
        """
        store = run.context.get("task_state_store")
        record = store.get(EARLY_STOPPED_KEY) if store is not None else None
        if not isinstance(record, Mapping) or not record.get("job_id"):
            return None
        job = run.hook.get_job(str(record["job_id"]))
        if job.status.value != "cancelled" and job.status.value not in statuses.PAUSED:
            return None  # resumed by a person since: this try waits for it as usual
        run.log.info("Job %s was stopped early by an earlier try of this task", job.id)
        run.show(job)
        return Done(self._return_best(run, job, rule, str(record.get("reason") or "")))

    @staticmethod
    def _return_best(run: JobRun, job: FineTuningJob, rule: EarlyStopping, reason: str) -> str:
        """Push what early stopping did and return the best checkpoint's model of a job it stopped."""
        from airflow_provider_finetune.exceptions import FineTuningError
        from airflow_provider_finetune.rules.checkpoints import best_checkpoint

        checkpoints = job_checkpoints(run.hook, job)
        best = best_checkpoint([c for c in checkpoints if c.fine_tuned_model_checkpoint], rule.metric, rule.mode)
        if best is None or not best.fine_tuned_model_checkpoint:
            raise FineTuningError(f"Job {job.id} stopped early, but none of its checkpoints reports {rule.metric}")
        model: str = best.fine_tuned_model_checkpoint
        ti = run.context["ti"]
        ti.xcom_push(key="status", value=job.status.value)
        ti.xcom_push(key="early_stopped", value=True)
        ti.xcom_push(key="early_stopping_reason", value=reason)
        ti.xcom_push(key="best_checkpoint", value=checkpoint_json(best))
        ti.xcom_push(key="checkpoints", value=[checkpoint_json(c) for c in checkpoints])
        ti.xcom_push(key="trained_tokens", value=job.trained_tokens)
        ti.xcom_push(key="fine_tuned_model", value=model)
        run.log.info("Returning the best checkpoint of job %s: %s", job.id, model)
        return model
