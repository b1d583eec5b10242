"""OpenLineage for the create operator: the training data in, the fine-tuned model out, the job as facets.

Only imported by the create operator's ``get_openlineage_facets_on_start`` and ``..._on_complete``, which the
OpenLineage provider's listener calls: without
``apache-airflow-providers-openlineage`` nothing here is imported and nothing changes.

Datasets are named the OpenLineage way, by where they live:

* a file id or a dataset id of a service: namespace ``<service>://<host>[:port]/<path>`` of the connection's
  base URL (no user, password, query or fragment, so no secret), name the id;
* an S3 URI: namespace ``s3://<bucket>``, name the key;
* the fine-tuned model: the service's namespace, name the model's name.

The run carries one facet, ``fineTuningJob`` (:class:`FineTuningJobRunFacet`): the job's id, the service, the
base model, the hyperparameters, the trained tokens, and for a run that returned an earlier job's model
(``skip_if_unchanged``) that job's id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from attrs import define, field
from openlineage.client.event_v2 import Dataset
from openlineage.client.facet_v2 import RunFacet

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from airflow_provider_finetune.models import CreateFineTuningJobRequest

__all__ = ["FACET_NAME", "FineTuningJobRunFacet", "dataset", "operator_lineage", "service_namespace"]

#: The run facet's key in an OpenLineage event.
FACET_NAME = "fineTuningJob"
_SCHEMA = "https://github.com/airflow-provider-finetune/airflow-provider-finetune/FineTuningJobRunFacet.json"


@define
class FineTuningJobRunFacet(RunFacet):
    """A fine-tuning job: which, where, from which base model, with which hyperparameters, and how much it trained.

    :param service: the service (``openai``, ``azure``...).
    :param baseModel: the base model.
    :param jobId: the job's id (unknown until the job exists).
    :param hyperparameters: the request's hyperparameters, as sent.
    :param method: the fine-tuning method (``supervised``, ``dpo``, ``reinforcement``).
    :param trainedTokens: the tokens the job trained on, once it succeeded.
    :param reusedJobId: the earlier job whose model this run returned without training (``skip_if_unchanged``).
    """

    service: str
    baseModel: str  # OpenLineage facets spell fields in camelCase
    jobId: str | None = field(default=None)
    hyperparameters: dict[str, Any] = field(factory=dict)
    method: str | None = field(default=None)
    trainedTokens: int | None = field(default=None)
    reusedJobId: str | None = field(default=None)

    _additional_skip_redact = ["service", "baseModel", "jobId", "method", "reusedJobId"]

    @staticmethod
    def _get_schema() -> str:
        return _SCHEMA


def service_namespace(service: str, base_url: str) -> str:
    """``<service>://<host>[:port]<path>`` of a base URL: no user, password, query or fragment."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{service}://{host}{parts.path.rstrip('/')}"


def dataset(reference: str, namespace: str) -> Dataset:
    """The dataset a training reference names: an S3 object in its bucket, else an id of the service."""
    if reference.startswith("s3://"):
        bucket, _, key = reference.removeprefix("s3://").partition("/")
        return Dataset(namespace=f"s3://{bucket}", name=key or "/")
    return Dataset(namespace=namespace, name=reference)


def _hyperparameters(body: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    method = body.get("method")
    if isinstance(method, Mapping):
        kind = method.get("type")
        inner = method.get(kind) if isinstance(kind, str) else None
        block = inner.get("hyperparameters") if isinstance(inner, Mapping) else None
        return (kind if isinstance(kind, str) else None), dict(block or {})
    return None, dict(body.get("hyperparameters") or {})


def operator_lineage(
    hook: FineTuningHook,
    request: CreateFineTuningJobRequest,
    *,
    job_id: str | None = None,
    fine_tuned_model: str | None = None,
    trained_tokens: int | None = None,
    reused_job_id: str | None = None,
) -> OperatorLineage:
    """The lineage of one create task: its training data in, its model out (once there is one), the job's facet."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    backend = hook.backend
    namespace = service_namespace(backend.service, backend.settings.base_url)
    body = request.to_body()
    inputs = [dataset(str(body[role]), namespace) for role in ("training_file", "validation_file") if body.get(role)]
    outputs = [Dataset(namespace=namespace, name=fine_tuned_model)] if fine_tuned_model else []
    kind, hyperparameters = _hyperparameters(body)
    facet = FineTuningJobRunFacet(
        service=backend.service,
        baseModel=request.model,
        jobId=job_id,
        hyperparameters=hyperparameters,
        method=kind or "supervised",
        trainedTokens=trained_tokens,
        reusedJobId=reused_job_id,
    )
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets={FACET_NAME: facet})
