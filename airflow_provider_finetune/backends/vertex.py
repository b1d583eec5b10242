"""Google Vertex AI tuning (``projects.locations.tuningJobs``) under the provider's canonical, OpenAI-shaped calls.

Vertex AI's REST API (``https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}``)
is translated faithfully, with the ``google-genai`` SDK's Vertex request conversion and types as the reference:

* **Create** (``POST tuningJobs``): ``baseModel`` and ``supervisedTuningSpec`` (or ``preferenceOptimizationSpec``
  for the canonical ``dpo`` method): ``trainingDatasetUri``/``validationDatasetUri`` (``gs://`` URIs, the canonical
  ``training_file`` and ``validation_file``) and ``hyperParameters``. What means the same is sent under Vertex's
  name: ``n_epochs`` as ``epochCount``, ``learning_rate_multiplier`` as ``learningRateMultiplier`` (both scale the
  service's default rate), DPO's ``beta`` as ``beta`` (the weight of the KL divergence regularization); ``"auto"``
  leaves a value to the service. What only Vertex has is :class:`VertexOptions` (``service_options``): adapter
  size, ``exportLastCheckpointOnly``, ``evaluationConfig``, ``tunedModelDisplayName``, ``description``,
  ``labels``, checked before any request. OpenAI options that mean something else are refused, naming the Vertex
  option to use or saying there is none: ``suffix``, ``seed``, ``metadata`` (Vertex has labels, not free text),
  ``integrations``, ``batch_size``; a method Vertex lacks (``reinforcement``) is refused by name.
* **Once-only** by the job's own labels: the task's tag and the request's fingerprint ride in ``labels``
  (:data:`~airflow_provider_finetune.rules.once.TASK_TAG_KEY`, ``REQUEST_KEY``); a retry lists the jobs filtered by
  ``labels.airflow_task_tag="<tag>"`` and adopts a job only when its own labels carry the tag. Label values are
  lowercase letters, digits, ``_`` and ``-``, at most 63 characters: the house tag (``ti-<hex>``) and fingerprint
  (``rq-<hex>``) are such values; any other tag is carried as its digest (:func:`label_value`), the same way on
  create, filter and check. The labels read back are the canonical job's ``metadata`` (where the tag is checked), but
  the ``job_metadata`` capability stays off: a request's free-text ``metadata`` is not a label, and the provider's
  other metadata (``skip_if_unchanged``'s data digest) would not fit one, so it is neither written nor trusted.
* **The job** (:func:`job_from_vertex`): the resource name (``projects/{p}/locations/{l}/tuningJobs/{n}``) is its id
  (a bare ``{n}`` is taken too); ``state`` maps one by one onto the canonical statuses (:data:`VERTEX_STATES`), the
  state as sent kept as ``vertex_state``; ``error`` (``google.rpc.Status``) is the job's error; ``tunedModel.model``
  is the ``fine_tuned_model`` once the job succeeded, ``tunedModel.endpoint`` rides along as
  ``tuned_model_endpoint`` (the job operator pushes it as an XCom); ``createTime``, ``startTime``, ``updateTime``
  and ``endTime`` become Unix seconds; ``labels`` are the job's ``metadata``; ``tuningDataStats`` and
  ``experiment`` ride along.
* **Checkpoints** are the job's ``tunedModel.checkpoints`` (``checkpointId``, ``epoch``, ``step``, ``endpoint``),
  read from the job, newest first. Vertex keeps no event log: ``events`` is off, and a wait logs status changes.
* **Cancel** is ``POST {name}:cancel``; there is no pause or resume.
* **Errors** are Google's ``{"error": {"code", "message", "status", "details"}}`` (:func:`read_google_error`):
  ``RESOURCE_EXHAUSTED`` is a rate limit (retried), ``NOT_FOUND``, ``PERMISSION_DENIED``... their own errors, a
  ``BadRequest`` detail names the field.
* **Chat completions** (the evaluation operator) go to ``{model}:generateContent`` (a tuned model's endpoint, a
  base model by its name), OpenAI's messages as Gemini ``contents`` and the answer back as a chat completion.
* **Authentication**: ``auth: key`` sends the connection's password as an OAuth 2 access token (``Authorization:
  Bearer``); ``auth: google`` (the default without a password) takes the credentials of an Airflow Google connection
  (``gcp_conn_id``, through the Google provider's ``GoogleBaseHook``: service account keys, Application Default
  Credentials, impersonation chains) and refreshes the token before it expires, off the event loop in the
  triggerer.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import Annotated, Any, ClassVar, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)

from airflow_provider_finetune.backends.base import (
    Backend,
    Call,
    Capabilities,
    HeaderAuth,
    Limits,
    model,
    read_options,
    refuse_untranslatable,
    rfc3339_seconds,
)
from airflow_provider_finetune.core.client import ErrorFields, path_param, read_error_body
from airflow_provider_finetune.core.statuses import FineTuningJobStatus, canonical
from airflow_provider_finetune.exceptions import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FineTuningAPIError,
    FineTuningError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from airflow_provider_finetune.models import (
    CreateFineTuningJobRequest,
    FineTuningJob,
    FineTuningJobCheckpoint,
    JobState,
    Page,
)
from airflow_provider_finetune.rules.budget import EpochRule
from airflow_provider_finetune.rules.once import OWN_KEYS, JobIdentity, room_for_tags
from airflow_provider_finetune.training_data.vertex import RULES as VERTEX_RULES

__all__ = [
    "DEFAULT_GCP_CONN_ID",
    "DEFAULT_LOCATION",
    "GOOGLE_ERRORS",
    "MISSING_EXTRA",
    "VERTEX_STATES",
    "GoogleAuth",
    "GoogleCredentials",
    "VertexBackend",
    "VertexOptions",
    "base_url_for",
    "chat_completion_from_gemini",
    "checkpoints_from_vertex",
    "gemini_request",
    "job_from_vertex",
    "label_value",
    "read_google_error",
    "vertex_options",
]

M = TypeVar("M", bound=BaseModel)
_S = FineTuningJobStatus

#: The region of a connection that names none.
DEFAULT_LOCATION = "us-central1"
#: The Airflow Google connection whose credentials are used when the connection names none.
DEFAULT_GCP_CONN_ID = "google_cloud_default"
#: The line that says what to install when the Google provider is missing.
MISSING_EXTRA = (
    "Google Cloud credentials need apache-airflow-providers-google: pip install 'airflow-provider-finetune[google]'"
)
#: A token is refreshed when it has less than this many seconds left.
REFRESH_MARGIN = 300.0

#: Every ``JOB_STATE_*`` of Vertex AI's ``JobState`` onto its canonical status:
#:
#: * ``UNSPECIFIED``: the service has set no state yet; the job waits like a queued one (never terminal);
#: * ``QUEUED`` (created or resumed, not started) and ``PENDING`` (the service prepares to run it): ``queued``;
#: * ``RUNNING``, and ``UPDATING`` (a running job being updated, which goes back to running): ``running``;
#: * ``PAUSED`` (stopped, and can be resumed by the service): ``paused``, not terminal;
#: * ``CANCELLING``: ``cancelling``; ``CANCELLED``: ``cancelled``;
#: * ``SUCCEEDED``: ``succeeded``, with its tuned model;
#: * ``FAILED``; ``EXPIRED`` (ended before it finished, without a model); ``PARTIALLY_SUCCEEDED`` (ended with some
#:   results missing): ``failed``, the error saying which; a partial tuned model stays on the job as ``tuned_model``.
VERTEX_STATES: dict[str, FineTuningJobStatus] = {
    "JOB_STATE_UNSPECIFIED": _S.QUEUED,
    "JOB_STATE_QUEUED": _S.QUEUED,
    "JOB_STATE_PENDING": _S.QUEUED,
    "JOB_STATE_RUNNING": _S.RUNNING,
    "JOB_STATE_UPDATING": _S.RUNNING,
    "JOB_STATE_PAUSED": _S.PAUSED,
    "JOB_STATE_CANCELLING": _S.CANCELLING,
    "JOB_STATE_CANCELLED": _S.CANCELLED,
    "JOB_STATE_SUCCEEDED": _S.SUCCEEDED,
    "JOB_STATE_FAILED": _S.FAILED,
    "JOB_STATE_EXPIRED": _S.FAILED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": _S.FAILED,
}

#: ``google.rpc.Code`` by number, as a job's ``error.code`` gives it.
RPC_CODES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}

#: Google's error statuses onto the provider's error classes, whatever HTTP status carried them.
GOOGLE_ERRORS: dict[str, type[FineTuningAPIError]] = {
    "INVALID_ARGUMENT": BadRequestError,
    "FAILED_PRECONDITION": BadRequestError,
    "OUT_OF_RANGE": BadRequestError,
    "UNIMPLEMENTED": BadRequestError,
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "NOT_FOUND": NotFoundError,
    "ALREADY_EXISTS": ConflictError,
    "ABORTED": ConflictError,
    "RESOURCE_EXHAUSTED": RateLimitError,
    "INTERNAL": InternalServerError,
    "UNAVAILABLE": InternalServerError,
    "DEADLINE_EXCEEDED": InternalServerError,
    "UNKNOWN": InternalServerError,
    "DATA_LOSS": InternalServerError,
}

#: Vertex AI's adapter sizes, by the size a DAG gives.
ADAPTER_SIZES = {
    1: "ADAPTER_SIZE_ONE",
    2: "ADAPTER_SIZE_TWO",
    4: "ADAPTER_SIZE_FOUR",
    8: "ADAPTER_SIZE_EIGHT",
    16: "ADAPTER_SIZE_SIXTEEN",
    32: "ADAPTER_SIZE_THIRTY_TWO",
}

#: The methods Vertex AI tunes with, and the spec of the create body each goes in.
SPECS = {"supervised": "supervisedTuningSpec", "dpo": "preferenceOptimizationSpec"}

GCS_URI = re.compile(r"gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]/\S+")
_JOB_NAME = re.compile(r"projects/([^/]+)/locations/([^/]+)/tuningJobs/([^/]+)")
_ROOT = re.compile(r"^(?P<root>.*)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)$")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:_-]{0,99}")
_LOCATION = re.compile(r"[a-z][a-z0-9-]{0,62}")
LABEL_MAX = 63
MAX_LABELS = 64


# -- the connection --------------------------------------------------------------------------------------------


def base_url_for(host_url: str | None, extra: Mapping[str, Any]) -> str:
    """``{host}/v1/projects/{project}/locations/{location}`` (Google's regional address without a host).

    :param host_url: the connection's host (an emulator, a Private Service Connect address), or ``None``.
    :param extra: the connection's extras: ``project`` (required), ``location`` (``us-central1`` by default).
    """
    project = str(extra.get("project") or "").strip()
    location = str(extra.get("location") or DEFAULT_LOCATION).strip()
    if host_url and "/projects/" in host_url:
        return host_url.rstrip("/")  # the project and location are in the URL already
    if not _PROJECT.fullmatch(project):
        raise InvalidRequestError(
            f"project: a Vertex AI connection needs its Google Cloud project id, got {project!r}", field="project"
        )
    if not _LOCATION.fullmatch(location):
        raise InvalidRequestError(
            f"location: a Google Cloud region such as us-central1, got {location!r}", field="location"
        )
    if host_url:
        root = host_url.rstrip("/").removesuffix("/v1")
    else:
        regional = "aiplatform.googleapis.com" if location == "global" else f"{location}-aiplatform.googleapis.com"
        root = f"https://{regional}"
    return f"{root}/v1/projects/{project}/locations/{location}"


# -- labels ------------------------------------------------------------------------------------------------


def _label_char(char: str) -> bool:
    return char in "_-" or (char.isalnum() and not char.isupper())


def label_problem(key: str, value: str) -> str | None:
    """Why Vertex AI would refuse a label, or ``None``.

    Keys start with a lowercase letter; keys and values are at most 63 of lowercase letters, digits, ``_`` and ``-``
    (international letters allowed).
    """
    if not key or len(key) > LABEL_MAX or not (key[0].isalpha() and not key[0].isupper()):
        return f"key {key!r}: 1 to {LABEL_MAX} characters starting with a lowercase letter"
    if not all(_label_char(char) for char in key):
        return f"key {key!r}: lowercase letters, digits, _ and - only"
    if not isinstance(value, str) or len(value) > LABEL_MAX or not all(_label_char(char) for char in value):
        return f"the value of {key!r}: at most {LABEL_MAX} of lowercase letters, digits, _ and -"
    return None


def label_value(text: str) -> str:
    """``text`` as a label value: as it is where Vertex takes it, else a digest of it (the same for the same text)."""
    if label_problem("k", text) is None:
        return text
    return "tag-" + hashlib.sha256(text.encode()).hexdigest()[:40]


# -- options only Vertex AI has -----------------------------------------------------------------------------------


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GcsDestination(_Options):
    """Where evaluation results are written.

    :param output_uri_prefix: a ``gs://`` directory.
    """

    output_uri_prefix: StrictStr

    @field_validator("output_uri_prefix")
    @classmethod
    def _gcs(cls, value: str) -> str:
        if not value.startswith("gs://") or len(value) <= len("gs://"):
            raise ValueError(f"{value!r} is not a gs:// URI")
        return value


class OutputConfig(_Options):
    """The evaluation's output: ``gcs_destination``."""

    gcs_destination: GcsDestination


class AutoraterConfig(_Options):
    """The autorater of an evaluation.

    :param sampling_count: samples per instance, 1 to 32.
    :param flip_enabled: flip candidate and baseline for half of the samples (pairwise metrics).
    :param autorater_model: the publisher model or tuned autorater endpoint, by its full resource name.
    :param generation_config: the autorater's generation config, as Vertex AI takes it (camelCase).
    """

    sampling_count: Annotated[StrictInt, Field(ge=1, le=32)] | None = None
    flip_enabled: StrictBool | None = None
    autorater_model: StrictStr | None = None
    generation_config: dict[str, Any] | None = None


class EvaluationConfig(_Options):
    """An evaluation run on the job's checkpoints (``evaluationConfig`` of the tuning spec).

    :param metrics: the metrics, each as Vertex AI's REST API takes it (``pointwiseMetricSpec``...).
    :param output_config: where the results go.
    :param autorater_config: the autorater.
    :param inference_generation_config: the generation config of the model's answers (camelCase).
    """

    metrics: Annotated[list[dict[str, Any]], Field(min_length=1)]
    output_config: OutputConfig
    autorater_config: AutoraterConfig | None = None
    inference_generation_config: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        """The ``evaluationConfig`` object as the REST API takes it."""
        wire: dict[str, Any] = {
            "metrics": [dict(metric) for metric in self.metrics],
            "outputConfig": {
                "gcsDestination": {"outputUriPrefix": self.output_config.gcs_destination.output_uri_prefix}
            },
        }
        autorater = self.autorater_config
        if autorater is not None:
            given = {
                "samplingCount": autorater.sampling_count,
                "flipEnabled": autorater.flip_enabled,
                "autoraterModel": autorater.autorater_model,
                "generationConfig": autorater.generation_config,
            }
            wire["autoraterConfig"] = {k: v for k, v in given.items() if v is not None}
        if self.inference_generation_config is not None:
            wire["inferenceGenerationConfig"] = dict(self.inference_generation_config)
        return wire


class VertexOptions(_Options):
    """The options only Vertex AI has, given to the create operator as ``service_options``.

    :param adapter_size: the LoRA adapter's size: 1, 2, 4, 8, 16 or 32 (or its ``ADAPTER_SIZE_*`` name).
    :param export_last_checkpoint_only: keep only the last checkpoint (no intermediate checkpoints).
    :param evaluation_config: an evaluation run during tuning (:class:`EvaluationConfig`).
    :param tuned_model_display_name: the tuned model's display name, up to 128 characters.
    :param description: the job's description.
    :param labels: labels of the job (and the model and endpoint it makes): keys and values of lowercase letters,
        digits, ``_`` and ``-``, at most 63 characters each; the provider's own two labels count among Vertex's 64.
    """

    adapter_size: StrictStr | None = None
    export_last_checkpoint_only: StrictBool | None = None
    evaluation_config: EvaluationConfig | None = None
    tuned_model_display_name: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    description: StrictStr | None = None
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)

    @field_validator("adapter_size", mode="before")
    @classmethod
    def _adapter_size(cls, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value in ADAPTER_SIZES:
            return ADAPTER_SIZES[value]
        if isinstance(value, str) and value.upper() in ADAPTER_SIZES.values():
            return value.upper()
        raise ValueError(f"{value!r} is not an adapter size (1, 2, 4, 8, 16 or 32)")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_LABELS - len(OWN_KEYS):
            raise ValueError(
                f"{len(value)} labels given; Vertex AI takes {MAX_LABELS}, {len(OWN_KEYS)} of them the provider's own"
            )
        for key, item in value.items():
            if key in OWN_KEYS:
                raise ValueError(f"{key!r} is the provider's own label")
            problem = label_problem(key, item)
            if problem is not None:
                raise ValueError(problem)
        return value


#: Options given under a name that is not Vertex's, and where the setting goes instead.
_ELSEWHERE = {
    "epoch_count": "the method's hyperparameters: n_epochs (sent as epochCount)",
    "epochs": "the method's hyperparameters: n_epochs (sent as epochCount)",
    "n_epochs": "the method's hyperparameters: n_epochs (sent as epochCount)",
    "learning_rate_multiplier": "the method's hyperparameters: learning_rate_multiplier",
    "beta": "method.dpo.hyperparameters.beta",
    "learning_rate": "Vertex AI tunes Gemini with a learning_rate_multiplier of its default rate, in the method's "
    "hyperparameters",
    "batch_size": "Vertex AI sets the batch size of Gemini tuning itself",
    "suffix": "give tuned_model_display_name",
    "metadata": "give labels",
}


def vertex_options(raw: Mapping[str, Any] | VertexOptions | None) -> VertexOptions:
    """Validate ``service_options`` for Vertex AI; the first fault is refused in one line naming its field."""
    if isinstance(raw, VertexOptions):
        return raw
    given = dict(raw or {})
    for key in given:
        if key in _ELSEWHERE and key not in VertexOptions.model_fields:
            raise InvalidRequestError(
                f"Invalid Vertex AI options: service_options.{key}: not a Vertex AI option; {_ELSEWHERE[key]}",
                field=f"service_options.{key}",
            )
    return read_options(VertexOptions, given, "Vertex AI")


# -- from Vertex AI's answers to the canonical models --------------------------------------------------------------


def _int(value: Any) -> int | None:
    """An int64 of proto JSON (a number, or a string of digits)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _job_error(data: Mapping[str, Any], state: Any) -> dict[str, Any] | None:
    """The job's ``google.rpc.Status`` as the canonical error (an expired or partial job's says so)."""
    status = _dict(data.get("error"))
    code = status.get("code")
    name = RPC_CODES.get(code, str(code)) if isinstance(code, int) else (str(code) if code else None)
    message = status.get("message")
    if state == "JOB_STATE_EXPIRED" and not message:
        return {"code": name or "EXPIRED", "message": "the tuning job expired before it finished"}
    if state == "JOB_STATE_PARTIALLY_SUCCEEDED":
        return {
            "code": name or "PARTIALLY_SUCCEEDED",
            "message": message or "the tuning job partially succeeded: some of its results may be missing",
        }
    if not status or name == "OK":
        return None
    error: dict[str, Any] = {"code": name, "message": message or name}
    if status.get("details"):
        error["details"] = status["details"]
    return error


def _hyperparameters(hyper: Mapping[str, Any], method: str) -> dict[str, Any]:
    given = {
        "n_epochs": _int(hyper.get("epochCount")),
        "learning_rate_multiplier": _number(hyper.get("learningRateMultiplier")),
        "beta": _number(hyper.get("beta")) if method == "dpo" else None,
        "adapter_size": hyper.get("adapterSize"),
    }
    return {k: v for k, v in given.items() if v is not None}


def job_from_vertex(data: Any) -> Any:
    """A ``TuningJob`` onto the canonical job; the state as sent stays as ``vertex_state``."""
    if not isinstance(data, dict):
        return data
    state = data.get("state") or "JOB_STATE_UNSPECIFIED"
    status = canonical(VERTEX_STATES, state)
    method = "dpo" if isinstance(data.get("preferenceOptimizationSpec"), dict) else "supervised"
    spec = _dict(data.get(SPECS[method]))
    tuned = _dict(data.get("tunedModel"))
    hyper = _hyperparameters(_dict(spec.get("hyperParameters")), method)
    labels = data.get("labels")
    job: dict[str, Any] = {
        "id": data.get("name"),
        "object": "fine_tuning.job",
        "status": status,
        "model": data.get("baseModel"),
        "created_at": rfc3339_seconds(data.get("createTime")),
        "finished_at": rfc3339_seconds(data.get("endTime")),
        "training_file": spec.get("trainingDatasetUri"),
        "validation_file": spec.get("validationDatasetUri"),
        "fine_tuned_model": tuned.get("model") if status == _S.SUCCEEDED.value else None,
        "error": _job_error(data, state),
        "method": {"type": method, method: {"hyperparameters": hyper} if hyper else {}},
        "metadata": dict(labels) if isinstance(labels, dict) and labels else None,
        "vertex_state": state,
        "started_at": rfc3339_seconds(data.get("startTime")),
        "updated_at": rfc3339_seconds(data.get("updateTime")),
        "tuned_model": tuned or None,
        "tuned_model_endpoint": tuned.get("endpoint"),
        "tuned_model_display_name": data.get("tunedModelDisplayName"),
        "description": data.get("description"),
        "tuning_data_stats": data.get("tuningDataStats"),
        "experiment": data.get("experiment"),
    }
    return {k: v for k, v in job.items() if v is not None}


def checkpoints_from_vertex(data: Any) -> list[dict[str, Any]]:
    """A job's ``tunedModel.checkpoints`` as canonical checkpoints, newest (highest step) first.

    A checkpoint is asked through the endpoint it is deployed to, which is its ``fine_tuned_model_checkpoint``.
    """
    job = _dict(data)
    name = str(job.get("name") or "")
    found = []
    for item in _dict(job.get("tunedModel")).get("checkpoints") or []:
        if not isinstance(item, dict):
            continue
        ident = str(item.get("checkpointId") or "")
        step = _int(item.get("step"))
        checkpoint = {
            "id": f"{name}/checkpoints/{ident}",
            "object": "fine_tuning.job.checkpoint",
            "fine_tuning_job_id": name,
            "fine_tuned_model_checkpoint": item.get("endpoint"),
            "step_number": step,
            "metrics": {"step": float(step)} if step is not None else {},
            "checkpoint_id": ident,
            "epoch": _int(item.get("epoch")),
            "endpoint": item.get("endpoint"),
        }
        found.append({k: v for k, v in checkpoint.items() if v is not None})
    return sorted(found, key=lambda c: (c.get("step_number") or 0, c.get("epoch") or 0), reverse=True)


def _page(item: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A list answer (``{"tuningJobs": [...], "nextPageToken"}``) as a canonical page, newest first.

    The page's cursor is ``nextPageToken``; the jobs of a page are put newest first, as the waits and the
    once-only search read a list.
    """

    def translate(data: Any) -> Any:
        answer = _dict(data)
        jobs = [item(job) for job in answer.get("tuningJobs") or [] if isinstance(job, dict)]
        jobs.sort(key=lambda job: job.get("created_at") or 0, reverse=True)
        token = answer.get("nextPageToken") or None
        return {"object": "list", "data": jobs, "has_more": bool(token), "last_id": token}

    return translate


