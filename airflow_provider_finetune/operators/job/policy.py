"""The job operator's policies: what it does besides creating one job and waiting for it, one concern a module.

Budget caps (:mod:`.budget`), early stopping (:mod:`.early_stopping`), quota waits (:mod:`.quota`), skipping
unchanged data (:mod:`.unchanged`), lineage (:mod:`.lineage`) and the wait's timeout (:mod:`.timeout`) each
implement :class:`JobPolicy`. The operator asks every policy, in its order, at the same points of a try:

* ``before_create``: the request is built and nothing is created yet; a policy may refuse (raise), replace
  ``run.request``, or end the try with a result (:class:`Done`);
* ``around_create``: wraps the create (the first policy outermost); a policy may wait before it, or make it again;
* ``wait_rules``: what the wait applies for the policy, named as the wait's and the trigger's parameters; the
  names in ``carried`` also go, as JSON, to the task's resume after a deferral (and come back in ``run.carried``);
* ``on_outcome``: the wait ended with a status; the policy acts on those it names in ``outcomes``, else returns
  ``None``;
* ``at_end``: the job ended, succeeded or not, and the task is about to return its model or fail.

A hook that returns :class:`Done` ends the try with its value; ``None`` lets the try go on.

Importing this module is cheap: it holds no Airflow operator and imports the hook and the models only for types;
the policies are plain classes, which cost less to define than dataclasses when a DAG file is parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJob, FineTuningJobCheckpoint
    from airflow_provider_finetune.rules.waiting import Outcome

__all__ = ["Create", "Done", "JobPolicy", "JobRun", "checkpoint_json", "job_checkpoints"]

#: The create a policy wraps: it returns the job and whether it was made now (else reattached to).
Create = Callable[[], "tuple[FineTuningJob, bool]"]


class Done:
    """A policy's result that ends the try: the task returns ``value`` (the model, or ``None``)."""

    __slots__ = ("value",)

    def __init__(self, value: str | None) -> None:
        self.value = value


class JobRun:
    """What one try of the job operator knows, shared by its policies.

    :param context: the task's context.
    :param hook: the connection's hook.
    :param log: the task's logger.
    :param finetune_conn_id: the connection's id.
    :param deadline: the absolute deadline of the try (seconds since the epoch), if any.
    :param show: make a job the task's job: its id (and page) go to XCom, before any wait.
    :param finish: end the task with a job that has ended: its XComs, then its model (or its failure).
    :param defer: hand the rest of the try to the triggerer (the operator's ``defer``).
    :param carried: what policies carried across a deferral (see :attr:`JobPolicy.carried`).
    :param reused_job_id: the earlier job whose model is returned without training, if any.
    """

    def __init__(
        self,
        *,
        context: Context,
        hook: FineTuningHook,
        log: Any,
        finetune_conn_id: str,
        deadline: float | None,
        show: Callable[[FineTuningJob], None],
        finish: Callable[[FineTuningJob], str | None],
        defer: Callable[..., NoReturn],
        carried: Mapping[str, Any] | None = None,
    ) -> None:
        self.context, self.hook, self.log, self.finetune_conn_id = context, hook, log, finetune_conn_id
        self.deadline, self.show, self.finish, self.defer = deadline, show, finish, defer
        self.carried: Mapping[str, Any] = carried or {}
        self.reused_job_id: str | None = None
        self._request: CreateFineTuningJobRequest | None = None

    @property
    def request(self) -> CreateFineTuningJobRequest:
        """The create request (built before the create; a try resumed after the wait has none)."""
        if self._request is None:
            raise RuntimeError("this try of the task has no create request")
        return self._request

    @request.setter
    def request(self, request: CreateFineTuningJobRequest) -> None:
        self._request = request


class JobPolicy:
    """One concern of the job operator, asked at fixed points of a try; each hook does nothing by default."""

    #: The names of :meth:`wait_rules` that go, as JSON, to the task's resume after a deferral.
    carried: ClassVar[tuple[str, ...]] = ()

    @property
    def outcomes(self) -> frozenset[str]:
        """The wait outcomes (statuses) this policy acts on in :meth:`on_outcome`, besides the job's own ends."""
        return frozenset()

    def before_create(self, run: JobRun) -> Done | None:
        """Before anything is created: check, change ``run.request``, or end the try."""
        return None

    def around_create(self, run: JobRun, create: Create) -> tuple[FineTuningJob, bool]:
        """Make the job through ``create``: wait before it, or make it again, as the policy needs."""
        return create()

    def wait_rules(self, run: JobRun) -> dict[str, Any]:
        """The rules the wait applies for this policy, by the wait's parameter name (each with ``to_json``)."""
        return {}

    def on_outcome(self, run: JobRun, job: FineTuningJob, outcome: Outcome) -> Done | None:
        """Act on the wait's outcome (the job as read after it); ``None`` lets the operator finish as usual."""
        return None

    def at_end(self, run: JobRun, job: FineTuningJob) -> None:
        """The job ended (succeeded or not): push or keep what the policy reports."""


def checkpoint_json(checkpoint: FineTuningJobCheckpoint) -> dict[str, Any]:
    """A checkpoint as the ``checkpoints`` XCom carries it."""
    return {
        "id": checkpoint.id,
        "step_number": checkpoint.step_number,
        "fine_tuned_model_checkpoint": checkpoint.fine_tuned_model_checkpoint,
        "metrics": checkpoint.metrics.model_dump(mode="json", exclude_none=True) if checkpoint.metrics else {},
    }


def job_checkpoints(hook: FineTuningHook, job: FineTuningJob) -> list[FineTuningJobCheckpoint]:
    """The job's checkpoints, where the service keeps them."""
    if not hook.backend.supports("checkpoints"):
        return []
    return list(hook.iter_checkpoints(job.id, limit=100))
