"""The operator that creates one fine-tuning job per task instance, waits for it, and returns its model.

It builds the request, lets its policies act before the create (:mod:`.unchanged`, :mod:`.early_stopping`,
:mod:`.budget`), creates once through them (:mod:`.quota`), waits (on the worker or deferred) with the rules they
give, and finishes with them (:mod:`.lineage` too): see :mod:`.policy` for the points at which they act.

Importing this module is cheap (DAG files are parsed every 30 s): httpx, pydantic and the models are only
imported when a task runs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.core import statuses
from airflow_provider_finetune.core.compat import conf
from airflow_provider_finetune.core.templating import number
from airflow_provider_finetune.links.finetune import FineTuningJobLink
from airflow_provider_finetune.operators.base import _GraderTemplates, _run_start, _seconds, task_tag

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJob
    from airflow_provider_finetune.operators.job.lineage import LineagePolicy
    from airflow_provider_finetune.operators.job.policy import JobPolicy, JobRun
    from airflow_provider_finetune.rules.waiting import Outcome

__all__ = ["FineTuningJobOperator"]

_HYPERPARAMETERS = frozenset(
    {
        "n_epochs",
        "batch_size",
        "learning_rate_multiplier",
        "beta",
        "compute_multiplier",
        "eval_interval",
        "eval_samples",
    }
)


class FineTuningJobOperator(_GraderTemplates):
    """Create a fine-tuning job, wait for it (on the worker or deferred), and return its model.

    Exactly one job per task instance, whatever crashes or retries, on every service: the job carries a metadata
    tag made of the DAG, task, run and map index and a fingerprint of its request (where the service keeps no
    metadata, an intent record in the task's state store stands in), and before creating one the operator looks
    for it, adopting only a job whose own fields say it is this task instance's. A job in progress is reattached
    to, a succeeded one is returned, and after a failed or cancelled one a new job is created. On Airflow 3.3 the
    job id is also kept in the task's state store. A job found from another request meets ``on_changed_request``.

    XComs: the return value is ``fine_tuned_model``; ``job_id`` (and ``job_url``) as soon as the job exists, and on
    success ``status``, ``trained_tokens``, ``result_files``, ``checkpoints`` (with their metrics), ``total_price``.

    :param model: the base model.
    :param training_file: the id of the uploaded training file.
    :param validation_file: the id of the uploaded validation file.
    :param method: ``{"type": "supervised" | "dpo" | "reinforcement", "<type>": {"hyperparameters": ...}}``.
    :param hyperparameters: deprecated top-level hyperparameters; mapped onto a supervised ``method``.
    :param suffix: up to 64 characters added to the fine-tuned model's name.
    :param seed: the job's seed.
    :param metadata: up to 14 key-value pairs (the other two are the task's tag and the request's fingerprint).
    :param integrations: e.g. ``[{"type": "wandb", "wandb": {"project": "..."}}]``.
    :param finetune_conn_id: the connection.
    :param wait_for_completion: wait for the job to end (the default); otherwise return once it exists.
    :param deferrable: wait in the triggerer instead of on the worker.
    :param poll_interval: seconds between polls of the job.
    :param timeout: how long to wait (seconds or a timedelta), as an absolute deadline from the start of the try.
    :param cancel_on_kill: cancel the job when a person marks the task failed, clears it or marks it succeeded.
    :param cancel_on_timeout: cancel the job when the wait times out (:mod:`.timeout`).
    :param max_consecutive_errors: failed polls in a row (after the hook's retries) that fail the wait.
    :param on_changed_request: what to do when this task instance's job was made from another request:
        ``cancel_and_create`` (cancel it if it still runs, then create anew) or ``fail``.
    :param service_options: the options only the connection's service has, checked by its backend before any
        request (AWS Bedrock: ``role_arn``, ``output_s3_uri``...; Fireworks: ``learning_rate``, ``lora_rank``...;
        Together: ``training_type``, ``lora_r``...); a service's own price estimate goes to XCom (:mod:`.budget`).
    :param early_stopping: stop the job when its validation metric stops improving and return its best checkpoint's
        model: ``{"metric": "valid_loss", "mode": "min", "patience": 3}``... (:mod:`.early_stopping`).
    :param max_active_jobs: before creating, wait until fewer than this many jobs on the base model are active
        (:mod:`.quota`).
    :param quota_retry_interval: seconds between tries while a quota is waited for, where the service does not
        say how long to wait (``retry-after``).
    :param max_cost: the most the job may cost, in the currency of ``price_per_million_tokens``, checked on an
        estimate before the create and on the job while it runs (:mod:`.budget`).
    :param price_per_million_tokens: the training price per million trained tokens: a number, a mapping from
        base model to price, or a callable that takes the base model; the provider ships no price table.
    :param training_tokens: estimated tokens of one epoch of the training file (templated), e.g. the upload's
        ``estimated_tokens`` XCom; with ``max_cost`` and without it, the file is counted before creating.
    :param training_examples: examples in the training file (templated), e.g. the upload's ``examples`` XCom.
    :param skip_if_unchanged: return the last successful job's model when the data and the request are the same
        (:mod:`.unchanged`).
    """

    template_fields: Sequence[str] = (
        "model",
        "training_file",
        "validation_file",
        "method",
        "hyperparameters",
        "suffix",
        "seed",
        "metadata",
        "integrations",
        "service_options",
        "early_stopping",
        "max_active_jobs",
        "max_cost",
        "training_tokens",
        "training_examples",
    )
    template_fields_renderers = {
        "method": "json",
        "hyperparameters": "json",
        "metadata": "json",
        "integrations": "json",
        "service_options": "json",
        "early_stopping": "json",
    }
    operator_extra_links = (FineTuningJobLink(),)
    ui_color = "#e8f0fe"
    #: The policies of the current try, in the order they act; the lineage one outlives it, for the listener.
    _policies: Sequence[JobPolicy] = ()
    _lineage: LineagePolicy | None = None

    def __init__(
        self,
        *,
        model: str,
        training_file: str,
        validation_file: str | None = None,
        method: dict[str, Any] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        suffix: str | None = None,
        seed: int | str | None = None,
        metadata: dict[str, str] | None = None,
        integrations: list[dict[str, Any]] | None = None,
        finetune_conn_id: str = "finetune_default",
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 60.0,
        timeout: float | timedelta | None = None,
        cancel_on_kill: bool = True,
        cancel_on_timeout: bool = True,
        max_consecutive_errors: int = 10,
        on_changed_request: str = "cancel_and_create",
        early_stopping: dict[str, Any] | None = None,
        max_active_jobs: int | str | None = None,
        quota_retry_interval: float = 600.0,
        max_cost: float | str | None = None,
        price_per_million_tokens: float | Mapping[str, float] | Callable[[str], float] | None = None,
        training_tokens: int | str | None = None,
        training_examples: int | str | None = None,
        service_options: dict[str, Any] | None = None,
        skip_if_unchanged: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        if on_changed_request not in ("cancel_and_create", "fail"):
            raise ValueError(f"on_changed_request must be 'cancel_and_create' or 'fail', got {on_changed_request!r}")
        if not quota_retry_interval > 0:
            raise ValueError(f"quota_retry_interval must be positive, got {quota_retry_interval!r}")
        if max_cost is not None and price_per_million_tokens is None:
            raise ValueError("max_cost needs price_per_million_tokens: the provider ships no price table")
        self.model, self.training_file, self.validation_file = model, training_file, validation_file
        self.method, self.hyperparameters, self.suffix, self.seed = method, hyperparameters, suffix, seed
        self.metadata, self.integrations, self.service_options = metadata, integrations, service_options
        self.wait_for_completion, self.deferrable, self.poll_interval = wait_for_completion, deferrable, poll_interval
        self.timeout, self.max_consecutive_errors = _seconds(timeout), max_consecutive_errors
        self.cancel_on_kill, self.cancel_on_timeout = cancel_on_kill, cancel_on_timeout
        self.on_changed_request = on_changed_request
        self.early_stopping = early_stopping
        self.max_active_jobs, self.quota_retry_interval = max_active_jobs, float(quota_retry_interval)
        self.max_cost, self.price_per_million_tokens = max_cost, price_per_million_tokens
        self.training_tokens, self.training_examples = training_tokens, training_examples
        self.skip_if_unchanged = skip_if_unchanged
        self.job_id: str | None = None

    def build_request(self, *, grader_required: bool = True) -> CreateFineTuningJobRequest:
        """Validate the rendered arguments into a request; a bad one raises before anything is sent.

        :param grader_required: whether a reinforcement method needs an OpenAI grader (not where the service
            grades otherwise: the backend's ``reinforcement_grader``).
        """
        from airflow_provider_finetune.models import GRADER_REQUIRED, CreateFineTuningJobRequest, build_request
        from airflow_provider_finetune.rules.once import room_for_tags

        if isinstance(self.metadata, Mapping):
            room_for_tags(self.metadata)  # the task's tags take two of the service's places
        validation = {GRADER_REQUIRED: grader_required}
        return build_request(CreateFineTuningJobRequest, _fields(self), validation_context=validation)

    def execute(self, context: Context) -> str | None:
        """Create (or reattach to) the job once its budget and the service's quotas allow, then wait for it."""
        self._no_job_yet()
        return self._run(context, None if self.timeout is None else time.time() + self.timeout)

    def execute_after_quota(self, context: Context, event: dict[str, Any], deadline: float | None = None) -> str | None:
        """Resume after a quota wait in the triggerer: create now (or wait again), or fail at the deadline."""
        from airflow_provider_finetune.operators.job.quota import QuotaPolicy

        self._no_job_yet()  # a quota wait is only ever made before the job exists
        QuotaPolicy.resumed(event)
        return self._run(context, deadline)

    def execute_complete(
        self, context: Context, event: dict[str, Any], deadline: float | None = None, **carried: Any
    ) -> str | None:
        """Resume after the trigger fired (with what the policies carried): re-read the job, finish or wait again."""
        from airflow_provider_finetune.rules.waiting import Outcome

        outcome = _outcome(event, Outcome)
        return self._complete(self._start(context, deadline, carried), outcome)

    def _start(self, context: Context, deadline: float | None, carried: Mapping[str, Any] | None = None) -> JobRun:
        """The policies of this try, in the order they act, and what they share of it."""
        from airflow_provider_finetune.operators.job.lineup import policies_of
        from airflow_provider_finetune.operators.job.policy import JobRun

        self._policies, self._lineage = policies_of(self)
        run = JobRun(
            context=context,
            hook=self.hook,
            log=self.log,
            finetune_conn_id=self.finetune_conn_id,
            deadline=deadline,
            show=functools.partial(self._show, context),
            finish=lambda job: self._finish(run, job),
            defer=self.defer,
            carried=carried,
        )
        return run

    def _run(self, context: Context, deadline: float | None) -> str | None:
        """Build the request, let the policies act before the create, create once, then wait (or finish)."""
        run = self._start(context, deadline)
        run.request = self.build_request(grader_required=self.hook.backend.reinforcement_grader)
        for policy in self._policies:
            if (done := policy.before_create(run)) is not None:
                return done.value
        job, _ = self._create(run, self._policies)
        if not self.wait_for_completion:
            return None
        if job.status.is_terminal():
            return self._finish(run, job)
        return self._wait(run, job)

    def _create(self, run: JobRun, policies: Sequence[JobPolicy]) -> tuple[FineTuningJob, bool]:
        """Create through each policy's ``around_create`` (the first outermost); within them all, create once.

        Every create goes through the hook's once-only ``ensure_job``; its job goes to XCom at once.
        """
        if policies:
            return policies[0].around_create(run, functools.partial(self._create, run, policies[1:]))
        from airflow_provider_finetune.rules.once import JobIdentity

        job, created = self.hook.ensure_job(
            run.request,
            identity=JobIdentity(task_tag(run.context), since=_run_start(run.context)),
            on_changed_request=self.on_changed_request,  # type: ignore[arg-type]
            state=run.context.get("task_state_store"),
            service_options=self.service_options,
        )
        self.log.info("%s fine-tuning job %s (%s)", "Created" if created else "Reattached to", job.id, job.status)
        self._show(run.context, job)
        return job, created

    def _show(self, context: Context, job: FineTuningJob) -> None:
        """Make ``job`` this task's job: its id (and page) to XCom at once, before any wait."""
        self.job_id = job.id
        self._push_job(context, job)

    def _wait(self, run: JobRun, job: FineTuningJob) -> str | None:
        """Wait for the job (deferred, or here) with the rules the policies give, then finish."""
        rules = {name: rule for policy in self._policies for name, rule in policy.wait_rules(run).items()}
        # The wait's bounds, the same in the triggerer as on the worker.
        wait: dict[str, Any] = {
            "deadline": run.deadline,
            "poll_interval": self.poll_interval,
            "max_consecutive_errors": self.max_consecutive_errors,
        }
        if self.deferrable:
            from airflow_provider_finetune.triggers.finetune import FineTuningJobTrigger

            as_json: dict[str, Any] = {name: None if rule is None else rule.to_json() for name, rule in rules.items()}
            self.defer(
                trigger=FineTuningJobTrigger(
                    job.id,
                    finetune_conn_id=self.finetune_conn_id,
                    cancel_on_kill=self.cancel_on_kill,
                    **wait,
                    **as_json,
                ),
                method_name="execute_complete",
                # What the task needs to wait again (see _complete): not secrets, JSON primitives.
                kwargs={"deadline": run.deadline, **{n: as_json[n] for p in self._policies for n in p.carried}},
            )
        from airflow_provider_finetune.hooks.waits import wait_sync
        from airflow_provider_finetune.rules.waiting import watch

        steps = watch(job.id, log=self.log, events=self.hook.backend.supports("events"), **wait, **rules)
        return self._complete(run, wait_sync(self.hook, job.id, steps))

    def _complete(self, run: JobRun, outcome: Outcome) -> str | None:
        """Act on how the wait ended: its error, a policy's outcome (a timeout is one), or the job's own end."""
        from airflow_provider_finetune.exceptions import FineTuningError
        from airflow_provider_finetune.rules.waiting import TERMINAL, WAIT_ERROR

        self.job_id = outcome.job_id
        if outcome.status == WAIT_ERROR:
            raise FineTuningError(outcome.message)
        job = self.hook.get_job(outcome.job_id)
        run.context["ti"].xcom_push(key="status", value=job.status.value)
        for policy in self._policies:
            if (done := policy.on_outcome(run, job, outcome)) is not None:
                return done.value
        if outcome.status not in TERMINAL and not any(outcome.status in p.outcomes for p in self._policies):
            raise FineTuningError(f"Unexpected status {outcome.status!r} for job {job.id}")
        if outcome.status in TERMINAL and not job.status.is_terminal():
            # The wait read the end from the service's list; the job's own record has not ended: it is believed.
            self.log.warning(
                "The service listed job %s as %s, but its own record says %s: waiting on",
                job.id,
                outcome.status,
                job.status.value,
            )
            return self._wait(run, job)
        return self._finish(run, job)

    def _finish(self, run: JobRun, job: FineTuningJob) -> str | None:
        """End the task with a job that has ended: the policies' XComs, then its model, or its failure."""
        from airflow_provider_finetune.exceptions import FineTuningJobFailed
        from airflow_provider_finetune.operators.job.policy import checkpoint_json, job_checkpoints

        ti = run.context["ti"]
        ti.xcom_push(key="status", value=job.status.value)
        for policy in self._policies:
            policy.at_end(run, job)
        if job.status.value != statuses.SUCCEEDED:
            error = job.error
            message = f"Fine-tuning job {job.id} ended {job.status.value}" + (f": {error.describe()}" if error else "")
            code, param = (error.code, error.param) if error else (None, None)
            raise FineTuningJobFailed(job.id, job.status.value, message, code=code, param=param)
        ti.xcom_push(key="trained_tokens", value=job.trained_tokens)
        ti.xcom_push(key="result_files", value=list(job.result_files))
        ti.xcom_push(key="checkpoints", value=[checkpoint_json(c) for c in job_checkpoints(self.hook, job)])
        ti.xcom_push(key="fine_tuned_model", value=job.fine_tuned_model)
        # What a service reports on the job beside its model: its metrics, the endpoint that serves the model.
        for key in ("training_metrics", "validation_metrics", "tuned_model_endpoint"):
            if (job.model_extra or {}).get(key) is not None:
                ti.xcom_push(key=key, value=job.model_extra[key])  # type: ignore[index]
        self.log.info("Fine-tuning job %s succeeded: %s", job.id, job.fine_tuned_model)
        return job.fine_tuned_model

    # -- lineage (called by apache-airflow-providers-openlineage's listener, when it is installed) ----------

    def get_openlineage_facets_on_start(self) -> OperatorLineage:
        """The training data as inputs, and the job's service, base model and hyperparameters as a run facet."""
        from airflow_provider_finetune.operators.job.lineage import LineagePolicy

        lineage = self._lineage or LineagePolicy()
        return lineage.facets(self.hook, self.build_request(), self.job_id, complete=False)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """As on start, with the fine-tuned model as output and the job's id and trained tokens."""
        from airflow_provider_finetune.operators.job.lineage import LineagePolicy

        lineage = self._lineage or LineagePolicy()
        return lineage.facets(self.hook, self.build_request(), self.job_id, complete=True)

    def on_kill(self) -> None:
        """Cancel the job when a person kills the task while it waits on the worker."""
        if not (self.cancel_on_kill and self.job_id):
            return
        from airflow_provider_finetune.exceptions import FineTuningError

        try:
            job = self.hook.get_job(self.job_id)
            if not job.status.is_terminal():
                self.hook.cancel_job(self.job_id)
                self.log.info("Cancelled fine-tuning job %s because its task was killed", self.job_id)
        except FineTuningError as err:
            self.log.warning("Could not cancel fine-tuning job %s: %s", self.job_id, err)


def _fields(task: FineTuningJobOperator) -> dict[str, Any]:
    """The request's fields as rendered: numbers given as text made numbers, empty ones left out."""
    fields = {
        "model": task.model,
        "training_file": task.training_file,
        "validation_file": task.validation_file or None,
        "method": _method(task.method),
        "hyperparameters": _hyperparameters(task.hyperparameters),
        "suffix": task.suffix or None,
        "seed": number(task.seed),
        "metadata": task.metadata or None,
        "integrations": task.integrations or None,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _hyperparameters(block: Any) -> Any:
    if not isinstance(block, Mapping):
        return block
    return {k: number(v) if k in _HYPERPARAMETERS else v for k, v in block.items()}


def _method(method: Any) -> Any:
    if not isinstance(method, Mapping):
        return method
    fixed = dict(method)
    for kind in ("supervised", "dpo", "reinforcement"):
        inner = fixed.get(kind)
        if isinstance(inner, Mapping) and "hyperparameters" in inner:
            fixed[kind] = {**inner, "hyperparameters": _hyperparameters(inner["hyperparameters"])}
    return fixed


def _outcome(event: Any, outcome_cls: type[Outcome]) -> Outcome:
    """Turn a trigger event back into an outcome, refusing anything that is not one."""
    from airflow_provider_finetune.exceptions import FineTuningError

    if not isinstance(event, Mapping) or not isinstance(event.get("status"), str) or not event.get("job_id"):
        raise FineTuningError(f"Unexpected trigger event: {event!r}")
    return outcome_cls(
        status=event["status"],
        job_id=str(event["job_id"]),
        message=str(event.get("message") or ""),
        last_event_id=event.get("last_event_id"),
        early_stopping=dict(event["early_stopping"]) if isinstance(event.get("early_stopping"), Mapping) else None,
    )