# -- errors ------------------------------------------------------------------------------------------------------


def _detail(details: list[Any], kind: str) -> dict[str, Any]:
    return next(
        (d for d in details if isinstance(d, dict) and str(d.get("@type", "")).endswith(f"google.rpc.{kind}")), {}
    )


def read_google_error(response: httpx.Response, body: Any) -> ErrorFields:
    """Google's error answer: ``{"error": {"code", "message", "status", "details"}}``, its status picking the class.

    A ``BadRequest`` detail's first field violation names the field; an ``ErrorInfo`` detail's reason is the error's
    type; a ``RequestInfo`` detail's id is the request's. A ``FAILED_PRECONDITION`` answering a cancel says the job
    is in a state that cannot be cancelled (it has ended): a conflict, as the canonical API answers it.
    """
    detail = body[0] if isinstance(body, list) and body else body
    error = detail.get("error") if isinstance(detail, dict) else None
    if not isinstance(error, dict) or not (error.get("status") or isinstance(error.get("code"), int)):
        return read_error_body(response, body)
    code = error.get("code")
    status = str(error.get("status") or (RPC_CODES.get(code, "") if isinstance(code, int) else "")) or None
    details: list[Any] = error["details"] if isinstance(error.get("details"), list) else []
    violations = _detail(details, "BadRequest").get("fieldViolations") or []
    param = violations[0].get("field") if violations and isinstance(violations[0], dict) else None
    reason = _detail(details, "ErrorInfo").get("reason")
    request_id = _detail(details, "RequestInfo").get("requestId") or response.headers.get("x-request-id")
    error_class = GOOGLE_ERRORS.get(status or "")
    request = response.request
    if status == "FAILED_PRECONDITION" and request.url.path.endswith(":cancel"):
        error_class = ConflictError
    # A create refused for the quota of concurrent tuning jobs frees up as jobs end: waited for, then tried again.
    # Any other RESOURCE_EXHAUSTED (requests per minute...) is a rate limit, retried.
    violations = _detail(details, "QuotaFailure").get("violations") or []
    violation = violations[0] if violations and isinstance(violations[0], dict) else {}
    subject = violation.get("subject")
    said = " ".join(str(part) for part in (error.get("message"), subject, violation.get("description")) if part)
    creating = request.method == "POST" and request.url.path.endswith("/tuningJobs")
    quota = status == "RESOURCE_EXHAUSTED" and creating and "concurrent" in said.lower()
    return ErrorFields(
        message=str(error.get("message") or ""),
        code=status,
        param=str(param) if param else None,
        error_type=str(reason) if reason else None,
        request_id=str(request_id) if request_id else None,
        error_class=error_class,
        refusal="quota" if quota else None,
        quota=(str(subject) if subject else "concurrent tuning jobs") if quota else None,
    )


