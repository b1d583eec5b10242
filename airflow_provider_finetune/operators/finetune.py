"""Operators that create, cancel, pause and resume fine-tuning jobs, upload files, share checkpoints, check graders.

Importing this module is cheap (DAG files are parsed every 30 s): httpx, pydantic and the models are only
imported when a task runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from pathlib import Path, PurePath
from typing import IO, TYPE_CHECKING, Any, NoReturn, cast

from airflow.sdk import BaseOperator

from airflow_provider_finetune.core import statuses
from airflow_provider_finetune.core.compat import conf
from airflow_provider_finetune.core.templating import number as _number
from airflow_provider_finetune.links.finetune import FineTuningJobLink
from airflow_provider_finetune.rules import job_actions
from airflow_provider_finetune.rules.job_actions import ActionRule

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJob
    from airflow_provider_finetune.rules.budget import Budget
    from airflow_provider_finetune.rules.early_stopping import EarlyStopping
    from airflow_provider_finetune.rules.waiting import Outcome
    from airflow_provider_finetune.training_data import Method

__all__ = [
    "FineTuningCheckpointPermissionOperator",
    "FineTuningCheckpointPermissionRevokeOperator",
    "FineTuningFileUploadOperator",
    "FineTuningGraderRunOperator",
    "FineTuningGraderValidateOperator",
    "FineTuningJobCancelOperator",
    "FineTuningJobOperator",
    "FineTuningJobPauseOperator",
    "FineTuningJobResumeOperator",
    "task_tag",
]

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


def task_tag(context: Context) -> str:
    """The metadata tag that ties a job to one task instance: its DAG, task, run and map index."""
    ti = context["ti"]
    key = "\x1f".join([ti.dag_id, ti.task_id, ti.run_id, str(getattr(ti, "map_index", -1))])
    return "ti-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def _run_start(context: Context) -> float | None:
    """When the DAG run started: no job of one of its task instances can be older (a search stops there)."""
    dag_run = context.get("dag_run")
    start = getattr(dag_run, "start_date", None) or getattr(dag_run, "queued_at", None)
    return start.timestamp() if start is not None else None


def _seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _hyperparameters(block: Any) -> Any:
    if not isinstance(block, Mapping):
        return block
    return {k: _number(v) if k in _HYPERPARAMETERS else v for k, v in block.items()}


def _method(method: Any) -> Any:
    if not isinstance(method, Mapping):
        return method
    fixed = dict(method)
    for kind in ("supervised", "dpo", "reinforcement"):
        inner = fixed.get(kind)
        if isinstance(inner, Mapping) and "hyperparameters" in inner:
            fixed[kind] = {**inner, "hyperparameters": _hyperparameters(inner["hyperparameters"])}
    return fixed


# A grader's own placeholders (``{{sample.output_text}}``, ``{{ item.label }}``) look like Jinja; they are
# kept as they are when the grader is rendered, instead of failing as undefined Jinja variables.
_GRADER_PLACEHOLDER = re.compile(r"\{\{\s*(?:sample|item)\b[^{}]*\}\}")


class _GraderTemplates(BaseOperator):
    """Renders templated fields that may hold graders without mistaking their placeholders for Jinja."""

    def render_template(
        self,
        content: Any,
        context: Context,
        jinja_env: Any = None,
        seen_oids: set[int] | None = None,
    ) -> Any:
        """Render templated fields, leaving grader placeholders and python graders' source untouched."""
        if isinstance(content, str):
            content = _GRADER_PLACEHOLDER.sub(lambda m: "{% raw %}" + m.group(0) + "{% endraw %}", content)
        elif isinstance(content, dict) and content.get("type") == "python" and isinstance(content.get("source"), str):
            # Python source may hold "{{" of its own (f-strings); it is code, never a template.
            rest = {key: value for key, value in content.items() if key != "source"}
            return {**self.render_template(rest, context, jinja_env, seen_oids), "source": content["source"]}
        return super().render_template(content, context, jinja_env, seen_oids)


