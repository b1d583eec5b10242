"""The job operator's budget policy: the service's price before the create, ``max_cost``, and the cost at the end.

Before the create, the request and the service's options are checked as the backend will send them (what cannot
be sent is refused by name), and the service is asked its price where it estimates one (Together): the task fails
before the create when the service says the account may not proceed, and without retries when it refuses the
create itself for the account (billing or access). With ``max_cost``, the job's cost is estimated (tokens per
epoch x epochs x ``price_per_million_tokens``, or the service's own estimate where it makes one): above
``max_cost`` the task fails before anything is billed, with the estimate in the message. While the job runs, the
wait watches its trained tokens (or the cost the service reports): past ``max_cost`` the job is cancelled and the
task fails without retries. XComs: ``price_estimate`` and ``estimated_cost`` with the job, ``total_price`` (the
cost as the job ended) when it ends. The rules are in :mod:`airflow_provider_finetune.rules.budget`.

Importing this module is cheap: the hook, httpx and pydantic are only imported when a task runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.core.templating import number
from airflow_provider_finetune.operators.job.policy import Create, Done, JobPolicy, JobRun

if TYPE_CHECKING:
    from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJob
    from airflow_provider_finetune.rules.budget import Budget
    from airflow_provider_finetune.rules.waiting import Outcome

__all__ = ["BudgetPolicy"]


class BudgetPolicy(JobPolicy):
    """The price before the create, the ``max_cost`` cap before and during the job, the cost at its end.

    :param model: the base model (its price, when the job names no model).
    :param service_options: the options only the connection's service has.
    :param max_cost: the most the job may cost (as rendered), or ``None``.
    :param price_per_million_tokens: a number, a mapping from base model to price, or a callable.
    :param training_tokens: estimated tokens of one epoch (as rendered); else the training file is counted.
    :param training_examples: examples in the training file (as rendered).
    """

    def __init__(
        self,
        model: str,
        service_options: dict[str, Any] | None = None,
        max_cost: float | str | None = None,
        price_per_million_tokens: float | Mapping[str, float] | Callable[[str], float] | None = None,
        training_tokens: int | str | None = None,
        training_examples: int | str | None = None,
    ) -> None:
        self.model, self.service_options, self.max_cost = model, service_options, max_cost
        self.price_per_million_tokens = price_per_million_tokens
        self.training_tokens, self.training_examples = training_tokens, training_examples
        #: The service's price estimate, asked before the create.
        self.priced: Any = None
        #: The budget the wait watches, once estimated (or carried across a deferral).
        self.budget: Budget | None = None
        self.estimated = False

    @property
    def outcomes(self) -> frozenset[str]:
        """The outcome this policy acts on."""
        from airflow_provider_finetune.rules.budget import OVER_BUDGET

        return frozenset({OVER_BUDGET})

    carried = ("budget",)

    def before_create(self, run: JobRun) -> Done | None:
        """Check the request as it will be sent, ask the service's price, refuse a job above ``max_cost``."""
        self.priced = self._price(run, run.request)
        self.budget = self._estimate(run, run.request, self.priced)
        self.estimated = True
        return None

    def around_create(self, run: JobRun, create: Create) -> tuple[FineTuningJob, bool]:
        """Create, then push the service's estimate with the job; an account the service will not bill fails."""
        from airflow_provider_finetune.exceptions import FineTuningNotAllowedError

        try:
            job, created = create()
        except FineTuningNotAllowedError as err:
            from airflow_provider_finetune.core.compat import AirflowFailException

            raise AirflowFailException(
                f"{run.hook.backend.label} will not fine-tune for this account until a person acts "
                f"(billing or access), so the task is not retried: {err}"
            ) from None
        if self.priced is not None:
            run.context["ti"].xcom_push(key="price_estimate", value=self.priced.to_xcom())
            if self.priced.estimated_total_price is not None:
                run.context["ti"].xcom_push(key="estimated_cost", value=self.priced.estimated_total_price)
        return job, created

    def wait_rules(self, run: JobRun) -> dict[str, Any]:
        """The budget the wait watches: the one estimated in this try, or the one carried across a deferral."""
        if not self.estimated:
            from airflow_provider_finetune.rules.budget import Budget

            self.budget, self.estimated = Budget.of(run.carried.get("budget")), True
        return {"budget": self.budget}

    def on_outcome(self, run: JobRun, job: FineTuningJob, outcome: Outcome) -> Done | None:
        """Cancel a job that has cost more than ``max_cost`` and fail the task, saying so, without retries.

        A job that succeeded or failed before the cancel reached it finishes as any job does.
        """
        if outcome.status not in self.outcomes or job.status.is_terminal():
            return None
        from airflow_provider_finetune.hooks.actions import act_or_read
        from airflow_provider_finetune.rules.budget import BudgetExceededError
        from airflow_provider_finetune.rules.early_stopping import ended_before_the_stop

        job = act_or_read(run.hook, job.id, "cancel")
        if ended_before_the_stop(job):  # its own end, as a job read ended a moment earlier would have been
            run.log.warning("%s; job %s %s before the cancel reached it", outcome.message, job.id, job.status.value)
            return Done(run.finish(job))
        run.context["ti"].xcom_push(key="status", value=job.status.value)
        cost = self._push_cost(run, job)
        cap = float(number(self.max_cost))
        message = f"{outcome.message}: cancelled it ({job.status.value}); the task is not retried"
        raise BudgetExceededError(message, cost=cap if cost is None else cost, max_cost=cap)

    def at_end(self, run: JobRun, job: FineTuningJob) -> None:
        """Push the job's cost as it ended."""
        self._push_cost(run, job)

    def _price(self, run: JobRun, request: CreateFineTuningJobRequest) -> Any:
        """Check the request and the service's options (no request sent); ask the price where the service can.

        Not asked again once the task's state store names this task instance's job (a retry reattaches to it).
        """
        backend = run.hook.backend
        backend.job_body(request, self.service_options)  # what cannot be sent is refused here, by name
        state = run.context.get("task_state_store")
        flow = backend.price_flow(request, self.service_options)
        if flow is None or (state is not None and state.get("job_id")):
            return None
        return run.hook.run_flow(flow)

    def _estimate(self, run: JobRun, request: CreateFineTuningJobRequest, priced: Any = None) -> Budget | None:
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
            tokens, examples = self._count_training_file(run, request)
        hook = run.hook
        backend = hook.backend
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
        elif (service := hook.estimate_price(request, service_options=self.service_options)) is not None:
            # the service's own estimate, where it makes one, is the one checked
            budget = replace(budget, service_estimate=service.total)
        run.context["ti"].xcom_push(key="estimated_cost", value=round(budget.estimated_cost, 6))
        budget.check_estimate()
        run.log.info("Estimated cost %s, within max_cost %g", budget.describe(), budget.max_cost)
        return budget

    @staticmethod
    def _count_training_file(run: JobRun, request: CreateFineTuningJobRequest) -> tuple[int, int]:
        """Tokens per epoch and examples of the training file, read back from the service and checked."""
        import io

        from airflow_provider_finetune.training_data import validate_file

        method = request.method.type if request.method is not None else "supervised"
        content = run.hook.get_file_content(request.training_file)
        report = validate_file(io.BytesIO(content), method=method, min_examples=1, name=request.training_file)
        run.log.info(
            "%s: %d examples, about %d tokens per epoch", request.training_file, report.examples, report.tokens
        )
        return report.tokens, report.examples

    def _push_cost(self, run: JobRun, job: FineTuningJob) -> float | None:
        """Push the job's cost as it ended (``total_price``): as the service reports it, or its tokens at the price."""
        from airflow_provider_finetune.rules.budget import final_cost, price_for

        price = (
            None
            if self.price_per_million_tokens is None
            else price_for(self.price_per_million_tokens, job.model or self.model)
        )
        cost = final_cost(job, price)
        if cost is not None:
            run.context["ti"].xcom_push(key="total_price", value=cost)
        return cost
