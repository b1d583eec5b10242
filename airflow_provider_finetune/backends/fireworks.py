"""Fireworks AI: its own fine-tuning API (``/v1/accounts/{account_id}/...``), translated faithfully.

What differs from OpenAI's dialect, and how each difference is carried (the installed ``fireworks-ai`` SDK,
generated from Fireworks' OpenAPI document, is the reference for every route, field and state):

* **Three collections**, one per method: ``supervisedFineTuningJobs``, ``dpoJobs`` and
  ``reinforcementFineTuningJobs`` (which needs an ``evaluator``). A job's canonical id is its resource name
  (``accounts/acme/supervisedFineTuningJobs/ft-...``), so every later call finds its collection.
* **camelCase bodies**: ``baseModel``, ``evaluationDataset``, ``learningRate``, ``loraRank``... For DPO and
  reinforcement jobs the training fields ride in ``trainingConfig``.
* **Datasets** instead of files: a job's training data is a dataset's resource name; a dataset is created,
  uploaded (``:upload`` directly, or ``:getUploadEndpoint`` and a PUT to the signed URL for large files),
  validated (``:validateUpload``) and ready (state ``READY``) before a job may use it. There is no files API
  (``/files``): the hook's files calls are refused before any request, naming the dataset upload instead.
* **States** ``JOB_STATE_*``, each mapped onto its canonical status in :data:`FIREWORKS_STATES`; the state as
  sent is kept on the job as ``fireworks_state``.
* **Once-only by the service**: the client chooses the job id (``...JobId`` query parameter on create).
* **Cancel** is ``POST ...:cancel`` (``DELETE`` deletes a job and is never sent for a cancel); **resume** is
  ``POST ...:resume``; there is **no pause**, which the seam refuses.
* **No events or checkpoints lists**: the job's own ``jobProgress`` is read as progress lines (its ``epoch`` is
  the epoch in progress, counted from 0, and its ``percent`` how much of that epoch is done).
* **Options that differ in meaning are refused**: OpenAI's ``learning_rate_multiplier`` is a multiplier,
  Fireworks' ``learningRate`` an absolute rate; a request with the first names the second (the option
  ``learning_rate`` of ``service_options``). No ``suffix``, ``seed``, ``metadata`` or ``integrations``.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from typing import IO, Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel

from airflow_provider_finetune.backends.base import (
    Backend,
    Call,
    Capabilities,
    Limits,
    model,
    read_openai_error,
    refuse_untranslatable,
    rfc3339_seconds,
)
from airflow_provider_finetune.core.client import (
    ConnectionSettings,
    ErrorFields,
    Sleep,
    path_param,
)
from airflow_provider_finetune.core.digests import request_fingerprint
from airflow_provider_finetune.core.flows import Flow, Transfer, translated
from airflow_provider_finetune.core.statuses import FineTuningJobStatus
from airflow_provider_finetune.exceptions import (
    ConflictError,
    FineTuningAPIError,
    FineTuningError,
    InvalidRequestError,
    NotFoundError,
    UnsafeToRetryError,
)
from airflow_provider_finetune.models import (
    CreateFineTuningJobRequest,
    FineTuningJob,
    FineTuningJobEvent,
    JobState,
    Page,
)
from airflow_provider_finetune.rules.budget import EpochRule

__all__ = [
    "COLLECTIONS",
    "DEFAULT_BASE_URL",
    "FIREWORKS_OPTIONS",
    "FIREWORKS_STATES",
    "FireworksBackend",
    "dataset_id_for",
]

M = TypeVar("M", bound=BaseModel)

#: Fireworks' API host; the connection's ``account_id`` completes it into the base URL.
DEFAULT_BASE_URL = "https://api.fireworks.ai"
#: Files up to this size go up in one ``:upload`` request; larger ones through the signed upload endpoint.
DIRECT_UPLOAD_LIMIT = 150 * 1024 * 1024

#: The collection of each fine-tuning method, and the query parameter that names a job on create.
COLLECTIONS: dict[str, tuple[str, str]] = {
    "supervised": ("supervisedFineTuningJobs", "supervisedFineTuningJobId"),
    "dpo": ("dpoJobs", "dpoJobId"),
    "reinforcement": ("reinforcementFineTuningJobs", "reinforcementFineTuningJobId"),
}
_METHOD_OF = {collection: method for method, (collection, _) in COLLECTIONS.items()}

_S = FineTuningJobStatus
#: Every ``JOB_STATE_*`` of Fireworks' published ``JobState``, onto the canonical status where one means the
#: same. ``EARLY_STOPPED`` is a job that ended well (training stopped when the evaluation loss stopped
#: improving) and produced its model; ``EXPIRED`` ended without a model; ``RE_QUEUEING`` waits for compute
#: again; ``WRITING_RESULTS`` still runs (the model is being written); ``CREATING_INPUT_DATASET`` and
#: ``VALIDATING`` check the data. ``UNSPECIFIED``, ``IDLE``, ``DELETING`` and ``DELETING_CLEANING_UP`` have no
#: canonical twin and are passed on as they are: not terminal, never taken for another state.
FIREWORKS_STATES: dict[str, FineTuningJobStatus | None] = {
    "JOB_STATE_UNSPECIFIED": None,
    "JOB_STATE_CREATING": _S.QUEUED,
    "JOB_STATE_PENDING": _S.QUEUED,
    "JOB_STATE_RE_QUEUEING": _S.QUEUED,
    "JOB_STATE_VALIDATING": _S.VALIDATING_FILES,
    "JOB_STATE_CREATING_INPUT_DATASET": _S.VALIDATING_FILES,
    "JOB_STATE_RUNNING": _S.RUNNING,
    "JOB_STATE_WRITING_RESULTS": _S.RUNNING,
    "JOB_STATE_IDLE": None,
    "JOB_STATE_PAUSED": _S.PAUSED,
    "JOB_STATE_CANCELLING": _S.CANCELLING,
    "JOB_STATE_COMPLETED": _S.SUCCEEDED,
    "JOB_STATE_EARLY_STOPPED": _S.SUCCEEDED,
    "JOB_STATE_FAILED": _S.FAILED,
    "JOB_STATE_EXPIRED": _S.FAILED,
    "JOB_STATE_CANCELLED": _S.CANCELLED,
    "JOB_STATE_DELETING": None,
    "JOB_STATE_DELETING_CLEANING_UP": None,
}


@dataclass(frozen=True)
class _Option:
    """One Fireworks option of ``service_options``: its wire name, type and the methods that take it."""

    wire: str
    kind: type | tuple[type, ...]
    methods: frozenset[str] = frozenset(COLLECTIONS)
    training: bool = True  # inside ``trainingConfig`` for DPO and reinforcement jobs
    #: What to do instead, where Fireworks' API reference marks the field deprecated (a warning when given).
    deprecated: str | None = None
    #: The service rejects the field when it is set: refused before any request, with ``deprecated``'s advice.
    rejected: bool = False


_ALL = frozenset(COLLECTIONS)
_SFT = frozenset({"supervised"})
_RFT = frozenset({"reinforcement"})
_NOT_DPO = frozenset({"supervised", "reinforcement"})

#: The Fireworks options a DAG may give (``service_options``), by their snake_case names, as the API takes them.
FIREWORKS_OPTIONS: dict[str, _Option] = {
    "learning_rate": _Option("learningRate", (int, float)),
    "lora_rank": _Option("loraRank", int),
    "epochs": _Option("epochs", int),
    "batch_size": _Option("batchSize", int, deprecated="give batch_size_samples (examples per batch) instead"),
    "batch_size_samples": _Option("batchSizeSamples", int),
    "max_context_length": _Option("maxContextLength", int),
    "learning_rate_warmup_steps": _Option("learningRateWarmupSteps", int),
    "gradient_accumulation_steps": _Option(
        "gradientAccumulationSteps",
        int,
        deprecated="give batch_size_samples (examples per batch) instead",
        rejected=True,
    ),
    "optimizer_weight_decay": _Option("optimizerWeightDecay", (int, float)),
    "output_model": _Option("outputModel", str),
    "warm_start_from": _Option("warmStartFrom", str),
    "jinja_template": _Option(
        "jinjaTemplate", str, deprecated="leave it out: the base model's own chat template formats the examples"
    ),
    "early_stop": _Option(
        "earlyStop",
        bool,
        _SFT,
        training=False,
        deprecated="stop on a metric with the job operator's early_stopping instead",
    ),
    "eval_auto_carveout": _Option("evalAutoCarveout", bool, _NOT_DPO, training=False),
    "evaluation_dataset": _Option("evaluationDataset", str, _NOT_DPO, training=False),
    "display_name": _Option("displayName", str, _ALL, training=False),
    "evaluator": _Option("evaluator", str, _RFT, training=False),
    "loss_config": _Option("lossConfig", dict, frozenset({"dpo", "reinforcement"}), training=False),
    "inference_parameters": _Option("inferenceParameters", dict, _RFT, training=False),
    "max_concurrent_rollouts": _Option("maxConcurrentRollouts", int, _RFT, training=False),
    "node_count": _Option("nodeCount", int, _RFT, training=False),
    "wandb_config": _Option("wandbConfig", dict, _ALL, training=False),
}

#: OpenAI hyperparameters that mean the same on Fireworks, and the field that takes them (``"auto"``: left out,
#: the service's default).
_SAME_HYPERPARAMETERS = {"n_epochs": "epochs", "batch_size": "batchSizeSamples"}

#: OpenAI hyperparameters that mean something else on Fireworks, and what to give instead.
_REFUSED_HYPERPARAMETERS = {
    "learning_rate_multiplier": (
        "OpenAI's learning_rate_multiplier scales a base rate; Fireworks' learningRate is the absolute rate. "
        "Give service_options={'learning_rate': <absolute rate>} instead"
    ),
    "beta": "give service_options={'loss_config': {...}} (Fireworks' lossConfig) for DPO instead",
}

_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def dataset_id_for(sha256: str) -> str:
    """The dataset id of a content digest: the same bytes always make the same dataset, once."""
    return f"ds-{sha256[:24]}"


def _status_of(state: Any) -> Any:
    if isinstance(state, str) and state in FIREWORKS_STATES:
        canonical = FIREWORKS_STATES[state]
        return canonical.value if canonical is not None else state.removeprefix("JOB_STATE_").lower()
    return state  # a state Fireworks adds later parses as an unknown, non-terminal status


class FireworksBackend(Backend):
    """Fireworks' fine-tuning API, under ``{base}/v1/accounts/{account_id}``; Bearer API keys."""

    service: ClassVar[str] = "fireworks"
    label: ClassVar[str] = "Fireworks"
    file_reference = "dataset"
    once_only = "client_job_id"
    reinforcement_grader = False  # an evaluator, given in service_options; a grader is refused by name

    capabilities = Capabilities(chat_completions=True, events=True, resume=True, cancel=True, client_job_id=True)
    instead = {
        "files": (
            "training data goes up as a Fireworks dataset: FineTuningFileUploadOperator uploads a JSONL file as one "
            "and returns its name (accounts/<account>/datasets/<id>) for training_file"
        ),
    }
    limits = Limits(max_suffix_length=0, max_metadata_keys=0, hyperparameters_auto=False)

    def __init__(self, settings: ConnectionSettings) -> None:
        super().__init__(settings)
        path = urlsplit(settings.base_url).path.rstrip("/")
        match = re.search(r"/v1/accounts/([^/]+)$", path)
        if match is None:
            raise InvalidRequestError(
                f"Fireworks connections need an account: give the account_id extra (base URL {settings.base_url})",
                field="account_id",
            )
        self.account_id = match.group(1)
        # The collection of each request :meth:`job_body` made, by its fingerprint: a client-chosen id names it.
        self._collections: dict[str, str] = {}

    # -- errors ------------------------------------------------------------------------------------------

    def read_error(self, response: httpx.Response, body: Any) -> ErrorFields:
        """Fireworks' gateway errors: ``{"code": <gRPC code>, "message", "details"}`` (or OpenAI's shape)."""
        fields = read_openai_error(response, body)
        if fields.request_id is None:
            fields = replace(fields, request_id=response.headers.get("x-request-id"))
        return fields

    # -- names -------------------------------------------------------------------------------------------

    def _resource(self, job_id: str) -> tuple[str, str]:
        """The collection and id of a job named by its resource name (or ``collection/id``, or a bare id)."""
        name = job_id.strip()
        parts = name.split("/")
        if len(parts) == 4 and parts[0] == "accounts":
            if parts[1] != self.account_id:
                raise InvalidRequestError(
                    f"job {name} belongs to account {parts[1]}, not to this connection's {self.account_id}",
                    field="job_id",
                )
            parts = parts[2:]
        if len(parts) == 2 and parts[0] in _METHOD_OF:
            return parts[0], path_param("job_id", parts[1])
        if len(parts) == 1:
            return COLLECTIONS["supervised"][0], path_param("job_id", parts[0])
        raise InvalidRequestError(
            f"job_id must be a Fireworks job's resource name (accounts/<account>/<collection>/<id>), got {name!r}",
            field="job_id",
        )

    def dataset_name(self, dataset_id: str) -> str:
        """The resource name of a dataset of this account."""
        return f"accounts/{self.account_id}/datasets/{dataset_id}"

    # -- translation -------------------------------------------------------------------------------------

    def job_from(self, data: Any) -> Any:
        """A Fireworks job onto the canonical one; the state as sent stays as ``fireworks_state``."""
        if not isinstance(data, dict):
            return data
        name = str(data.get("name") or "")
        collection = name.split("/")[2] if name.count("/") == 3 else "supervisedFineTuningJobs"
        training: dict[str, Any] = data["trainingConfig"] if isinstance(data.get("trainingConfig"), dict) else {}
        state = data.get("state")
        status = _status_of(state)
        output_model = data.get("outputModel") or training.get("outputModel")
        error = None
        problem: dict[str, Any] = data["status"] if isinstance(data.get("status"), dict) else {}
        if status in (_S.FAILED.value, _S.CANCELLED.value) and problem.get("code") not in (None, "OK"):
            error = {"code": problem.get("code"), "message": problem.get("message") or state}
        elif state == "JOB_STATE_EXPIRED":
            error = {"code": "EXPIRED", "message": problem.get("message") or "the job expired before it finished"}
        progress = data.get("jobProgress") if isinstance(data.get("jobProgress"), dict) else None
        job = {
            "id": name,
            "object": "fine_tuning.job",
            "status": status,
            "model": data.get("baseModel") or training.get("baseModel") or data.get("warmStartFrom"),
            "created_at": rfc3339_seconds(data.get("createTime")),
            "finished_at": rfc3339_seconds(data.get("completedTime")),
            "training_file": data.get("dataset"),
            "validation_file": data.get("evaluationDataset"),
            "fine_tuned_model": output_model if status == _S.SUCCEEDED.value else None,
            "error": error,
            "method": {"type": _METHOD_OF.get(collection, "supervised")},
            # The service's own record of the id the client chose, in its collection (see client_job_id).
            "client_job_id": "/".join(name.split("/")[2:]) if name.count("/") == 3 else None,
            "fireworks_state": state,
            "output_model": output_model,
            "job_progress": progress,
        }
        return job

    def _job(self) -> Callable[[httpx.Response], FineTuningJob]:
        return model(FineTuningJob, self.job_from)

    def job_body(self, request: CreateFineTuningJobRequest, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The create body of the method's collection; refuses what Fireworks cannot take as meant.

        :param request: the canonical request: ``model``, ``training_file`` (a dataset), ``validation_file``
            (the evaluation dataset) and ``method.type``.
        :param options: Fireworks' own options (:data:`FIREWORKS_OPTIONS`), as the API takes them.
        :return: the body, with ``"collection"`` naming where it goes (taken out before it is sent).
        """
        self._refuse_untranslatable(request)
        method = request.method.type if request.method is not None else "supervised"
        collection = COLLECTIONS[method][0]
        given = dict(options or {})
        for key, value in given.items():
            self._check_option(key, value, method)
        body: dict[str, Any] = {"dataset": self._dataset_ref(request.training_file, "training_file")}
        training: dict[str, Any] = {"baseModel": request.model, **self._same_hyperparameters(request)}
        if request.validation_file:
            if method == "dpo":
                raise InvalidRequestError(
                    "Invalid fine-tuning request: validation_file: Fireworks DPO jobs take no evaluation dataset",
                    field="validation_file",
                )
            body["evaluationDataset"] = self._dataset_ref(request.validation_file, "validation_file")
        for key, value in given.items():
            option = FIREWORKS_OPTIONS[key]
            if key == "evaluation_dataset":
                value = self._dataset_ref(value, "service_options.evaluation_dataset")
            target = training if option.training else body
            if option.wire in target and target[option.wire] != value:
                said = "the method's hyperparameters" if option.training else "the request"
                raise InvalidRequestError(
                    f"service_options.{key}: {value!r} contradicts {said} ({option.wire} {target[option.wire]!r}): "
                    "give it once",
                    field=f"service_options.{key}",
                )
            target[option.wire] = value
        if method == "reinforcement" and "evaluator" not in body:
            raise InvalidRequestError(
                "Invalid fine-tuning request: service_options.evaluator: Fireworks reinforcement jobs need an "
                "evaluator (accounts/<account>/evaluators/<id>)",
                field="service_options.evaluator",
            )
        if method == "supervised":
            body.update(training)
        else:
            body["trainingConfig"] = training
        made = {"collection": collection, **body}
        self._collections[request_fingerprint(made)] = collection
        return made

    def epoch_rule(self, request: CreateFineTuningJobRequest, body: Mapping[str, Any]) -> EpochRule:
        """The body's ``epochs`` (``n_epochs`` or ``service_options.epochs``), for a cost estimate.

        Fireworks publishes no rule for a job that gives none: an estimate needs them given.
        """
        training = body.get("trainingConfig", body)
        epochs = training.get("epochs")
        given = epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None
        return EpochRule(given, None, "n_epochs")

    def client_job_id(self, tag: str, fingerprint: str, generation: int) -> str:
        """``<collection>/<id>``: the id the base class derives, in the collection of the request it is for.

        Fireworks keeps one collection per method; the id alone does not say which one to ask for it.
        """
        collection = self._collections.get(fingerprint, COLLECTIONS["supervised"][0])
        return f"{collection}/{super().client_job_id(tag, fingerprint, generation)}"

    def _refuse_untranslatable(self, request: CreateFineTuningJobRequest) -> None:
        refusals = {
            "suffix": "Fireworks names the model by service_options.output_model (the whole id), not by a suffix",
            "seed": "Fireworks jobs take no seed",
            "metadata": "Fireworks jobs carry no metadata",
            "integrations": "give service_options={'wandb_config': {...}} (Fireworks' wandbConfig) instead",
        }
        refuse_untranslatable(request, refusals)
        method = request.method
        block = getattr(method, method.type, None) if method is not None else None
        if getattr(block, "grader", None) is not None:
            raise InvalidRequestError(
                "Invalid fine-tuning request: method.reinforcement.grader: Fireworks grades with an evaluator "
                "resource, not a grader: give service_options={'evaluator': 'accounts/<account>/evaluators/<id>'}",
                field="method.reinforcement.grader",
            )

    def _same_hyperparameters(self, request: CreateFineTuningJobRequest) -> dict[str, Any]:
        """The method's hyperparameters that mean the same on Fireworks, by their Fireworks names.

        ``n_epochs`` is ``epochs`` and ``batch_size`` (examples per batch) is ``batchSizeSamples``; any other is
        refused, naming what to give instead.
        """
        method = request.method
        block = getattr(method, method.type, None) if method is not None else None
        hyperparameters = getattr(block, "hyperparameters", None) if block is not None else None
        given = hyperparameters.to_body() if hyperparameters is not None else {}
        kind = method.type if method is not None else "supervised"
        same: dict[str, Any] = {}
        for name, value in given.items():
            if name in _SAME_HYPERPARAMETERS:
                if value != "auto":
                    same[_SAME_HYPERPARAMETERS[name]] = value
                continue
            why = _REFUSED_HYPERPARAMETERS.get(name, "Fireworks takes its own options (service_options) instead")
            raise InvalidRequestError(
                f"Invalid fine-tuning request: method.{kind}.hyperparameters.{name}: not sent to Fireworks: {why}",
                field=f"method.hyperparameters.{name}",
            )
        return same

    def _check_option(self, key: str, value: Any, method: str | None) -> None:
        option = FIREWORKS_OPTIONS.get(key)
        if option is None:
            if key in _REFUSED_HYPERPARAMETERS:
                raise InvalidRequestError(
                    f"service_options.{key}: not a Fireworks option: {_REFUSED_HYPERPARAMETERS[key]}",
                    field=f"service_options.{key}",
                )
            raise InvalidRequestError(
                f"service_options.{key}: not a Fireworks option (it takes {', '.join(sorted(FIREWORKS_OPTIONS))})",
                field=f"service_options.{key}",
            )
        if option.rejected:
            raise InvalidRequestError(
                f"service_options.{key}: Fireworks rejects {option.wire} when it is set (deprecated); "
                f"{option.deprecated}",
                field=f"service_options.{key}",
            )
        if option.deprecated is not None:
            warnings.warn(
                f"service_options.{key}: Fireworks has deprecated {option.wire}; {option.deprecated}",
                FutureWarning,
                stacklevel=2,
            )
        if method is not None and method not in option.methods:
            raise InvalidRequestError(
                f"service_options.{key}: Fireworks {method} jobs do not take {option.wire}",
                field=f"service_options.{key}",
            )
        # Python's bool is an int: a boolean is taken only where a boolean is meant, and never counted as a number.
        if isinstance(value, bool) != (option.kind is bool) or not isinstance(value, option.kind):
            raise InvalidRequestError(
                f"service_options.{key}: must be {_type_name(option.kind)}, got {value!r}",
                field=f"service_options.{key}",
            )
        if (
            option.kind is not bool
            and isinstance(value, int | float)
            and value <= 0
            and key not in ("learning_rate_warmup_steps", "optimizer_weight_decay")
        ):
            raise InvalidRequestError(
                f"service_options.{key}: must be positive, got {value!r}", field=f"service_options.{key}"
            )

    def _dataset_ref(self, value: str, field: str) -> str:
        """A dataset's resource name: as given, or made from a bare dataset id of this account."""
        if value.startswith("accounts/"):
            if not re.fullmatch(r"accounts/[^/]+/datasets/[^/]+", value):
                raise InvalidRequestError(f"{field}: {value!r} is not a dataset's resource name", field=field)
            return value
        if not _ID.match(value):
            raise InvalidRequestError(
                f"{field}: {value!r} is neither a dataset resource name nor a dataset id", field=field
            )
        return self.dataset_name(value)

    # -- jobs --------------------------------------------------------------------------------------------

    def create_prepared_job(self, body: Mapping[str, Any], *, job_id: str | None = None) -> Call[FineTuningJob]:
        """``POST {collection}?{...JobId}=job_id``: the id the client chose makes the create once-only."""
        sent = dict(body)
        collection = str(sent.pop("collection", COLLECTIONS["supervised"][0]))
        if collection not in _METHOD_OF:
            raise InvalidRequestError(f"unknown Fireworks job collection {collection!r}", field="collection")
        params = None
        if job_id is not None:
            named, _, job_id = job_id.rpartition("/")
            if named and named != collection:
                raise InvalidRequestError(
                    f"job id {named}/{job_id} is not in {collection}, where this request goes", field="job_id"
                )
            if not _ID.match(job_id):
                raise InvalidRequestError(
                    f"job id {job_id!r}: Fireworks ids are lowercase letters, digits and '-', starting with a letter",
                    field="job_id",
                )
            params = {COLLECTIONS[_METHOD_OF[collection]][1]: job_id}
        return Call("POST", collection, self._job(), params=params, json=sent, idempotent=False)

    def job_call(self, method: str, job_id: str, action: str | None = None) -> Call[FineTuningJob]:
        """``GET`` a job, or ``POST ...:cancel`` / ``...:resume``; pause does not exist and is refused."""
        if action == "pause":
            self.require("pause", job_id=job_id)
        if action not in (None, "cancel", "resume"):
            raise InvalidRequestError(f"Fireworks jobs have no {action!r} action", field="action")
        collection, ident = self._resource(job_id)
        path = f"{collection}/{ident}"
        if action is None:
            return Call(method, path, self._job())
        # The custom methods answer an empty object: the job is read again by the caller's next GET.
        return Call("POST", f"{path}:{action}", self._job_after(job_id), json={})

    def _job_after(self, job_id: str) -> Callable[[httpx.Response], FineTuningJob]:
        def parse(response: httpx.Response) -> FineTuningJob:
            data = response.json() if response.content else {}
            if isinstance(data, dict) and data.get("name"):
                return FineTuningJob.model_validate(self.job_from(data))
            status = _S.CANCELLING if response.request.url.path.endswith(":cancel") else _S.QUEUED
            return FineTuningJob.model_validate({"id": job_id, "status": status.value})

        return parse

    def list_jobs(
        self, after: str | None, limit: int | None, metadata: Mapping[str, str] | None
    ) -> Call[Page[FineTuningJob]]:
        """The supervised jobs, a page at a time (``pageSize``/``pageToken``); Fireworks has no metadata."""
        if metadata:
            self.require("metadata_filter")
        return self._list("supervised", after, limit, self.job_from, FineTuningJob)

    def list_job_states(self, after: str | None, limit: int | None) -> Call[Page[JobState]]:
        """The supervised jobs as lean states."""
        return self._list("supervised", after, limit, self.job_from, JobState)

    def _list(
        self, method: str, after: str | None, limit: int | None, item: Callable[[Any], Any], cls: type[M]
    ) -> Call[Page[M]]:
        collection = COLLECTIONS[method][0]

        def translate(data: Any) -> Any:
            items = data.get(collection) or [] if isinstance(data, dict) else []
            token = data.get("nextPageToken") if isinstance(data, dict) else None
            return {
                "object": "list",
                "data": [item(x) for x in items],
                "has_more": bool(token),
                "last_id": token or None,
            }

        params = {"pageSize": limit, "pageToken": after}
        return Call("GET", collection, model(Page[cls], translate), params=params)  # type: ignore[valid-type]

    def next_page(self, call: Call[Page[M]], page: Page[M]) -> Call[Page[M]] | None:
        """The next page: its token rides in ``last_id`` (``nextPageToken``)."""
        if not page.has_more or not page.last_id:
            return None
        return replace(call, params={**(call.params or {}), "pageToken": page.last_id})

    def events(self, job_id: str, after: str | None, limit: int | None) -> Call[Page[FineTuningJobEvent]]:
        """The job's progress as one event: ``jobProgress`` (the epoch in progress, the percent of it done)."""
        collection, ident = self._resource(job_id)

        def parse(response: httpx.Response) -> Page[FineTuningJobEvent]:
            job = self.job_from(response.json())
            return Page[FineTuningJobEvent].model_validate({"data": _progress_events(job), "has_more": False})

        return Call("GET", f"{collection}/{ident}", parse)

    def chat_completion(self, body: Mapping[str, Any]) -> Call[dict[str, Any]]:
        """``POST {host}/inference/v1/chat/completions``: Fireworks serves models apart from its control plane."""
        parts = urlsplit(self.settings.base_url)
        root = f"{parts.scheme}://{parts.netloc}{parts.path.split('/v1/accounts/')[0]}"
        return Call("POST", f"{root}/inference/v1/chat/completions", _json, json=dict(body))

    def job_url(self, job_id: str) -> str | None:
        """None: no link rather than a guessed one."""
        return None  # Fireworks publishes no stable address of a job's page: no link rather than a broken one

    # -- datasets ----------------------------------------------------------------------------------------

    def create_dataset(self, dataset_id: str, example_count: int | None) -> Call[dict[str, Any]]:
        """``POST datasets``: a user-uploaded dataset (a conflict means it exists: look it up)."""
        dataset: dict[str, Any] = {"userUploaded": {}}
        if example_count is not None:
            dataset["exampleCount"] = str(example_count)
        body = {"datasetId": dataset_id, "dataset": dataset}
        # Not sent again when its answer is lost: the dataset is looked up by its id instead.
        return Call("POST", "datasets", _json, json=body, idempotent=False)

    def get_dataset(self, dataset_id: str) -> Call[dict[str, Any]]:
        """``GET datasets/{id}``."""
        return Call("GET", f"datasets/{path_param('dataset_id', dataset_id)}", _json)

    def upload_dataset_file(self, dataset_id: str, stream: IO[bytes], name: str) -> Call[dict[str, Any]]:
        """``POST datasets/{id}:upload`` (multipart), re-read from the start on each attempt."""
        start = stream.tell()

        def multipart() -> tuple[dict[str, str], dict[str, Any]]:
            stream.seek(start)
            return {}, {"file": (name, stream, "application/jsonl")}

        path = f"datasets/{path_param('dataset_id', dataset_id)}:upload"
        return Call("POST", path, _json, multipart=multipart)

    def upload_endpoint(self, dataset_id: str, name: str, size: int) -> Call[dict[str, Any]]:
        """``POST datasets/{id}:getUploadEndpoint``: a signed URL per file, for large files."""
        path = f"datasets/{path_param('dataset_id', dataset_id)}:getUploadEndpoint"
        return Call("POST", path, _json, json={"filenameToSize": {name: str(size)}})

    def dataset_flow(self, stream: IO[bytes], name: str, size: int, sha256: str, examples: int | None) -> Flow[str]:
        """Upload a checked JSONL file as a dataset (:func:`dataset_steps`); return the dataset's resource name.

        A large file's ``PUT`` to its signed URL is a :class:`~airflow_provider_finetune.core.flows.Transfer`: no
        API key goes with it.
        """
        dataset_id = dataset_id_for(sha256)
        start = stream.tell()
        steps = dataset_steps(self, dataset_id, name, size, examples, stream)
        timeout = self.settings.timeouts()

        def step_for(step: DatasetStep) -> Any:
            if isinstance(step, PutSigned):
                return Transfer(lambda client: _put_request(client, step, stream, start), _response, timeout)
            return step

        dataset = yield from translated(steps, step_for)
        return str(dataset.get("name") or self.dataset_name(dataset_id))

    def validate_upload(self, dataset_id: str) -> Call[dict[str, Any]]:
        """``POST datasets/{id}:validateUpload``: the service checks what was uploaded."""
        return Call("POST", f"datasets/{path_param('dataset_id', dataset_id)}:validateUpload", _json, json={})


def _type_name(kind: type | tuple[type, ...]) -> str:
    if kind == (int, float):
        return "a number"
    names: dict[Any, str] = {int: "an integer", bool: "true or false", str: "a string", dict: "an object"}
    return names.get(kind, str(kind))


def _json(response: httpx.Response) -> Any:
    return response.json() if response.content else {}


def _progress_events(job: Mapping[str, Any]) -> list[dict[str, Any]]:
    progress = job.get("job_progress") or {}
    percent = progress.get("percent")
    if percent is None:
        return []
    # Fireworks' epoch is the one the percent is of, counted from 0: said as people count, from 1.
    epoch = progress.get("epoch")
    state = job.get("fireworks_state") or ""
    done = f"epoch {epoch + 1}: {percent}% done" if isinstance(epoch, int) else f"{percent}% done"
    text = done + (f" ({state})" if state else "")
    digest = hashlib.sha256(f"{percent}|{epoch}|{state}".encode()).hexdigest()[:12]
    return [{"id": f"progress-{digest}", "object": "fine_tuning.job.event", "message": text, "type": "message"}]


# -- datasets: the steps of one upload, as a generator that does no I/O --------------------------------------


@dataclass(frozen=True)
class PutSigned:
    """PUT the file's bytes to a signed URL (a storage host: no API key goes with it)."""

    url: str
    name: str


#: How long to wait for a validated dataset to be ``READY``, and between looks.
DATASET_READY_TIMEOUT = 600.0
DATASET_READY_POLL = 2.0

DatasetStep = Call[Any] | PutSigned | Sleep
DatasetSteps = Generator[DatasetStep, Any, dict[str, Any]]


def dataset_steps(
    backend: FireworksBackend, dataset_id: str, name: str, size: int, examples: int | None, stream: IO[bytes]
) -> DatasetSteps:
    """Create the dataset unless it exists, upload, validate, and wait until it is ``READY``; return it.

    The dataset's id is derived from the content's digest (:func:`dataset_id_for`), so a retry or a lost
    answer finds the same dataset: a ``READY`` one is reused as it is, one still ``UPLOADING`` is uploaded to.
    Each step is answered with the call's result, or with the :class:`FineTuningError` that ended it.
    """
    dataset = yield backend.get_dataset(dataset_id)
    tries = 0
    while isinstance(dataset, NotFoundError):
        made = yield backend.create_dataset(dataset_id, examples)
        if not isinstance(made, UnsafeToRetryError | ConflictError):
            dataset = made
            break
        # Maybe made: looked up by its id, never made twice; created again only when the lookup says it is not.
        dataset = yield backend.get_dataset(dataset_id)
        tries += 1
        if isinstance(dataset, NotFoundError) and tries > backend.settings.max_retries:
            raise made
    dataset = _raise_if_error(dataset)
    if dataset.get("state") == "READY":
        return dataset
    if size <= DIRECT_UPLOAD_LIMIT:
        _raise_if_error((yield backend.upload_dataset_file(dataset_id, stream, name)))
    else:
        endpoint = _raise_if_error((yield backend.upload_endpoint(dataset_id, name, size)))
        url = (endpoint.get("filenameToSignedUrls") or {}).get(name)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise FineTuningAPIError(200, f"Fireworks gave no signed upload URL for {name} of dataset {dataset_id}")
        _raise_if_error((yield PutSigned(url, name)))
    _raise_if_error((yield backend.validate_upload(dataset_id)))
    waited = 0.0
    while True:
        dataset = _raise_if_error((yield backend.get_dataset(dataset_id)))
        if dataset.get("state") == "READY":
            return dataset
        problem = dataset.get("status") if isinstance(dataset.get("status"), dict) else {}
        if problem.get("code") not in (None, "OK"):
            raise InvalidRequestError(
                f"Fireworks refused dataset {dataset_id} ({name}): {problem.get('code')}: {problem.get('message')}",
                field="file",
            )
        if waited >= DATASET_READY_TIMEOUT:
            raise FineTuningError(f"dataset {dataset_id} was not READY after {DATASET_READY_TIMEOUT:.0f} s")
        yield Sleep(DATASET_READY_POLL)
        waited += DATASET_READY_POLL


def _raise_if_error(answer: Any) -> Any:
    if isinstance(answer, BaseException):
        raise answer
    return answer


def _response(response: httpx.Response) -> httpx.Response:
    return response


def _put_request(client: httpx.Client | httpx.AsyncClient, step: PutSigned, stream: IO[bytes], start: int) -> Any:
    stream.seek(start)
    data = stream.read()
    headers = {"Content-Type": "application/octet-stream", "X-Goog-Content-Length-Range": f"{len(data)},{len(data)}"}
    return client.build_request("PUT", step.url, content=data, headers=headers)


def base_url_for(host_url: str | None, extra: Mapping[str, Any]) -> str:
    """Fireworks' base URL for one account: ``{host}/v1/accounts/{account_id}`` (``api.fireworks.ai`` by default)."""
    root = (host_url or DEFAULT_BASE_URL).rstrip("/")
    if "/accounts/" in root:
        return root  # the account is in the URL already
    account_id = extra.get("account_id")
    if not isinstance(account_id, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", account_id):
        raise InvalidRequestError(
            f"account_id: a Fireworks connection needs its account id (lowercase letters, digits and '-'), "
            f"got {account_id!r}",
            field="account_id",
        )
    return f"{root.removesuffix('/v1')}/v1/accounts/{account_id}"