class _FineTuningOperator(BaseOperator):
    """What every operator of this provider shares: the connection and a hook made on first use."""

    #: What the service must be able to do for this operator (a capability of the backend), if anything.
    capability: str | None = None

    def _refuse_if_unsupported(self) -> None:
        """Fail before any request, in one line, when the connection's service cannot do what is asked."""
        if self.capability is not None:
            self.hook.require(self.capability)

    def __init__(self, *, finetune_conn_id: str = "finetune_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.finetune_conn_id = finetune_conn_id

    @cached_property
    def hook(self) -> FineTuningHook:
        """The hook, made when the task runs."""
        from airflow_provider_finetune.hooks.finetune import FineTuningHook

        return FineTuningHook(self.finetune_conn_id)

    def _push_job(self, context: Context, job: FineTuningJob) -> None:
        """Push the job id and its page at once, before any wait, so that they survive a crash."""
        ti = context["ti"]
        ti.xcom_push(key="job_id", value=job.id)
        # The connection's id (never its settings), so that the job is found where it was made (the UI page).
        ti.xcom_push(key="finetune_conn_id", value=self.finetune_conn_id)
        # Pushed even when empty (a service with no job page), so that the link finds a value, not a 404.
        url = self.hook.job_url(job.id)
        ti.xcom_push(key=FineTuningJobLink.key, value=url)
        setattr(self, FineTuningJobLink.known_attribute, url or "")

    def _no_job_yet(self) -> None:
        """Say, for the link read when this try ends, that no job page was pushed in this process yet."""
        setattr(self, FineTuningJobLink.known_attribute, "")


class FineTuningJobOperator(_GraderTemplates, _FineTuningOperator):
    """Create a fine-tuning job, wait for it (on the worker or deferred), and return its model.

    Exactly one job per task instance, whatever crashes or retries, on every service: the job carries a
    metadata tag made of the DAG, task, run and map index and a fingerprint of its request (where the
    service keeps no metadata, an intent record in the task's state store stands in), and before creating
    one the operator looks for it, adopting only a job whose own fields say it is this task instance's. A
    job in progress is reattached to, a succeeded one is returned, and after a failed or cancelled one a
    new job is created. On Airflow 3.3 the job id is also kept in the task's state store. A job found from
    another request (the DAG or its data changed between tries) meets ``on_changed_request``.

    XComs: the return value is ``fine_tuned_model``; ``job_id`` is pushed as soon as the job exists, and
    on success ``status``, ``trained_tokens``, ``result_files``, ``checkpoints`` (with their metrics)
    and, for services with a dashboard, ``job_url``; with ``max_cost``, ``estimated_cost`` and
    ``total_price``.

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
    :param timeout: how long to wait (seconds or a timedelta), as an absolute deadline from the start
        of the try; a triggerer restart does not reset it.
    :param cancel_on_kill: cancel the job when a person marks the task failed, clears it or marks it
        succeeded.
    :param cancel_on_timeout: cancel the job when the wait times out, so that it stops costing money. A job
        found to have succeeded (or failed) on its own by then ends the task as that success (or failure).
    :param max_consecutive_errors: failed polls in a row (after the hook's retries) that fail the wait.
    :param on_changed_request: what to do when this task instance's job was made from another request:
        ``cancel_and_create`` (cancel it if it still runs, then create anew) or ``fail``.
    :param service_options: the options only the connection's service has, checked by its backend before any
        request (AWS Bedrock: ``role_arn``, ``output_s3_uri``, ``customization_type``, ``hyperparameters``...;
        Fireworks: ``learning_rate``, ``lora_rank``, ``output_model``...; Together: ``training_type``, ``lora_r``,
        ``learning_rate``, ``from_checkpoint``...).
        Where the service estimates a job's price before it is made (Together), the estimate is asked first,
        the task fails before the create when the service says the account may not proceed, and the estimate
        goes to XCom (``price_estimate``, ``estimated_cost``) with the job; on success the service's
        ``total_price`` and early-stopping results go to XCom when it reports them.
    :param early_stopping: stop the job when its validation metric has not improved for a number of
        evaluations, and return its best checkpoint's model instead of the final one:
        ``{"metric": "valid_loss", "mode": "min", "patience": 3, "min_delta": 0.0, "action": "cancel"}``
        (every key optional; ``action: "pause"`` pauses where the service can, else cancels). The
        evaluations are the job's metrics events, or its checkpoints where the service keeps no event log.
        XComs ``early_stopped``, ``early_stopping_reason`` and ``best_checkpoint`` say what happened. A job
        that succeeds or fails before the stop reaches it ends the task as any job does.
    :param max_active_jobs: before creating, count the service's active jobs (validating, queued, running,
        paused) on the base model and wait until fewer than this many are active; this task instance's own
        job does not count. The wait, like a create the service refuses for a quota (active jobs, creates per
        day), is deferred to the triggerer when ``deferrable`` (on the worker otherwise), tries again every
        ``quota_retry_interval`` and ends at the deadline (``timeout``). An Airflow pool bounds a sweep as
        well: a pool of that many slots with ``include_deferred=True`` runs that many of its tasks at a time.
    :param quota_retry_interval: seconds between tries while a quota is waited for, where the service does
        not say how long to wait (``retry-after``).
    :param max_cost: the most the job may cost, in the currency of ``price_per_million_tokens``. Before
        creating, the cost is estimated (tokens per epoch x epochs x price): above ``max_cost`` the task
        fails before anything is billed, with the estimate in the message. While the job runs, its trained
        tokens (or the cost the service reports) past ``max_cost`` cancel it and fail the task. XComs:
        ``estimated_cost`` before creating, ``total_price`` (the final cost) when the job ends.
    :param price_per_million_tokens: the training price per million trained tokens: a number, a mapping
        from base model to price, or a callable that takes the base model and returns its price. The
        provider ships no price table. Needed with ``max_cost``.
    :param training_tokens: estimated tokens of one epoch of the training file (templated), e.g. the
        ``estimated_tokens`` XCom of :class:`FineTuningFileUploadOperator`; with ``max_cost`` and without
        it, the training file is downloaded and counted before creating.
    :param training_examples: examples in the training file (templated), e.g. the upload's ``examples``
        XCom: the epochs ``n_epochs: "auto"`` resolves to depend on it.
    :param skip_if_unchanged: when the last successful job of this DAG and task trained on the same data
        (content digest) with the same request (fingerprint), and the service still shows it succeeded with
        its model, return that model instead of training again (XComs ``reused_job_id``,
        ``skipped_because``); see :mod:`airflow_provider_finetune.rules.unchanged`.
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
    #: The job whose model the task returned, for lineage; an earlier job's id when that was reused.
    _returned_job: FineTuningJob | None = None
    _reused_job_id: str | None = None

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
        self.service_options = service_options
        self.early_stopping = early_stopping
        self.skip_if_unchanged = skip_if_unchanged
        if on_changed_request not in ("cancel_and_create", "fail"):
            raise ValueError(f"on_changed_request must be 'cancel_and_create' or 'fail', got {on_changed_request!r}")
        if not quota_retry_interval > 0:
            raise ValueError(f"quota_retry_interval must be positive, got {quota_retry_interval!r}")
        if max_cost is not None and price_per_million_tokens is None:
            raise ValueError("max_cost needs price_per_million_tokens: the provider ships no price table")
        self.on_changed_request = on_changed_request
        self.max_active_jobs = max_active_jobs
        self.quota_retry_interval = float(quota_retry_interval)
        self.max_cost = max_cost
        self.price_per_million_tokens = price_per_million_tokens
        self.training_tokens = training_tokens
        self.training_examples = training_examples
        self.model = model
        self.training_file = training_file
        self.validation_file = validation_file
        self.method = method
        self.hyperparameters = hyperparameters
        self.suffix = suffix
        self.seed = seed
        self.metadata = metadata
        self.integrations = integrations
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = _seconds(timeout)
        self.cancel_on_kill = cancel_on_kill
        self.cancel_on_timeout = cancel_on_timeout
        self.max_consecutive_errors = max_consecutive_errors
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
        fields = {
            "model": self.model,
            "training_file": self.training_file,
            "validation_file": self.validation_file or None,
            "method": _method(self.method),
            "hyperparameters": _hyperparameters(self.hyperparameters),
            "suffix": self.suffix or None,
            "seed": _number(self.seed),
            "metadata": self.metadata or None,
            "integrations": self.integrations or None,
        }
        return build_request(
            CreateFineTuningJobRequest,
            {k: v for k, v in fields.items() if v is not None},
            validation_context={GRADER_REQUIRED: grader_required},
        )

    def execute(self, context: Context) -> str | None:
        """Create (or reattach to) the job once its budget and the service's quotas allow, then wait for it."""
        self._no_job_yet()
        started = time.time()
        return self._run(context, None if self.timeout is None else started + self.timeout)

    def execute_after_quota(self, context: Context, event: dict[str, Any], deadline: float | None = None) -> str | None:
        """Resume after a quota wait in the triggerer: create now (or wait again), or fail at the deadline."""
        from airflow_provider_finetune.exceptions import FineTuningError
        from airflow_provider_finetune.rules.quota import QUOTA_READY

        self._no_job_yet()  # a quota wait is only ever made before the job exists

        if not isinstance(event, Mapping) or event.get("status") != QUOTA_READY:
            message = event.get("message") if isinstance(event, Mapping) else None
            raise FineTuningError(str(message or f"Unexpected trigger event: {event!r}"))
        return self._run(context, deadline)

    def _run(self, context: Context, deadline: float | None) -> str | None:
        request = self.build_request(grader_required=self.hook.backend.reinforcement_grader)
        if self.skip_if_unchanged:
            request, reused = self._unless_unchanged(context, request)
            if reused is not None:
                return reused
        rule = self._early_stopping_rule()
        if rule is not None and (stopped := self._stopped_before(context, rule)) is not None:
            return stopped
        estimate = self._price_before_create(context, request)
        budget = self._budget(context, request, estimate)
        job, created = self._create(context, request, deadline)
        self.log.info("%s fine-tuning job %s (%s)", "Created" if created else "Reattached to", job.id, job.status)
        self.job_id = job.id
        self._push_job(context, job)
        if estimate is not None:
            context["ti"].xcom_push(key="price_estimate", value=estimate.to_xcom())
            if estimate.estimated_total_price is not None:
                context["ti"].xcom_push(key="estimated_cost", value=estimate.estimated_total_price)
        if not self.wait_for_completion:
            return None
        if job.status.is_terminal():
            return self._finish(context, job)
        return self._wait(context, job, deadline, rule, budget)

    def _wait(
        self, context: Context, job: FineTuningJob, deadline: float | None, rule: Any, budget: Budget | None
    ) -> str | None:
        """Wait for the job (deferred, or here), then finish."""
        if self.deferrable:
            from airflow_provider_finetune.triggers.finetune import FineTuningJobTrigger

            self.defer(
                trigger=FineTuningJobTrigger(
                    job.id,
                    finetune_conn_id=self.finetune_conn_id,
                    poll_interval=self.poll_interval,
                    deadline=deadline,
                    cancel_on_kill=self.cancel_on_kill,
                    max_consecutive_errors=self.max_consecutive_errors,
                    early_stopping=None if rule is None else rule.to_json(),
                    budget=None if budget is None else budget.to_json(),
                ),
                method_name="execute_complete",
                # What the task needs to wait again (see _complete): not secrets, JSON primitives.
                kwargs={"deadline": deadline, "budget": None if budget is None else budget.to_json()},
            )
        from airflow_provider_finetune.hooks.waits import wait_sync
        from airflow_provider_finetune.rules.waiting import watch

        steps = watch(
            job.id,
            deadline=deadline,
            poll_interval=self.poll_interval,
            max_consecutive_errors=self.max_consecutive_errors,
            log=self.log,
            events=self.hook.backend.supports("events"),
            early_stopping=rule,
            budget=budget,
        )
        return self._complete(context, wait_sync(self.hook, job.id, steps))

    def _price_before_create(self, context: Context, request: CreateFineTuningJobRequest) -> Any:
        """Check the request and the service's options (no request sent); ask the price where the service can.

        Not asked again once the task's state store names this task instance's job (a retry reattaches to it).
        """
        backend = self.hook.backend
        backend.job_body(request, self.service_options)  # what cannot be sent is refused here, by name
        state = context.get("task_state_store")
        check_price = getattr(backend, "check_price", None)
        if check_price is None or (state is not None and state.get("job_id")):
            return None
        return check_price(self.hook, request, self.service_options)

    # -- budget and quotas -------------------------------------------------------------------------------

    def _budget(self, context: Context, request: CreateFineTuningJobRequest, priced: Any = None) -> Budget | None:
        """The job's budget, refused before anything is billed when its estimate is above ``max_cost``.

        :param priced: the service's price estimate already asked for (Together's), if any.
        """
        if self.max_cost is None or self.max_cost == "":
            return None
        from dataclasses import replace

        from airflow_provider_finetune.rules.budget import estimate

        assert self.price_per_million_tokens is not None  # checked when the operator was made
        tokens, examples = self.training_tokens, self.training_examples
        if tokens is None or tokens == "" or tokens == "None":
            tokens, examples = self._count_training_file(request)
        backend = self.hook.backend
        budget = estimate(
            request,
            max_cost=self.max_cost,
            price=self.price_per_million_tokens,
            tokens_per_epoch=tokens,
            examples=examples,
            epochs=backend.epoch_rule(request, backend.job_body(request, self.service_options)),
        )
        if priced is not None and priced.estimated_total_price is not None:
            budget = replace(budget, service_estimate=priced.estimated_total_price)
        elif (service := self.hook.estimate_price(request, service_options=self.service_options)) is not None:
            # the service's own estimate, where it makes one, is the one checked
            budget = replace(budget, service_estimate=service.total)
        context["ti"].xcom_push(key="estimated_cost", value=round(budget.estimated_cost, 6))
        budget.check_estimate()
        self.log.info("Estimated cost %s, within max_cost %g", budget.describe(), budget.max_cost)
        return budget

    def _count_training_file(self, request: CreateFineTuningJobRequest) -> tuple[int, int]:
        """Tokens per epoch and examples of the training file, read back from the service and checked."""
        import io

        from airflow_provider_finetune.training_data import validate_file

        method = request.method.type if request.method is not None else "supervised"
        content = self.hook.get_file_content(request.training_file)
        report = validate_file(io.BytesIO(content), method=method, min_examples=1, name=request.training_file)
        self.log.info(
            "%s: %d examples, about %d tokens per epoch", request.training_file, report.examples, report.tokens
        )
        return report.tokens, report.examples

    def _create(
        self, context: Context, request: CreateFineTuningJobRequest, deadline: float | None
    ) -> tuple[FineTuningJob, bool]:
        """Create (or reattach to) the job once the service's quotas allow it, waiting for them as needed.

        A wait that must pause is deferred when ``deferrable`` (the task resumes in :meth:`execute_after_quota`);
        on the worker it sleeps. Every create goes through the hook's once-only ``ensure_job``.
        """
        from airflow_provider_finetune.exceptions import FineTuningError, FineTuningNotAllowedError, QuotaExceededError
        from airflow_provider_finetune.hooks.waits import wait_quota_sync
        from airflow_provider_finetune.rules.once import JobIdentity
        from airflow_provider_finetune.rules.quota import QUOTA_READY, await_quota, clock_time
        from airflow_provider_finetune.rules.waiting import Pause

        identity = JobIdentity(task_tag(context), since=_run_start(context))
        state = context.get("task_state_store")
        own = state.get("job_id") if state is not None else None
        max_active = _count_or_none(self.max_active_jobs, "max_active_jobs")
        wake_at, reason = time.time(), ""
        while True:
            steps = await_quota(
                request.model,
                max_active_jobs=max_active,
                wake_at=wake_at,
                deadline=deadline,
                interval=self.quota_retry_interval,
                reason=reason,
                log=self.log,
            )
            tag, own_id = identity.tag, str(own) if own else None
            waited = wait_quota_sync(self.hook, steps, tag=tag, own_job_id=own_id, until_pause=self.deferrable)
            if isinstance(waited, Pause):
                self._defer_quota(
                    request.model, time.time() + waited.seconds, deadline, reason, max_active, tag, own_id
                )
            if waited.status != QUOTA_READY:
                raise FineTuningError(waited.message)
            try:
                return self.hook.ensure_job(
                    request,
                    identity=identity,
                    on_changed_request=self.on_changed_request,  # type: ignore[arg-type]
                    state=state,
                    service_options=self.service_options,
                )
            except QuotaExceededError as err:
                wake_at = time.time() + (err.retry_after or self.quota_retry_interval)
                quota = err.quota or "fine-tuning jobs"
                reason = f"the service's quota of {quota} ({err.message})"
                self.log.info(
                    "%s refused to create the job for its quota of %s: %s; trying again at %s%s",
                    self.hook.backend.label,
                    quota,
                    err.message,
                    clock_time(wake_at),
                    "" if deadline is None else f", until the deadline at {clock_time(deadline)}",
                )
            except FineTuningNotAllowedError as err:
                from airflow_provider_finetune.core.compat import AirflowFailException

                raise AirflowFailException(
                    f"{self.hook.backend.label} will not fine-tune for this account until a person acts "
                    f"(billing or access), so the task is not retried: {err}"
                ) from None

    def _defer_quota(
        self,
        model: str,
        wake_at: float,
        deadline: float | None,
        reason: str,
        max_active: int | None,
        tag: str,
        own_job_id: str | None,
    ) -> NoReturn:
        """Hand the rest of a quota wait to the triggerer; the task resumes in :meth:`execute_after_quota`."""
        from airflow_provider_finetune.triggers.quota import FineTuningQuotaTrigger

        self.defer(
            trigger=FineTuningQuotaTrigger(
                model,
                wake_at=wake_at,
                finetune_conn_id=self.finetune_conn_id,
                max_active_jobs=max_active,
                interval=self.quota_retry_interval,
                deadline=deadline,
                reason=reason,
                tag=tag,
                own_job_id=own_job_id,
            ),
            method_name="execute_after_quota",
            kwargs={"deadline": deadline},
        )

    def _push_cost(self, context: Context, job: FineTuningJob) -> float | None:
        """Push the job's cost as it ended (``total_price``): as the service reports it, or its tokens at the price."""
        from airflow_provider_finetune.rules.budget import final_cost, price_for

        price = (
            None
            if self.price_per_million_tokens is None
            else price_for(self.price_per_million_tokens, job.model or self.model)
        )
        cost = final_cost(job, price)
        if cost is not None:
            context["ti"].xcom_push(key="total_price", value=cost)
        return cost

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any],
        deadline: float | None = None,
        budget: dict[str, Any] | None = None,
    ) -> str | None:
        """Resume after the trigger fired: check the event, re-read the job, finish (or wait again)."""
        from airflow_provider_finetune.rules.budget import Budget
        from airflow_provider_finetune.rules.waiting import Outcome

        return self._complete(context, _outcome(event, Outcome), deadline, Budget.of(budget))

    def _complete(
        self, context: Context, outcome: Outcome, deadline: float | None = None, budget: Budget | None = None
    ) -> str | None:
        from airflow_provider_finetune.exceptions import FineTuningError, FineTuningJobFailed
        from airflow_provider_finetune.hooks.actions import act_or_read
        from airflow_provider_finetune.rules.budget import OVER_BUDGET
        from airflow_provider_finetune.rules.early_stopping import EARLY_STOPPED, ended_before_the_stop
        from airflow_provider_finetune.rules.waiting import TERMINAL, WAIT_ERROR, WAIT_TIMEOUT

        self.job_id = outcome.job_id
        if outcome.status == WAIT_ERROR:
            raise FineTuningError(outcome.message)
        job = self.hook.get_job(outcome.job_id)
        context["ti"].xcom_push(key="status", value=job.status.value)
        if outcome.status == WAIT_TIMEOUT:
            if self.cancel_on_timeout and not job.status.is_terminal():
                job = act_or_read(self.hook, job.id, "cancel")
                self.log.info("Cancel of job %s because the wait timed out: %s", job.id, job.status.value)
            if not ended_before_the_stop(job):
                raise FineTuningJobFailed(job.id, job.status.value, outcome.message)
            # It succeeded or failed on its own as the wait ran out: that end is the task's result.
            self.log.info("Job %s ended %s as its wait timed out", job.id, job.status.value)
            return self._finish(context, job)
        if outcome.status == EARLY_STOPPED and not job.status.is_terminal():
            return self._stop_early(context, job, outcome)
        if outcome.status == OVER_BUDGET and not job.status.is_terminal():
            return self._stop_over_budget(context, job, outcome)
        if outcome.status not in TERMINAL and outcome.status not in (EARLY_STOPPED, OVER_BUDGET):
            raise FineTuningError(f"Unexpected status {outcome.status!r} for job {job.id}")
        if outcome.status in TERMINAL and not job.status.is_terminal():
            # The wait read the end from the service's list; the job's own record has not ended: it is believed.
            self.log.warning(
                "The service listed job %s as %s, but its own record says %s: waiting on",
                job.id,
                outcome.status,
                job.status.value,
            )
            return self._wait(context, job, deadline, self._early_stopping_rule(), budget)
        return self._finish(context, job)

    def _early_stopping_rule(self) -> EarlyStopping | None:
        """The early-stopping rule, checked against the request and the service before anything is sent."""
        from airflow_provider_finetune.exceptions import InvalidRequestError
        from airflow_provider_finetune.rules.early_stopping import EarlyStopping

        rule = EarlyStopping.of(self.early_stopping)
        if rule is None:
            return None
        if rule.metric.startswith(("valid_", "full_valid_")) and not self.validation_file:
            raise InvalidRequestError(
                f"early_stopping.metric {rule.metric!r} is a validation metric: the job needs a validation_file",
                field="validation_file",
            )
        # The result of a job stopped early is its best checkpoint, and stopping it is cancelling (or pausing) it.
        self.hook.require("checkpoints")
        self.hook.require("cancel")
        return rule

    def _stop_early(self, context: Context, job: FineTuningJob, outcome: Outcome) -> str | None:
        """Stop a job that ran out of patience (pause where asked and possible, else cancel); return its best model.

        A job that succeeded or failed before the stop reached it finishes as any job does.
        """
        from airflow_provider_finetune.hooks.actions import stop_early
        from airflow_provider_finetune.rules.early_stopping import EarlyStopping, ended_before_the_stop

        rule = EarlyStopping.of(self.early_stopping)
        assert rule is not None
        store = context.get("task_state_store")
        if store is not None:  # a retry after a crash from here on returns this job's best, not a new job's
            store.set(EARLY_STOPPED_KEY, {"job_id": job.id, "reason": outcome.message})
        job = stop_early(self.hook, job.id, rule, outcome.message, self.log)
        if ended_before_the_stop(job):  # its own end, not our stop: its result is its own, as for any job
            return self._finish(context, job)
        return self._return_best(context, job, rule, outcome.message)

    def _stopped_before(self, context: Context, rule: EarlyStopping) -> str | None:
        """The best model of the job an earlier try of this task instance stopped early (Airflow 3.3+), if any.

        Without it a retry after a crash between the stop and the XComs would find its job cancelled, and
        make a new one.
        """
        store = context.get("task_state_store")
        record = store.get(EARLY_STOPPED_KEY) if store is not None else None
        if not isinstance(record, Mapping) or not record.get("job_id"):
            return None
        job = self.hook.get_job(str(record["job_id"]))
        if job.status.value != "cancelled" and job.status.value not in statuses.PAUSED:
            return None  # resumed by a person since: this try waits for it as usual
        self.log.info("Job %s was stopped early by an earlier try of this task", job.id)
        self.job_id = job.id
        self._push_job(context, job)
        return self._return_best(context, job, rule, str(record.get("reason") or ""))

    def _return_best(self, context: Context, job: FineTuningJob, rule: EarlyStopping, reason: str) -> str:
        """Push what early stopping did and return the best checkpoint's model of a job it stopped."""
        from airflow_provider_finetune.exceptions import FineTuningError
        from airflow_provider_finetune.rules.checkpoints import best_checkpoint

        checkpoints = self._checkpoints(job)
        best = best_checkpoint([c for c in checkpoints if c.fine_tuned_model_checkpoint], rule.metric, rule.mode)
        if best is None or not best.fine_tuned_model_checkpoint:
            raise FineTuningError(f"Job {job.id} stopped early, but none of its checkpoints reports {rule.metric}")
        model: str = best.fine_tuned_model_checkpoint
        best_json = _checkpoint_json(best)
        ti = context["ti"]
        ti.xcom_push(key="status", value=job.status.value)
        ti.xcom_push(key="early_stopped", value=True)
        ti.xcom_push(key="early_stopping_reason", value=reason)
        ti.xcom_push(key="best_checkpoint", value=best_json)
        ti.xcom_push(key="checkpoints", value=[_checkpoint_json(c) for c in checkpoints])
        ti.xcom_push(key="trained_tokens", value=job.trained_tokens)
        ti.xcom_push(key="fine_tuned_model", value=model)
        self.log.info("Returning the best checkpoint of job %s: %s", job.id, model)
        return model

    def _checkpoints(self, job: FineTuningJob) -> list[Any]:
        if not self.hook.backend.supports("checkpoints"):
            return []
        return list(self.hook.iter_checkpoints(job.id, limit=100))

    def _stop_over_budget(self, context: Context, job: FineTuningJob, outcome: Outcome) -> str | None:
        """Cancel a job that has cost more than ``max_cost`` and fail the task, saying so, without retries.

        A job that succeeded or failed before the cancel reached it finishes as any job does.
        """
        from airflow_provider_finetune.hooks.actions import act_or_read
        from airflow_provider_finetune.rules.budget import BudgetExceededError
        from airflow_provider_finetune.rules.early_stopping import ended_before_the_stop

        job = act_or_read(self.hook, job.id, "cancel")
        if ended_before_the_stop(job):  # its own end, as a job read ended a moment earlier would have been
            self.log.warning("%s; job %s %s before the cancel reached it", outcome.message, job.id, job.status.value)
            return self._finish(context, job)
        context["ti"].xcom_push(key="status", value=job.status.value)
        cost = self._push_cost(context, job)
        cap = float(_number(self.max_cost))
        message = f"{outcome.message}: cancelled it ({job.status.value}); the task is not retried"
        raise BudgetExceededError(message, cost=cap if cost is None else cost, max_cost=cap)

    def _finish(self, context: Context, job: FineTuningJob) -> str | None:
        from airflow_provider_finetune.exceptions import FineTuningJobFailed

        ti = context["ti"]
        ti.xcom_push(key="status", value=job.status.value)
        self._push_cost(context, job)
        if job.status.value != statuses.SUCCEEDED:
            raise FineTuningJobFailed(
                job.id,
                job.status.value,
                _failure_message(job),
                code=job.error.code if job.error else None,
                param=job.error.param if job.error else None,
            )
        checkpoints = [_checkpoint_json(c) for c in self._checkpoints(job)]
        if self.early_stopping is not None:
            ti.xcom_push(key="early_stopped", value=False)
        ti.xcom_push(key="trained_tokens", value=job.trained_tokens)
        ti.xcom_push(key="result_files", value=list(job.result_files))
        ti.xcom_push(key="checkpoints", value=checkpoints)
        ti.xcom_push(key="fine_tuned_model", value=job.fine_tuned_model)
        for key in ("training_metrics", "validation_metrics"):  # services that report metrics on the job (Bedrock)
            if (job.model_extra or {}).get(key) is not None:
                ti.xcom_push(key=key, value=job.model_extra[key])  # type: ignore[index]
        reported = job.model_extra or {}
        early = {k: reported[k] for k in EARLY_STOPPING_FIELDS if reported.get(k) is not None}
        if early:
            ti.xcom_push(key="early_stopping", value=early)
        self._succeeded(context, job)
        self.log.info("Fine-tuning job %s succeeded: %s", job.id, job.fine_tuned_model)
        return job.fine_tuned_model

    # -- no retraining on unchanged data (skip_if_unchanged) -----------------------------------------------

    def _unless_unchanged(
        self, context: Context, request: CreateFineTuningJobRequest
    ) -> tuple[CreateFineTuningJobRequest, str | None]:
        """The last successful job's model when nothing changed; else the request, tagged with its data digest."""
        from airflow_provider_finetune.operators import unchanged as unchanged_reads
        from airflow_provider_finetune.rules import unchanged

        ti = context["ti"]
        digests, unknown = unchanged_reads.file_digests(self.hook, request, self._uploaded_digests(context))
        if unknown is not None:
            return self._train_because(ti, unknown, request), None
        digest = unchanged.data_digest(digests)
        fingerprint = unchanged.settings_fingerprint(request.to_body())
        ti.xcom_push(key=unchanged.DIGEST_KEY, value=digest)
        ti.xcom_push(key=unchanged.FINGERPRINT_KEY, value=fingerprint)
        backend = self.hook.backend
        if backend.supports("job_metadata"):
            limit = backend.limits.max_metadata_keys
            tagged = unchanged.tagged_metadata(request.metadata, digest, fingerprint, limit)
            request = request.model_copy(update={"metadata": tagged})
        if self._has_own_job(context):
            return self._train_because(
                ti, "an earlier try of this task instance made a job, which is reattached to", request
            ), None
        pulled = ti.xcom_pull(
            task_ids=ti.task_id, key=unchanged.RECORD_KEY, include_prior_dates=True, map_indexes=_map_index(ti)
        )
        record = unchanged.TrainingRecord.from_json(pulled)
        if record is None:
            return self._train_because(ti, "no earlier successful job of this task to compare with", request), None
        job, why = unchanged_reads.reuse_refusal(
            record,
            digest=digest,
            fingerprint=fingerprint,
            finetune_conn_id=self.finetune_conn_id,
            model=request.model,
            hook=self.hook,
        )
        if job is None:
            return self._train_because(ti, why, request), None
        self.log.info("Not training again, nothing paid: %s. Returning its model %s", why, job.fine_tuned_model)
        self.job_id = job.id
        self._push_job(context, job)
        ti.xcom_push(key=unchanged.REUSED_KEY, value=job.id)
        self._reused_job_id = job.id
        ti.xcom_push(key=unchanged.SKIPPED_KEY, value=why)
        return request, self._finish(context, job)

    def _train_because(self, ti: Any, why: str, request: CreateFineTuningJobRequest) -> CreateFineTuningJobRequest:
        """Say, in the log and XCom (``trained_because``), why this run trains instead of reusing a model."""
        from airflow_provider_finetune.rules.unchanged import TRAINED_KEY

        self.log.info("Training: %s", why)
        ti.xcom_push(key=TRAINED_KEY, value=why)
        return request

    def _uploaded_digests(self, context: Context) -> dict[str, Any]:
        """What the upstream upload tasks recorded of their files (content SHA-256, size), by file id."""
        from airflow_provider_finetune.rules.unchanged import FILE_DIGEST_KEY

        upstream = sorted(self.upstream_task_ids)
        if not upstream:
            return {}
        values = context["ti"].xcom_pull(task_ids=upstream, key=FILE_DIGEST_KEY)
        found: dict[str, Any] = {}
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, Mapping) and isinstance(value.get("file_id"), str):
                found[value["file_id"]] = value
        return found

    def _has_own_job(self, context: Context) -> bool:
        """Whether an earlier try of this task instance may have made a job (then it is reattached to, not skipped)."""
        if getattr(context["ti"], "try_number", 1) <= 1:
            return False
        if not self.hook.backend.supports("job_metadata"):
            return True  # no tag to look for: a retry never skips
        return self.hook.find_job_by_tag(task_tag(context)) is not None

    def _succeeded(self, context: Context, job: FineTuningJob) -> None:
        """Keep the job for lineage, and (``skip_if_unchanged``) the record the next run compares itself with."""
        self._returned_job = job
        if self.skip_if_unchanged:
            self._record_training(context, job)

    def _record_training(self, context: Context, job: FineTuningJob) -> None:
        """Leave the record the next run compares itself with: the job, its model, data digest and fingerprint."""
        from airflow_provider_finetune.rules import unchanged

        ti = context["ti"]
        digest, fingerprint = (
            ti.xcom_pull(task_ids=ti.task_id, key=key, map_indexes=_map_index(ti))
            for key in (unchanged.DIGEST_KEY, unchanged.FINGERPRINT_KEY)
        )
        if job.fine_tuned_model and isinstance(digest, str) and isinstance(fingerprint, str):
            record = unchanged.TrainingRecord(job.id, job.fine_tuned_model, digest, fingerprint, self.finetune_conn_id)
            ti.xcom_push(key=unchanged.RECORD_KEY, value=record.to_json())

    # -- lineage (called by apache-airflow-providers-openlineage's listener, when it is installed) ----------

    def get_openlineage_facets_on_start(self) -> OperatorLineage:
        """The training data as inputs, and the job's service, base model and hyperparameters as a run facet."""
        from airflow_provider_finetune.operators.lineage import operator_lineage

        return operator_lineage(self.hook, self.build_request(), job_id=self.job_id)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """As on start, with the fine-tuned model as output and the job's id and trained tokens."""
        from airflow_provider_finetune.operators.lineage import operator_lineage

        job = self._returned_job
        return operator_lineage(
            self.hook,
            self.build_request(),
            job_id=job.id if job is not None else self.job_id,
            fine_tuned_model=job.fine_tuned_model if job is not None else None,
            trained_tokens=job.trained_tokens if job is not None else None,
            reused_job_id=self._reused_job_id,
        )

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