# -- credentials -------------------------------------------------------------------------------------------------


class GoogleCredentials:
    """The credentials of an Airflow Google connection, read on first use; the token refreshed before it expires.

    :param gcp_conn_id: the Airflow Google connection (its key file, Application Default Credentials, or an
        impersonation chain, as the Google provider's ``GoogleBaseHook`` reads them).
    """

    def __init__(self, gcp_conn_id: str) -> None:
        self.gcp_conn_id = gcp_conn_id
        self._credentials: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.gcp_conn_id!r})"

    def _load(self) -> Any:
        if self._credentials is None:
            try:
                from airflow.providers.google.common.hooks.base_google import GoogleBaseHook
            except ImportError as err:
                raise InvalidRequestError(MISSING_EXTRA, field="gcp_conn_id") from err
            self._credentials = GoogleBaseHook(gcp_conn_id=self.gcp_conn_id).get_credentials()
        return self._credentials

    @property
    def quota_project(self) -> str | None:
        """The project the requests are billed to, where the credentials name one (user credentials)."""
        project = getattr(self._credentials, "quota_project_id", None)
        return project if isinstance(project, str) and project else None

    def fresh_token(self) -> str | None:
        """The token when it needs no I/O: loaded, valid, and not about to expire; else ``None``."""
        credentials = self._credentials
        if credentials is None:
            return None
        token = getattr(credentials, "token", None)
        if not token or not getattr(credentials, "valid", False):
            return None
        expiry = getattr(credentials, "expiry", None)
        if isinstance(expiry, datetime):
            aware = expiry if expiry.tzinfo is not None else expiry.replace(tzinfo=timezone.utc)
            if (aware - datetime.now(timezone.utc)).total_seconds() < REFRESH_MARGIN:
                return None
        return str(token)

    def token(self) -> str:
        """A valid access token: the connection read and the token refreshed first where needed (I/O)."""
        with self._lock:
            credentials = self._load()
            token = self.fresh_token()
            if token is not None:
                return token
            try:
                from google.auth.transport.requests import Request
            except ImportError as err:
                raise InvalidRequestError(MISSING_EXTRA, field="gcp_conn_id") from err
            try:
                credentials.refresh(Request())
            except Exception as err:
                raise FineTuningError(
                    f"gcp_conn_id: the Google connection {self.gcp_conn_id!r} could not refresh its access token: "
                    f"{type(err).__name__}: {err}"
                ) from err
            token = getattr(credentials, "token", None)
            if not token:
                raise FineTuningError(f"gcp_conn_id: the Google connection {self.gcp_conn_id!r} gave no access token")
            return str(token)

    async def atoken(self) -> str:
        """:meth:`token` without blocking the event loop: reading the connection and refreshing run in a thread."""
        token = self.fresh_token()
        if token is not None:
            return token
        return await asyncio.to_thread(self.token)


class GoogleAuth(httpx.Auth):
    """An access token from Google credentials as a Bearer token on each request.

    :param credentials: where the credentials come from.
    """

    def __init__(self, credentials: GoogleCredentials) -> None:
        self.credentials = credentials

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.credentials!r})"

    def _apply(self, request: httpx.Request, token: str) -> None:
        request.headers["Authorization"] = f"Bearer {token}"
        project = self.credentials.quota_project
        if project:
            request.headers["x-goog-user-project"] = project

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Authenticate a sync request."""
        self._apply(request, self.credentials.token())
        yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Authenticate an async request; a token that needs I/O is fetched in a thread."""
        self._apply(request, await self.credentials.atoken())
        yield request


# -- chat completions as Gemini's generateContent -------------------------------------------------------------------

#: The chat completion fields a Gemini request has, and the ``generationConfig`` field each becomes.
_GENERATION = {
    "temperature": "temperature",
    "top_p": "topP",
    "max_completion_tokens": "maxOutputTokens",
    "max_tokens": "maxOutputTokens",
    "stop": "stopSequences",
    "n": "candidateCount",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
#: Gemini's finish reasons onto OpenAI's (any other is ``stop``).
_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequestError(
                    f"{where}[{index}]: only text parts are asked through Vertex AI here", field=f"{where}[{index}]"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequestError(f"{where}: must be a string or a list of text parts", field=where)


def gemini_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """A chat completion request as a ``generateContent`` body.

    ``system`` and ``developer`` messages make the ``systemInstruction``; ``user`` and ``assistant`` messages are
    turns of role ``user`` and ``model``; the sampling fields go in ``generationConfig``.
    """
    unknown = sorted(set(body) - {"model", "messages", *_GENERATION})
    if unknown:
        raise InvalidRequestError(
            f"{unknown[0]}: not asked of Vertex AI (a chat completion there takes {', '.join(_GENERATION)})",
            field=unknown[0],
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages: a non-empty list of messages", field="messages")
    system: list[dict[str, str]] = []
    contents: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "developer", "user", "assistant"):
            raise InvalidRequestError(
                f"messages[{index}].role: Vertex AI is asked with system, user and assistant messages, got {role!r}",
                field=f"messages[{index}].role",
            )
        text = _message_text(message.get("content"), f"messages[{index}].content")
        if role in ("system", "developer"):
            system.append({"text": text})
        else:
            contents.append({"role": "user" if role == "user" else "model", "parts": [{"text": text}]})
    if not contents:
        raise InvalidRequestError("messages: no user message to answer", field="messages")
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    generation: dict[str, Any] = {}
    for name, wire in _GENERATION.items():
        value = body.get(name)
        if value is not None:
            generation[wire] = [value] if name == "stop" and isinstance(value, str) else value
    if generation:
        request["generationConfig"] = generation
    return request


def chat_completion_from_gemini(answer: Any, model_name: str) -> dict[str, Any]:
    """A ``GenerateContentResponse`` as an OpenAI chat completion: each candidate a choice, its text parts joined.

    A blocked prompt (no candidate, ``promptFeedback.blockReason``) or a blocked answer is a refusal.
    """
    data = _dict(answer)
    choices = []
    for index, candidate in enumerate(data.get("candidates") or []):
        if not isinstance(candidate, dict):
            continue
        parts = _dict(candidate.get("content")).get("parts") or []
        text = "".join(
            p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
        )
        reason = candidate.get("finishReason")
        finish = _FINISH.get(str(reason), "stop")
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if finish == "content_filter" and not text:
            message["refusal"] = f"Vertex AI blocked the answer ({reason})"
        elif message["content"] is None and finish == "stop":
            message["content"] = ""
        choices.append({"index": candidate.get("index", index), "message": message, "finish_reason": finish})
    if not choices:
        blocked = _dict(data.get("promptFeedback")).get("blockReason") or "no candidate"
        refusal = {"role": "assistant", "content": None, "refusal": f"Vertex AI blocked the prompt ({blocked})"}
        choices.append({"index": 0, "message": refusal, "finish_reason": "content_filter"})
    usage = _dict(data.get("usageMetadata"))
    return {
        "id": str(data.get("responseId") or ""),
        "object": "chat.completion",
        "created": rfc3339_seconds(data.get("createTime")) or 0,
        "model": str(data.get("modelVersion") or model_name),
        "choices": choices,
        "usage": {
            "prompt_tokens": usage.get("promptTokenCount", 0),
            "completion_tokens": usage.get("candidatesTokenCount", 0),
            "total_tokens": usage.get("totalTokenCount", 0),
        },
    }


# -- the backend ---------------------------------------------------------------------------------------------------


class VertexBackend(Backend):
    """Vertex AI tuning jobs of one project and location; OAuth 2 access tokens (a key, or Google credentials)."""

    service: ClassVar[str] = "vertex"
    label: ClassVar[str] = "Vertex AI"
    file_reference = "gcs_uri"
    once_only = "metadata"
    metadata_field = "labels"
    training_data_rules = VERTEX_RULES

    capabilities = Capabilities(cancel=True, checkpoints=True, metadata_filter=True, chat_completions=True)
    instead = {
        "files": (
            "Vertex AI has no files API: training data is read from Cloud Storage (write the JSONL file to a bucket, "
            "e.g. with the Google provider's GCSHook, and give its gs:// URI as training_file)"
        ),
        "uploads": "Vertex AI reads training data from Cloud Storage (gs:// URIs)",
        "events": "Vertex AI keeps no event log; a job's metrics are in its Vertex AI Experiment (its experiment)",
        "job_metadata": "Vertex AI jobs carry labels: give service_options={'labels': {...}}",
        "pause": "Vertex AI's tuning API has no pause",
        "resume": "Vertex AI's tuning API has no resume",
    }
    limits = Limits(max_suffix_length=0, max_metadata_keys=MAX_LABELS, methods=frozenset(SPECS))

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        found = _ROOT.match(urlsplit(settings.base_url).path)
        if found is None:
            raise InvalidRequestError(
                f"Vertex AI connections need a project and location: give the project extra (base URL "
                f"{settings.base_url})",
                field="project",
            )
        self.project = found.group("project")
        self.location = found.group("location")
        self.api_root = settings.base_url[: settings.base_url.rindex(f"/projects/{self.project}/locations/")]
        auth = settings.auth or ("key" if settings.api_key else "google")
        self.auth_kind = auth
        self.gcp_conn_id = settings.service_fields.get("gcp_conn_id") or DEFAULT_GCP_CONN_ID
        self._google: GoogleCredentials | None = None

    # -- authentication and errors -----------------------------------------------------------------------

    def auth(self) -> httpx.Auth | None:
        """An OAuth 2 access token: the connection's password (``key``), or the Google connection's credentials."""
        if self.auth_kind == "key":
            if not self.settings.api_key:
                raise InvalidRequestError(
                    "auth 'key': the connection's password must be an OAuth 2 access token", field="auth"
                )
            return HeaderAuth("Authorization", f"Bearer {self.settings.api_key}")
        if self._google is None:  # one set of credentials for the sync and the async client
            self._google = GoogleCredentials(self.gcp_conn_id)
        return GoogleAuth(self._google)

    def read_error(self, response: httpx.Response, body: Any) -> ErrorFields:
        """Google's error shape (:func:`read_google_error`)."""
        return read_google_error(response, body)

    # -- names ---------------------------------------------------------------------------------------------

    def job_name(self, job_id: str) -> tuple[str, str, str]:
        """The project, location and id of a job named by its resource name, or by its bare id (this project's)."""
        name = job_id.strip() if isinstance(job_id, str) else ""
        found = _JOB_NAME.fullmatch(name)
        if found is not None:
            project, location, ident = found.groups()
            if location != self.location:
                raise InvalidRequestError(
                    f"job {name} is in location {location}; this connection reaches {self.location}", field="job_id"
                )
            return project, location, ident
        if not name or "/" in name:
            raise InvalidRequestError(
                "job_id must be a tuning job's resource name (projects/<project>/locations/<location>/tuningJobs/"
                f"<id>) or its id, got {job_id!r}",
                field="job_id",
            )
        return self.project, self.location, name

    def _job_url(self, job_id: str) -> str:
        project, location, ident = self.job_name(job_id)
        return (
            f"{self.api_root}/projects/{quote(project, safe='')}/locations/{quote(location, safe='')}/tuningJobs/"
            f"{path_param('job_id', ident)}"
        )

    # -- translation ----------------------------------------------------------------------------------------

    def job_from(self, data: Any) -> Any:
        """A ``TuningJob`` onto the canonical job (:func:`job_from_vertex`)."""
        return job_from_vertex(data)

    def _job(self) -> Callable[[httpx.Response], FineTuningJob]:
        return model(FineTuningJob, job_from_vertex)

    # -- the create request --------------------------------------------------------------------------------

    def job_body(self, request: CreateFineTuningJobRequest, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``TuningJob`` a create sends; refuses, before any request, what Vertex AI cannot take as meant."""
        opts = vertex_options(options)
        self._refuse_untranslatable(request)
        self._check_request(request)
        method = request.method.type if request.method is not None else "supervised"
        spec: dict[str, Any] = {"trainingDatasetUri": self._gcs_uri(request.training_file, "training_file")}
        if request.validation_file:
            spec["validationDatasetUri"] = self._gcs_uri(request.validation_file, "validation_file")
        hyper = self._hyperparameters(request, method)
        if opts.adapter_size is not None:
            hyper["adapterSize"] = opts.adapter_size
        if hyper:
            spec["hyperParameters"] = hyper
        if opts.export_last_checkpoint_only is not None:
            spec["exportLastCheckpointOnly"] = opts.export_last_checkpoint_only
        if opts.evaluation_config is not None:
            spec["evaluationConfig"] = opts.evaluation_config.to_wire()
        body: dict[str, Any] = {"baseModel": request.model, SPECS[method]: spec}
        if opts.tuned_model_display_name is not None:
            body["tunedModelDisplayName"] = opts.tuned_model_display_name
        if opts.description is not None:
            body["description"] = opts.description
        if opts.labels:
            body["labels"] = dict(opts.labels)
        return body

    def _refuse_untranslatable(self, request: CreateFineTuningJobRequest) -> None:
        """Refuse the OpenAI options that mean something else on Vertex AI, naming what to use instead."""
        refuse_untranslatable(
            request,
            {
                "suffix": "Vertex AI names the tuned model by service_options.tuned_model_display_name, not a suffix",
                "seed": "Vertex AI tuning takes no seed",
                "metadata": (
                    "Vertex AI jobs carry labels, not free-text metadata: give service_options={'labels': {...}} "
                    "(lowercase letters, digits, _ and -, at most 63 characters)"
                ),
                "integrations": (
                    "Vertex AI has no Weights & Biases integration: its tuning metrics go to a Vertex AI Experiment "
                    "(the job's experiment)"
                ),
            },
        )
        method = request.method
        if method is not None and method.type == "reinforcement":
            raise InvalidRequestError(
                "Invalid fine-tuning request: method.type: Vertex AI does not tune with 'reinforcement' here (its "
                "reinforcement tuning grades with reward configs of its own, not an OpenAI grader); it takes "
                "supervised and dpo",
                field="method.type",
            )

    def _hyperparameters(self, request: CreateFineTuningJobRequest, method: str) -> dict[str, Any]:
        """The method's hyperparameters that mean the same on Vertex AI, by Vertex's names; ``"auto"`` left out."""
        block = getattr(request.method, method, None) if request.method is not None else None
        hyperparameters = getattr(block, "hyperparameters", None)
        given = hyperparameters.to_body() if hyperparameters is not None else {}
        same = {"n_epochs": "epochCount", "learning_rate_multiplier": "learningRateMultiplier", "beta": "beta"}
        sent: dict[str, Any] = {}
        for name, value in given.items():
            if name == "batch_size":
                raise InvalidRequestError(
                    f"Invalid fine-tuning request: method.{method}.hyperparameters.batch_size: not sent to Vertex AI, "
                    "which sets the batch size of Gemini tuning itself (it has no option for it)",
                    field=f"method.{method}.hyperparameters.batch_size",
                )
            if name not in same:
                raise InvalidRequestError(
                    f"Invalid fine-tuning request: method.{method}.hyperparameters.{name}: Vertex AI has no such "
                    "hyperparameter (it takes n_epochs, learning_rate_multiplier, and beta for dpo)",
                    field=f"method.{method}.hyperparameters.{name}",
                )
            if value != "auto":
                sent[same[name]] = value
        return sent

    def _gcs_uri(self, value: str, field: str) -> str:
        if not GCS_URI.fullmatch(value):
            raise InvalidRequestError(
                f"Invalid fine-tuning request: {field}: Vertex AI reads training data from Cloud Storage; {value!r} is "
                "not a gs://bucket/path URI",
                field=field,
            )
        return value

    def epoch_rule(self, request: CreateFineTuningJobRequest, body: Mapping[str, Any]) -> EpochRule:
        """The body's ``epochCount`` (``n_epochs``), for a cost estimate; Vertex AI publishes no rule without it."""
        spec: dict[str, Any] = next((body[name] for name in SPECS.values() if isinstance(body.get(name), dict)), {})
        return EpochRule(_int(_dict(spec.get("hyperParameters")).get("epochCount")), None, "n_epochs")

    # -- jobs ------------------------------------------------------------------------------------------------

    def tagged(self, identity: JobIdentity, service_options: Mapping[str, Any] | None) -> JobIdentity:
        """The task's tag as a label value (:func:`label_value`), the same on create, filter and check.

        The labels a DAG gives leave room for the provider's two (the once-only rule's limit), or are refused
        naming ``service_options.labels`` before any request.
        """
        opts = vertex_options(service_options)
        try:
            room_for_tags(opts.labels)
        except InvalidRequestError as err:
            why = str(err.args[0] if err.args else err).split("metadata: ", 1)[-1]
            raise InvalidRequestError(
                f"Invalid Vertex AI options: service_options.labels: {why}", field="service_options.labels"
            ) from None
        return JobIdentity(label_value(identity.tag), identity.since)

    def create_prepared_job(self, body: Mapping[str, Any], *, job_id: str | None = None) -> Call[FineTuningJob]:
        """``POST tuningJobs``: answered the job made (not re-sent when its outcome is unknown)."""
        if job_id is not None:
            self.require("client_job_id")
        labels = body.get("labels") or {}
        for key, value in labels.items():
            problem = label_problem(str(key), value)
            if problem is not None:
                raise InvalidRequestError(f"Invalid Vertex AI labels: {problem}", field="service_options.labels")
        if len(labels) > MAX_LABELS:
            raise InvalidRequestError(
                f"Invalid Vertex AI labels: {len(labels)} labels, at most {MAX_LABELS}", field="service_options.labels"
            )
        return Call("POST", "tuningJobs", self._job(), json=dict(body), idempotent=False)

    def job_call(self, method: str, job_id: str, action: str | None = None) -> Call[FineTuningJob]:
        """``GET {name}``, or ``POST {name}:cancel``; pause and resume do not exist and are refused."""
        if action in ("pause", "resume"):
            self.require(action, job_id=job_id)
        if action not in (None, "cancel"):
            raise InvalidRequestError(f"action: Vertex AI tuning jobs take no {action!r}", field="action")
        url = self._job_url(job_id)
        if action is None:
            return Call(method, url, self._job())
        project, location, ident = self.job_name(job_id)
        name = f"projects/{project}/locations/{location}/tuningJobs/{ident}"

        def cancelled(response: httpx.Response) -> FineTuningJob:
            # The cancel answers an empty object; a cancel Vertex accepted leaves the job cancelling.
            data = response.json() if response.content else {}
            if isinstance(data, dict) and data.get("name"):
                return FineTuningJob.model_validate(job_from_vertex(data))
            return FineTuningJob.model_validate({"id": name, "status": _S.CANCELLING.value})

        return Call("POST", f"{url}:cancel", cancelled, json={})

    def _list(self, after: str | None, limit: int | None, filter_: str | None, cls: type[M]) -> Call[Page[M]]:
        params = {"pageSize": limit, "pageToken": after, "filter": filter_}
        return Call("GET", "tuningJobs", model(Page[cls], _page(job_from_vertex)), params=params)  # type: ignore[valid-type]

    def list_jobs(
        self, after: str | None, limit: int | None, metadata: Mapping[str, str] | None
    ) -> Call[Page[FineTuningJob]]:
        """``GET tuningJobs``, a page at a time, filtered by labels (``labels.KEY="VALUE"``) where asked."""
        return self._list(after, limit, self.label_filter(metadata), FineTuningJob)

    def list_job_states(self, after: str | None, limit: int | None) -> Call[Page[JobState]]:
        """The job list as lean states (the triggerer's shared poller)."""
        return self._list(after, limit, None, JobState)

    def label_filter(self, metadata: Mapping[str, str] | None) -> str | None:
        """The list filter of jobs carrying every label of ``metadata`` (each value as :func:`label_value` makes it).

        A key Vertex AI would not take is refused before any request.
        """
        if not metadata:
            return None
        terms = []
        for key, value in metadata.items():
            problem = label_problem(key, label_value(value))
            if problem is not None:
                raise InvalidRequestError(f"metadata: {problem}", field="metadata")
            terms.append(f'labels.{key}="{label_value(value)}"')
        return " AND ".join(terms)

    def next_page(self, call: Call[Page[M]], page: Page[M]) -> Call[Page[M]] | None:
        """The next page: the cursor is ``nextPageToken``."""
        if not page.has_more or not page.last_id:
            return None
        return replace(call, params={**(call.params or {}), "pageToken": page.last_id})

    def checkpoints(self, job_id: str, after: str | None, limit: int | None) -> Call[Page[FineTuningJobCheckpoint]]:
        """The job's ``tunedModel.checkpoints``, read from the job, newest first, in one page (after ``after``)."""

        def parse(response: httpx.Response) -> Page[FineTuningJobCheckpoint]:
            found = checkpoints_from_vertex(response.json())
            if after is not None:
                ids = [c["id"] for c in found]
                found = found[ids.index(after) + 1 :] if after in ids else found
            return Page[FineTuningJobCheckpoint].model_validate({"data": found, "has_more": False})

        return Call("GET", self._job_url(job_id), parse)

    def job_url(self, job_id: str) -> str | None:
        """The job's page in the Google Cloud console (only for Google's own endpoints)."""
        host = urlsplit(self.settings.base_url).hostname or ""
        if not host.endswith("aiplatform.googleapis.com"):
            return None
        try:
            project, location, ident = self.job_name(job_id)
        except InvalidRequestError:
            return None
        return (
            f"https://console.cloud.google.com/vertex-ai/generative/language/locations/{quote(location, safe='')}/"
            f"tuning/tuningJob/{quote(ident, safe='')}?project={quote(project, safe='')}"
        )

    # -- asking a model ---------------------------------------------------------------------------------------

    def chat_completion(self, body: Mapping[str, Any]) -> Call[dict[str, Any]]:
        """``POST {model}:generateContent``, read back as a chat completion.

        ``model`` is named as Google's SDK names it: a resource name (``projects/.../endpoints/...``, a tuned
        model's endpoint or a checkpoint's) from the API's root, ``publishers/...`` or ``models/...`` in this
        location, ``<publisher>/<model>``, or a Google model's id (``gemini-2.5-flash``).
        """
        name = body.get("model")
        if not isinstance(name, str) or not name or any(bad in name for bad in ("..", "?", "&", "#", " ")):
            raise InvalidRequestError(f"model: not a Vertex AI model or endpoint name: {name!r}", field="model")
        if name.startswith("projects/"):
            url = f"{self.api_root}/{name}:generateContent"
        elif name.startswith(("publishers/", "models/")):
            url = f"{name}:generateContent"
        elif "/" in name:
            publisher, ident = name.split("/", 1)
            url = f"publishers/{publisher}/models/{ident}:generateContent"
        else:
            url = f"publishers/google/models/{name}:generateContent"
        request = gemini_request(body)

        def parse(response: httpx.Response) -> dict[str, Any]:
            return chat_completion_from_gemini(response.json(), name)

        return Call("POST", url, parse, json=request)