#: A job's early-stopping results, pushed to XCom (``early_stopping``) when the service reports them.
EARLY_STOPPING_FIELDS = ("early_stopped", "early_stopping_best_step", "early_stopping_best_metric")
#: Key of the record, in the task state store, of a job this task instance stopped early.
EARLY_STOPPED_KEY = "early_stopped_job"


def _checkpoint_json(checkpoint: Any) -> dict[str, Any]:
    """A checkpoint as the ``checkpoints`` XCom carries it."""
    return {
        "id": checkpoint.id,
        "step_number": checkpoint.step_number,
        "fine_tuned_model_checkpoint": checkpoint.fine_tuned_model_checkpoint,
        "metrics": checkpoint.metrics.model_dump(mode="json", exclude_none=True) if checkpoint.metrics else {},
    }


def _map_index(ti: Any) -> int:
    index = getattr(ti, "map_index", -1)
    return -1 if index is None else int(index)


def _failure_message(job: FineTuningJob) -> str:
    text = f"Fine-tuning job {job.id} ended {job.status.value}"
    if job.error is not None:
        text += f": {job.error.describe()}"
    return text


def _count_or_none(value: Any, name: str) -> int | None:
    """A positive count as rendered (``"3"`` from a template), or ``None`` when not given."""
    from airflow_provider_finetune.exceptions import InvalidRequestError

    if value is None or value == "" or value == "None":
        return None
    number = _number(value)
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise InvalidRequestError(f"{name} must be a whole number of 1 or more, got {value!r}", field=name)
    return number


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


class _JobActionOperator(_FineTuningOperator):
    """Apply an action to a job by id, idempotently, and optionally wait for the state it leads to."""

    template_fields: Sequence[str] = ("job_id",)
    operator_extra_links = (FineTuningJobLink(),)
    #: The hook method that applies the action.
    action: str = ""
    #: The action in words, for messages.
    verb: str = ""
    #: Statuses in which the action has nothing left to do.
    done_statuses: frozenset[str] = frozenset()
    #: Statuses in which the action can no longer be applied: refused before any request is sent.
    refused_statuses: frozenset[str] = frozenset()
    #: Statuses the action leads to, that ``wait_for_completion`` waits for.
    target_statuses: frozenset[str] = frozenset()
    #: The action's rules, shared with the UI (:mod:`airflow_provider_finetune.rules.job_actions`); the attributes
    #: above are read from it when a subclass names its rule.
    rule: ActionRule = job_actions.CANCEL

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        rule = cls.rule
        cls.action, cls.verb, cls.capability = rule.method, rule.verb, rule.capability
        cls.done_statuses, cls.refused_statuses, cls.target_statuses = rule.done, rule.refused, rule.targets

    def __init__(
        self,
        *,
        job_id: str,
        finetune_conn_id: str = "finetune_default",
        wait_for_completion: bool = False,
        poll_interval: float = 10.0,
        timeout: float | timedelta | None = 600,
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.job_id = job_id
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.timeout = _seconds(timeout)

    def execute(self, context: Context) -> str:
        """Apply the action unless the job is already where it leads; return the job's status."""
        from airflow_provider_finetune.exceptions import ConflictError, FineTuningError
        from airflow_provider_finetune.hooks.waits import wait_sync
        from airflow_provider_finetune.rules.waiting import WAIT_ERROR, WAIT_TIMEOUT, watch

        self._no_job_yet()
        self._refuse_if_unsupported()
        job = self.hook.get_job(self.job_id)
        self._push_job(context, job)
        refused = job_actions.refusal(self.rule, job.id, job.status.value)
        if refused is not None:
            # Said here, in the job's own words, rather than as the service's 409 to the action.
            raise FineTuningError(refused)
        if job.status.value in self.done_statuses:
            self.log.info("Job %s is already %s: nothing to do", job.id, job.status)
        else:
            try:
                job = getattr(self.hook, self.action)(job.id)
            except ConflictError as err:
                # The job moved on between the read and the action: it ended, or another request (or an
                # attempt of this one whose answer was lost) got there first. Done if it is where it leads.
                job = self.hook.get_job(job.id)
                self._push_job(context, job)
                if job.status.value not in self.done_statuses:
                    refused = job_actions.refusal(self.rule, job.id, job.status.value)
                    if refused is not None:  # said in the job's own words, as for a job read so at first
                        raise FineTuningError(refused) from err
                    raise
                self.log.info("Job %s is already %s: nothing to do", job.id, job.status)
            else:
                self.log.info("Job %s: %s -> %s", job.id, self.action, job.status)
        status = job.status.value
        if self.wait_for_completion and status not in self.target_statuses:
            deadline = None if self.timeout is None else time.time() + self.timeout
            steps = watch(
                job.id,
                targets=self.target_statuses,
                deadline=deadline,
                poll_interval=self.poll_interval,
                log=self.log,
                events=self.hook.backend.supports("events"),
            )
            outcome = wait_sync(self.hook, job.id, steps)
            if outcome.status in (WAIT_ERROR, WAIT_TIMEOUT):
                raise FineTuningError(outcome.message)
            status = outcome.status
            if status not in self.target_statuses:
                raise FineTuningError(f"Job {job.id} became {status}, not {' or '.join(sorted(self.target_statuses))}")
        context["ti"].xcom_push(key="status", value=status)
        return status


class FineTuningJobCancelOperator(_JobActionOperator):
    """Cancel a fine-tuning job; a job that has already ended (succeeded, failed, cancelled) is left as it is.

    The return value (and the XCom ``status``) is the job's status: ``cancelled``, or the status it had
    already ended with.

    :param job_id: the job (templated).
    :param finetune_conn_id: the connection.
    :param wait_for_completion: wait until the job has ended (``cancelled``, or another end it reached first).
    :param poll_interval: seconds between polls while waiting.
    :param timeout: how long to wait.
    """

    rule = job_actions.CANCEL


class FineTuningJobPauseOperator(_JobActionOperator):
    """Pause a fine-tuning job; pausing a paused (or pausing) job is fine.

    A job that has ended (succeeded, failed, cancelled) cannot be paused: the task fails with a message
    naming the job and its status, and no pause request is sent.

    :param job_id: the job (templated).
    :param finetune_conn_id: the connection.
    :param wait_for_completion: wait until the job is ``paused``; a job that ends instead fails the task.
    :param poll_interval: seconds between polls while waiting.
    :param timeout: how long to wait.
    """

    rule = job_actions.PAUSE


class FineTuningJobResumeOperator(_JobActionOperator):
    """Resume a paused fine-tuning job; resuming a job that is validating, queued or running is fine.

    A job that has ended (succeeded, failed, cancelled) cannot be resumed: the task fails with a message
    naming the job and its status, and no resume request is sent.

    :param job_id: the job (templated).
    :param finetune_conn_id: the connection.
    :param wait_for_completion: wait until the job runs (``running``) or ends; ``queued`` is still waited
        through. The task returns ``running`` or ``succeeded``; a job that ends failed or cancelled fails it.
    :param poll_interval: seconds between polls while waiting.
    :param timeout: how long to wait; a job still queued when it passes fails the task.
    """

    rule = job_actions.RESUME


# -- files ---------------------------------------------------------------------------------------------------

# A source given as text with a scheme (``s3://``, ``gs://``, ``file://``...) is read through ObjectStoragePath.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


if TYPE_CHECKING:
    from airflow_provider_finetune.models import FileObject

#: Key of the upload intent in the task state store (Airflow 3.3+), which outlives the tries of a task instance.
UPLOAD_INTENT_KEY = "upload_intent"
#: Seconds of clock difference allowed between this worker and the service when comparing ``created_at``.
UPLOAD_CLOCK_SLACK = 300


class _UploadIntent:
    """What one upload is about to send, recorded before it is sent: the proof a found file is checked against.

    :param filename: the name the service records.
    :param size: the file's size in bytes.
    :param sha256: the content's SHA-256, hex.
    :param purpose: the file's purpose.
    :param since: when the task instance first set out to upload this content (seconds since the epoch).
    :param file_id: the file it became, once known.
    """

    __slots__ = ("file_id", "filename", "purpose", "sha256", "since", "size")

    def __init__(
        self, filename: str, size: int, sha256: str, purpose: str, since: float, file_id: str | None = None
    ) -> None:
        self.filename = filename
        self.size = size
        self.sha256 = sha256
        self.purpose = purpose
        self.since = since
        self.file_id = file_id

    def to_json(self) -> dict[str, Any]:
        """The intent as JSON primitives, for the task state store."""
        record: dict[str, Any] = {
            "filename": self.filename,
            "bytes": self.size,
            "sha256": self.sha256,
            "purpose": self.purpose,
            "since": self.since,
        }
        if self.file_id is not None:
            record["file_id"] = self.file_id
        return record

    @classmethod
    def from_json(cls, record: Any) -> _UploadIntent | None:
        """The intent a try recorded; ``None`` for anything that is not one (an older or damaged record)."""
        if not isinstance(record, Mapping):
            return None
        try:
            file_id = record.get("file_id")
            return cls(
                filename=str(record["filename"]),
                size=int(record["bytes"]),
                sha256=str(record["sha256"]),
                purpose=str(record["purpose"]),
                since=float(record["since"]),
                file_id=str(file_id) if file_id else None,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def same_upload(self, other: _UploadIntent) -> bool:
        """Whether ``other`` sends the same content under the same name and purpose."""
        return (self.filename, self.size, self.sha256, self.purpose) == (
            other.filename,
            other.size,
            other.sha256,
            other.purpose,
        )

    def proves(self, file: Any, now: float) -> bool:
        """Whether the service's own fields of ``file`` show it is this upload, made since it was first tried.

        The name, size and purpose must be the ones sent, and the file made inside the window (with
        :data:`UPLOAD_CLOCK_SLACK` either side for clocks that disagree). The content itself is proven by
        the digest: the name's (``digest_in_filename``), or the recorded intent's, matched before calling.
        """
        created = file.created_at
        return (
            file.filename == self.filename
            and file.bytes == self.size
            and file.purpose == self.purpose
            and file.status not in ("error", "deleted")
            and created is not None
            and self.since - UPLOAD_CLOCK_SLACK <= created <= now + UPLOAD_CLOCK_SLACK
        )


def _digest_filename(name: str, sha256: str) -> str:
    """``train.jsonl`` -> ``train.<first 16 hex of the SHA-256>.jsonl``: the suffix (and the MIME type) kept."""
    path = PurePath(name)
    if path.suffix:
        return f"{path.stem}.{sha256[:16]}{path.suffix}"
    return f"{name}.{sha256[:16]}"


def _timestamp(value: Any) -> float | None:
    """A datetime (or pendulum) as seconds since the epoch; ``None`` when there is none."""
    stamp = getattr(value, "timestamp", None)
    return float(stamp()) if callable(stamp) else None


class FineTuningFileUploadOperator(_FineTuningOperator):
    """Check a JSONL training file for its fine-tuning method, then upload it; return the file id.

    The file is checked before anything is sent: a bad file fails the task with a message that names each
    bad line and what is wrong with it, and nothing is uploaded. Files larger than the hook's threshold
    (512 MB) go through the Uploads API in parts.

    One upload per task instance: an upload whose answer was lost is not sent again blindly. Before
    sending, the operator records what it sends (name, size, SHA-256, time) in the task state store
    (Airflow 3.3+); when an answer is lost, and on a retry of the task, it lists the files made since then
    and adopts one only when the service's own fields (name, size, purpose, creation time) match that
    record. With ``digest_in_filename`` the name itself carries the digest, which proves the content
    without the state store (Airflow 3.1).

    XComs: the return value is the file id; ``file_id``, ``bytes``, ``examples`` and ``estimated_tokens``
    (one epoch, estimated without a tokenizer) are pushed too; the last two are ``None`` when the file
    was not checked.

    :param source: the file (templated): a local path, an ``ObjectStoragePath`` (or any object with
        ``open("rb")``), or a URL that ``ObjectStoragePath`` understands (``s3://bucket/train.jsonl``,
        ``file:///data/train.jsonl``). The stream must be seekable: it is read more than once.
    :param purpose: the file's purpose (templated); only ``fine-tune`` files are checked.
    :param method: the fine-tuning method the file is for (templated): ``supervised``, ``dpo`` or
        ``reinforcement``.
    :param validate: check the file before uploading it.
    :param min_examples: fewest examples the file must hold (the service requires 10 for a training file).
    :param filename: the name the service records (templated); the source's name by default.
    :param digest_in_filename: put the first 16 hex digits of the content's SHA-256 in the recorded name
        (``train.<digest>.jsonl``), so that a retry can prove a found file holds this content.
    :param finetune_conn_id: the connection.
    """

    template_fields: Sequence[str] = ("source", "purpose", "method", "filename")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        source: Any,
        purpose: str = "fine-tune",
        method: str = "supervised",
        validate: bool = True,
        min_examples: int = 10,
        filename: str | None = None,
        digest_in_filename: bool = False,
        finetune_conn_id: str = "finetune_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.source = source
        self.purpose = purpose
        self.method = method
        self.validate = validate
        self.min_examples = min_examples
        self.filename = filename
        self.digest_in_filename = digest_in_filename

    def render_template(
        self,
        content: Any,
        context: Context,
        jinja_env: Any = None,
        seen_oids: set[int] | None = None,
    ) -> Any:
        """Render templated fields; a local ``pathlib`` path is kept as it is.

        Airflow 3.1 "renders" any object with a ``resolve`` method by calling it, which for a path means
        ``Path.resolve(strict=True)``: a missing file would fail the rendering and a symlink would be
        replaced by its target (and its name).
        """
        if isinstance(content, PurePath):
            return content
        return super().render_template(content, context, jinja_env, seen_oids)

    def execute(self, context: Context) -> str:
        """Check the file, upload it (or adopt the upload a lost answer left), push what it holds; return its id."""
        from airflow_provider_finetune.exceptions import InvalidRequestError
        from airflow_provider_finetune.training_data import METHODS, validate_file

        if self.method not in METHODS:
            raise InvalidRequestError(
                f"method must be one of {', '.join(METHODS)}, got {self.method!r}", field="method"
            )
        method = cast("Method", self.method)
        stream, name = self._open()
        try:
            start = stream.tell()
            examples: int | None = None
            tokens: int | None = None
            if self.validate and self.purpose == "fine-tune":
                report = validate_file(
                    stream,
                    method=method,
                    min_examples=self.min_examples,
                    name=name,
                    rules=self.hook.backend.training_data_rules,
                )
                examples, tokens = report.examples, report.tokens
                self.log.info(
                    "%s is valid %s training data (%s format): %d examples, about %d tokens per epoch "
                    "(longest example about %d tokens)",
                    name,
                    report.method,
                    report.format,
                    report.examples,
                    report.tokens,
                    report.max_example_tokens,
                )
            elif self.validate:
                self.log.info("Not checking %s: only files for the fine-tune purpose are checked", name)
            from airflow_provider_finetune.core.digests import content_digest

            size, sha256 = content_digest(stream, start)
            if size == 0:
                raise InvalidRequestError(f"{name} is empty", field="file")
            if self.hook.backend.file_reference == "dataset":
                # A dataset is named by its content's digest: a retry, or an answer lost, finds the same one.
                stream.seek(start)
                dataset = cast("Any", self.hook.backend).upload_dataset(self.hook, stream, name, size, sha256, examples)
                self.log.info("Uploaded %s (%d bytes) as dataset %s, ready for training", name, size, dataset)
                return self._pushed(context, dataset, size, sha256, examples, tokens)
            self.hook.upload_route(size, name)  # a file the service cannot take is refused before any request
            recorded = _digest_filename(name, sha256) if self.digest_in_filename else name
            intent = _UploadIntent(recorded, size, sha256, self.purpose, since=time.time())
            uploaded = self._made_before(context, intent)
            if uploaded is None:
                self._record(context, intent)
                uploaded = self._upload(stream, start, intent)
                self.log.info("Uploaded %s (%d bytes) as %s", recorded, size, uploaded.id)
            intent.file_id = uploaded.id
            self._record(context, intent)
        finally:
            stream.close()
        return self._pushed(
            context, uploaded.id, uploaded.bytes if uploaded.bytes is not None else size, sha256, examples, tokens
        )

    @staticmethod
    def _pushed(
        context: Context, file_id: str, size: int, sha256: str, examples: int | None, tokens: int | None
    ) -> str:
        """Push what the upload made and holds; return the file id (or dataset name)."""
        ti = context["ti"]
        ti.xcom_push(key="file_id", value=file_id)
        ti.xcom_push(key="bytes", value=size)
        ti.xcom_push(key="examples", value=examples)
        ti.xcom_push(key="estimated_tokens", value=tokens)
        # The content's digest with the file id: a create task with skip_if_unchanged compares data by it.
        ti.xcom_push(key="file_digest", value={"file_id": file_id, "sha256": sha256, "bytes": size})
        return file_id

    # -- once-only upload ----------------------------------------------------------------------------------

    def _made_before(self, context: Context, intent: _UploadIntent) -> FileObject | None:
        """The file an earlier try of this task instance made of this content, if the service shows it.

        Looked for only when an earlier try set out to upload the same content (its intent is in the state
        store), or, with the digest in the name, on any retry (since the DAG run started). ``intent.since``
        becomes the first try's time.
        """
        from airflow_provider_finetune.exceptions import NotFoundError

        store = context.get("task_state_store")
        earlier = _UploadIntent.from_json(store.get(UPLOAD_INTENT_KEY)) if store is not None else None
        if earlier is not None and earlier.same_upload(intent):
            intent.since = min(intent.since, earlier.since)
            if earlier.file_id:
                try:
                    file = self.hook.get_file(earlier.file_id)
                except NotFoundError:
                    file = None  # deleted since: upload again
                if file is not None and intent.proves(file, time.time()):
                    self.log.info("Reusing %s, uploaded by an earlier try of this task", file.id)
                    return file
        elif self.digest_in_filename and getattr(context["ti"], "try_number", 1) > 1:
            dag_run = context.get("dag_run")
            started = _timestamp(getattr(dag_run, "start_date", None))
            if started is None:
                return None
            intent.since = min(intent.since, started)
        else:
            return None
        found = self._find(intent)
        if found is not None:
            self.log.info("Adopting %s, uploaded by an earlier try of this task whose answer was lost", found.id)
        return found

    def _record(self, context: Context, intent: _UploadIntent) -> None:
        """Keep the intent where the next try finds it: the task state store, when Airflow has one."""
        store = context.get("task_state_store")
        if store is not None:
            store.set(UPLOAD_INTENT_KEY, intent.to_json())

    def _find(self, intent: _UploadIntent) -> FileObject | None:
        """The file the service holds for this intent: listed, and proven by its own fields."""
        now = time.time()
        matches = []
        for file in self.hook.iter_files(purpose=intent.purpose):
            if file.created_at is not None and file.created_at < intent.since - UPLOAD_CLOCK_SLACK:
                break  # the list is newest first: the rest is older still
            if intent.proves(file, now):
                matches.append(file)
        if not matches:
            return None
        if len(matches) > 1 and not self.digest_in_filename:
            # Without the digest in the name, two candidates mean one may be someone else's: adopt neither.
            self.log.warning(
                "%d files named %s of %d bytes were made since this task first tried (%s): not adopting any",
                len(matches),
                intent.filename,
                intent.size,
                ", ".join(file.id for file in matches),
            )
            return None
        matches.sort(key=lambda file: (file.created_at or 0, file.id))
        if len(matches) > 1:
            self.log.warning(
                "Copies of %s were made by lost answers; keeping %s, not using %s",
                intent.filename,
                matches[0].id,
                ", ".join(file.id for file in matches[1:]),
            )
        return matches[0]

    def _upload(self, stream: IO[bytes], start: int, intent: _UploadIntent) -> FileObject:
        """Upload once: after an answer that may have been lost, look for the file before sending again."""
        from airflow_provider_finetune.exceptions import FineTuningError, InvalidRequestError, UnsafeToRetryError

        hook = self.hook
        in_parts = hook.upload_route(intent.size, intent.filename) != "single"
        resends = 0
        while True:
            try:
                # The hook sends POST /files and the Uploads API's complete as creates: never again when
                # the service may have handled them (UnsafeToRetryError, caught below).
                stream.seek(start)
                return hook.upload_file(stream, purpose=intent.purpose, filename=intent.filename)
            except InvalidRequestError:
                raise
            except FineTuningError as err:
                # POST /files is sent as a create (never re-sent by the client when it may have been
                # handled); the Uploads API may have completed before anything went wrong.
                if not in_parts and not isinstance(err, UnsafeToRetryError):
                    raise
                self.log.warning(
                    "The upload of %s may have reached the service (%s); looking for it", intent.filename, err
                )
                try:
                    found = self._find(intent)
                except FineTuningError as lookup:
                    self.log.warning("Could not look for the upload of %s: %s", intent.filename, lookup)
                    raise err from None
                if found is not None:
                    self.log.info("Adopting %s, made by the upload whose answer was lost", found.id)
                    return found
                if in_parts or resends >= hook.settings.max_retries:
                    raise
                delay = hook.retry_policy.backoff(resends)
                resends += 1
                self.log.info("%s is not on the service; sending it again in %.1f s", intent.filename, delay)
                time.sleep(delay)

    def _open(self) -> tuple[IO[bytes], str]:
        """Open the source for reading; the name is the one given, else the source's own."""
        stream, name = open_source(self.source, field="source")
        return stream, self.filename or name


def open_source(source: Any, *, field: str) -> tuple[IO[bytes], str]:
    """Open a file for reading bytes; return it and its own name.

    :param source: a local path, a URL that ``ObjectStoragePath`` understands, or an object with ``open()``.
    :param field: the argument it was given as, for the error.
    :raises InvalidRequestError: naming ``field``, when it cannot be read.
    """
    from airflow_provider_finetune.exceptions import InvalidRequestError

    if isinstance(source, str) and _URL.match(source):
        from airflow.sdk import ObjectStoragePath

        source = ObjectStoragePath(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            return path.open("rb"), path.name
        except OSError as err:
            raise InvalidRequestError(f"cannot read {path}: {err.strerror or err}", field=field) from err
    opener = getattr(source, "open", None)
    if not callable(opener):
        raise InvalidRequestError(
            f"{field} must be a path, a URL or an object with open(), got {type(source).__name__}", field=field
        )
    try:
        stream = opener("rb")
    except OSError as err:
        raise InvalidRequestError(f"cannot read {source}: {err.strerror or err}", field=field) from err
    own_name = getattr(source, "name", None)
    return stream, own_name if isinstance(own_name, str) and own_name else "data.jsonl"


# -- checkpoint permissions ------------------------------------------------------------------------------------


def _ids(value: Any, name: str) -> list[str]:
    """One id or a list of ids (as rendered), without duplicates, in the order given."""
    from airflow_provider_finetune.exceptions import InvalidRequestError

    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset) or not all(
        isinstance(item, str) and item.strip() for item in items
    ):
        raise InvalidRequestError(f"{name} must be a list of non-empty strings, got {value!r}", field=name)
    return list(dict.fromkeys(item.strip() for item in items))


def _checkpoint_name(value: Any) -> str:
    from airflow_provider_finetune.exceptions import InvalidRequestError

    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(
            f"checkpoint must be a fine-tuned model checkpoint name, got {value!r}", field="checkpoint"
        )
    return value.strip()


class FineTuningCheckpointPermissionOperator(_FineTuningOperator):
    """Share a fine-tuned model checkpoint with projects; projects that already have it are left alone.

    Idempotent: the checkpoint's permissions are listed first and a permission is only created for the
    projects that have none, so a retry or a second run creates nothing new. Needs an admin API key.

    XComs: the return value is the list of permission ids, one per requested project, in their order
    (existing and new alike); ``permissions`` maps each project to its permission id.

    :param checkpoint: the fine-tuned model checkpoint (templated), e.g. ``ft:gpt-4o-mini:org:sfx:abc:ckpt-step-10``.
    :param project_ids: the projects to share it with (templated); one id or a list.
    :param finetune_conn_id: the connection.
    """

    capability = "checkpoint_permissions"
    template_fields: Sequence[str] = ("checkpoint", "project_ids")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        checkpoint: str,
        project_ids: list[str] | str,
        finetune_conn_id: str = "finetune_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.checkpoint = checkpoint
        self.project_ids = project_ids

    def execute(self, context: Context) -> list[str]:
        """Create the missing permissions; return every requested project's permission id."""
        self._refuse_if_unsupported()
        from airflow_provider_finetune.exceptions import FineTuningError
        from airflow_provider_finetune.models import CreateCheckpointPermissionRequest, build_request

        checkpoint = _checkpoint_name(self.checkpoint)
        projects = _ids(self.project_ids, "project_ids")
        build_request(CreateCheckpointPermissionRequest, project_ids=projects)  # refuse bad ids before I/O
        permissions: dict[str, str] = {}
        for existing in self.hook.iter_checkpoint_permissions(checkpoint, limit=100):
            if existing.project_id in projects:
                permissions.setdefault(existing.project_id, existing.id)
        missing = [project for project in projects if project not in permissions]
        if permissions:
            self.log.info("%s is already shared with %s", checkpoint, ", ".join(sorted(permissions)))
        if missing:
            made = self.hook.create_checkpoint_permissions(checkpoint, missing)
            for created in made.data:
                if created.project_id in missing:
                    permissions.setdefault(created.project_id, created.id)
            self.log.info("Shared %s with %s", checkpoint, ", ".join(missing))
        absent = [project for project in projects if project not in permissions]
        if absent:
            raise FineTuningError(f"The service made no permission of {checkpoint} for {', '.join(absent)}")
        context["ti"].xcom_push(key="permissions", value={p: permissions[p] for p in projects})
        return [permissions[project] for project in projects]


class FineTuningCheckpointPermissionRevokeOperator(_FineTuningOperator):
    """Revoke permissions of a fine-tuned model checkpoint, by project or by permission id.

    Idempotent: revoking a permission that does not exist (or no longer does) is fine. Needs an admin
    API key. The return value is the list of the permission ids deleted by this run.

    :param checkpoint: the fine-tuned model checkpoint (templated).
    :param project_ids: revoke the permissions of these projects (templated).
    :param permission_ids: revoke these permissions (templated), e.g. what
        :class:`FineTuningCheckpointPermissionOperator` returned.
    :param finetune_conn_id: the connection.
    """

    capability = "checkpoint_permissions"
    template_fields: Sequence[str] = ("checkpoint", "project_ids", "permission_ids")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        checkpoint: str,
        project_ids: list[str] | str | None = None,
        permission_ids: list[str] | str | None = None,
        finetune_conn_id: str = "finetune_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        if project_ids is None and permission_ids is None:
            from airflow_provider_finetune.exceptions import InvalidRequestError

            raise InvalidRequestError("give project_ids or permission_ids to revoke", field="project_ids")
        self.checkpoint = checkpoint
        self.project_ids = project_ids
        self.permission_ids = permission_ids

    def execute(self, context: Context) -> list[str]:
        """Delete the matching permissions that exist; return the ids deleted."""
        self._refuse_if_unsupported()
        from airflow_provider_finetune.exceptions import FineTuningError, NotFoundError

        checkpoint = _checkpoint_name(self.checkpoint)
        projects = set(_ids(self.project_ids, "project_ids")) if self.project_ids is not None else set()
        wanted = set(_ids(self.permission_ids, "permission_ids")) if self.permission_ids is not None else set()
        matching = [
            permission
            for permission in self.hook.iter_checkpoint_permissions(checkpoint, limit=100)
            if permission.id in wanted or permission.project_id in projects
        ]
        deleted: list[str] = []
        for permission in matching:
            try:
                answer = self.hook.delete_checkpoint_permission(checkpoint, permission.id)
            except NotFoundError:
                self.log.info("Permission %s of %s is already gone", permission.id, checkpoint)
                continue
            if not answer.deleted or answer.id != permission.id:  # the service's own answer says what it did
                raise FineTuningError(
                    f"Revoking permission {permission.id} ({permission.project_id}) of {checkpoint}: the service "
                    f"answered {answer.id} deleted={answer.deleted}; the permission may still be in force"
                )
            deleted.append(permission.id)
            self.log.info("Revoked permission %s (%s) of %s", permission.id, permission.project_id, checkpoint)
        seen = {p.id for p in matching} | {p.project_id for p in matching}
        absent = sorted((projects | wanted) - seen)
        if absent:
            self.log.info("Nothing to revoke for %s: no such permission of %s", ", ".join(absent), checkpoint)
        return deleted


# -- graders -------------------------------------------------------------------------------------------------


class _GraderOperator(_GraderTemplates, _FineTuningOperator):
    """Renders graders without mistaking their placeholders for Jinja, and validates them locally."""

    capability = "graders"

    grader: dict[str, Any] | str

    def _grader(self) -> dict[str, Any]:
        """The grader checked by the models, as the body sends it; a bad one raises before any request."""
        import json

        from airflow_provider_finetune.exceptions import InvalidRequestError
        from airflow_provider_finetune.models import ValidateGraderRequest, build_request

        grader: Any = self.grader
        if isinstance(grader, str):
            try:
                grader = json.loads(grader)
            except ValueError as err:
                raise InvalidRequestError(f"grader is not a JSON object: {err}", field="grader") from None
        body: dict[str, Any] = build_request(ValidateGraderRequest, grader=grader).to_body()["grader"]
        return body


class FineTuningGraderValidateOperator(_GraderOperator):
    """Check a grader: first locally against the models, then with the service; return it as validated.

    A grader that breaks a rule fails the task with a message naming the field, and nothing is sent. The
    grader's own placeholders (``{{sample.output_text}}``, ``{{item.label}}``) and a python grader's
    ``source`` are left as they are when the field is rendered.

    :param grader: the grader (templated): a dict, or its JSON text.
    :param finetune_conn_id: the connection.
    """

    template_fields: Sequence[str] = ("grader",)
    template_fields_renderers = {"grader": "json"}
    ui_color = "#e8f0fe"

    def __init__(
        self, *, grader: dict[str, Any] | str, finetune_conn_id: str = "finetune_default", **kwargs: Any
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.grader = grader

    def execute(self, context: Context) -> dict[str, Any]:
        """Validate the grader locally, then with the service; return the grader as a dict."""
        self._refuse_if_unsupported()
        body = self._grader()
        validated = self.hook.validate_grader(body).grader
        self.log.info("Grader %s (%s) is valid", body.get("name"), body.get("type"))
        if validated is None:
            return body
        if isinstance(validated, dict):
            return validated
        result: dict[str, Any] = validated.to_body()
        return result


class FineTuningGraderRunOperator(_GraderOperator):
    """Run a grader on samples and return the mean reward; fail on a grader error or a low mean.

    The grader and every sample are checked before the first run; the runs stop at the first sample whose
    run reports an error (a parse error, a python grader's runtime error...), since such errors usually
    repeat and model graders cost money.

    XComs: the return value is the mean reward; ``rewards`` (one per sample, in order) and
    ``mean_reward`` are pushed too, also when the mean is below ``min_mean_reward``.

    :param grader: the grader (templated): a dict, or its JSON text.
    :param samples: the samples (templated): ``[{"model_sample": "...", "item": {...}}, ...]``; ``item`` is
        optional.
    :param min_mean_reward: fail the task when the mean reward is below this.
    :param finetune_conn_id: the connection.
    """

    template_fields: Sequence[str] = ("grader", "samples")
    template_fields_renderers = {"grader": "json", "samples": "json"}
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        grader: dict[str, Any] | str,
        samples: list[dict[str, Any]],
        min_mean_reward: float | None = None,
        finetune_conn_id: str = "finetune_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.grader = grader
        self.samples = samples
        self.min_mean_reward = min_mean_reward

    def execute(self, context: Context) -> float:
        """Run the grader on each sample, push the rewards; return their mean."""
        self._refuse_if_unsupported()
        from airflow_provider_finetune.exceptions import FineTuningError

        grader = self._grader()
        samples = self._samples(grader)
        rewards: list[float] = []
        for index, (model_sample, item) in enumerate(samples):
            result = self.hook.run_grader(grader, model_sample, item)
            errors = result.metadata.errors if result.metadata else None
            failed = errors.failed() if errors else []
            if errors is not None and failed:
                details = [
                    f"{name}: {value}"
                    for name, value in {**errors.__dict__, **(errors.model_extra or {})}.items()
                    if isinstance(value, str) and value
                ]
                raise FineTuningError(
                    f"Grader {grader.get('name')!r} failed on samples[{index}]: {', '.join(failed)}"
                    + (f" ({'; '.join(details)})" if details else "")
                )
            if result.reward is None:
                raise FineTuningError(f"Grader {grader.get('name')!r} gave no reward for samples[{index}]")
            rewards.append(result.reward)
            self.log.info("samples[%d]: reward %s", index, result.reward)
        mean = sum(rewards) / len(rewards)
        ti = context["ti"]
        ti.xcom_push(key="rewards", value=rewards)
        ti.xcom_push(key="mean_reward", value=mean)
        self.log.info("Mean reward of grader %r over %d samples: %s", grader.get("name"), len(rewards), mean)
        if self.min_mean_reward is not None and mean < float(self.min_mean_reward):
            raise FineTuningError(
                f"The mean reward {mean:.4f} of grader {grader.get('name')!r} over {len(rewards)} samples is "
                f"below min_mean_reward {float(self.min_mean_reward)}"
            )
        return mean

    def _samples(self, grader: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
        """The samples, each checked as a run request; the message names the sample."""
        from airflow_provider_finetune.exceptions import InvalidRequestError
        from airflow_provider_finetune.models import RunGraderRequest, build_request

        samples = self.samples
        if not isinstance(samples, list | tuple) or not samples:
            raise InvalidRequestError(f"samples must be a non-empty list, got {samples!r}"[:200], field="samples")
        checked = []
        for index, sample in enumerate(samples):
            where = f"samples[{index}]"
            if not isinstance(sample, Mapping):
                raise InvalidRequestError(f"{where} must be a mapping, got {type(sample).__name__}", field=where)
            unknown = sorted(set(sample) - {"model_sample", "item"})
            if unknown:
                raise InvalidRequestError(
                    f"{where} has unknown keys {', '.join(map(str, unknown))}; a sample has model_sample and item",
                    field=where,
                )
            try:
                request = build_request(
                    RunGraderRequest, grader=grader, model_sample=sample.get("model_sample"), item=sample.get("item")
                )
            except InvalidRequestError as err:
                field = f"{where}.{err.field}" if err.field else where
                raise InvalidRequestError(f"{where}: {err.message}", field=field) from None
            checked.append((request.model_sample, request.item))
        return checked
