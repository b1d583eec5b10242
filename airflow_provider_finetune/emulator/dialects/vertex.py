"""Google Vertex AI's tuning dialect: Gemini tuning jobs over the same trainer as the other dialects.

Served under ``/vertex``. Google's ``google-genai`` SDK in Vertex mode reaches it with
``HttpOptions(base_url=f"{root}/vertex/", api_version="v1")`` and a project and location: it joins the base URL,
the API version and ``projects/{project}/locations/{location}/...``. Both ``v1`` and ``v1beta1`` (the SDK's
default in Vertex mode) are served; ``{v}`` below is either.

* ``POST /vertex/{v}/projects/{p}/locations/{l}/tuningJobs``: creates a tuning job and answers the ``TuningJob``
  at once, ``JOB_STATE_PENDING`` (a job is a resource made synchronously, not a long-running operation);
* ``GET .../tuningJobs/{id}``: the job;
* ``GET .../tuningJobs``: ``{"tuningJobs": [...], "nextPageToken"}``, newest first, with ``pageSize`` (default
  and most 100), ``pageToken`` and ``filter`` (Vertex's list filter: ``state``, ``create_time``, ``update_time``,
  ``base_model``, ``tuned_model_display_name``, ``labels.KEY`` compared with ``=``, ``!=``, ``<``, ``<=``, ``>``,
  ``>=``, ``labels.KEY:*`` and ``labels:KEY`` for a key's presence; terms joined by ``AND`` (or a space), ``OR``,
  ``NOT``/``-`` and parentheses);
* ``POST .../tuningJobs/{id}:cancel``: ``{}``; the job is ``JOB_STATE_CANCELLING`` for :data:`CANCELLING_SECONDS`
  (divided by the speed), then ``JOB_STATE_CANCELLED`` with ``error`` ``{"code": 1, "message": "CANCELED"}``; a
  job that has ended is ``FAILED_PRECONDITION``;
* ``POST /vertex/{v}/projects/{p}/locations/{l}/endpoints/{n}:generateContent``: a tuned model's endpoint (or one
  of its checkpoints') answers in Gemini's ``GenerateContentResponse`` shape, from the examples it was trained on
  (:func:`~airflow_provider_finetune.emulator.inference.answer_from`, as every dialect's fine-tuned models);
  ``.../publishers/google/models/{model}:generateContent`` answers for a base model.

Requests authenticate with ``Authorization: Bearer <token>``, the token being the emulator's API key (any token
when it has none; the admin key too); a missing or wrong token is ``401 UNAUTHENTICATED``. Every error is
Google's ``{"error": {"code": <HTTP status>, "message", "status": <gRPC status name>}}``, with a
``google.rpc.BadRequest`` in ``details`` for a refused field; injected faults (5xx, 429, dropped connections,
lost answers) reach these routes too, in the same shape.

A create is checked as Vertex checks it, each refusal ``400 INVALID_ARGUMENT`` naming the field by its proto path
(``tuning_job.supervised_tuning_spec.hyper_parameters.epoch_count``): unknown fields, wrong JSON types, a base
model that is not one of :data:`BASE_MODELS`, one of ``supervisedTuningSpec`` and ``preferenceOptimizationSpec``,
``gs://`` URIs of JSONL objects, hyper-parameter ranges, the adapter sizes of the base model, options only open
models take, and labels (at most 64; keys and values of lowercase letters, digits, ``_`` and ``-``, at most 63
characters, a key starting with a letter). ``faults.max_active_jobs`` caps the jobs pending, running or
cancelling: a create beyond it is ``429 RESOURCE_EXHAUSTED``.

The training (and validation) data is read from Cloud Storage when the job is created, through the JSON API at
``EmulatorConfig.gcs_endpoint`` (``GET {gcs}/storage/v1/b/{bucket}/o/{object}?alt=media``; default
``STORAGE_EMULATOR_HOST``). A missing object, an unreachable store or a bad line fails the job when its dataset
processing ends (``JOB_STATE_FAILED``, ``error.code`` 3, the message naming the URI and line). The data is Vertex's
Gemini format, one example a line: ``{"systemInstruction"?, "contents": [{"role": "user"|"model", "parts":
[{"text"}]}]}`` ending with a ``model`` turn for supervised tuning; ``{"systemInstruction"?, "contents": [...]
ending with a user turn, "completions": [{"score", "completion": {"role": "model", "parts"}}, ...]}`` (at least
two) for preference tuning. Its counts make ``tuningDataStats``.

A job trains on the simulated trainer (:mod:`~airflow_provider_finetune.emulator.trainer`): ``JOB_STATE_PENDING``
while its dataset is processed and it waits, ``JOB_STATE_RUNNING`` while it trains, then ``JOB_STATE_SUCCEEDED``
with ``tunedModel`` (``model`` ``projects/{p}/locations/{l}/models/{n}@1``, ``endpoint``), or ``JOB_STATE_FAILED``.
A checkpoint is made at the end of each epoch and listed in ``tunedModel.checkpoints`` as training goes (none with
``exportLastCheckpointOnly``); the last one's endpoint is the tuned model's. The label ``emulator_force_failure``
fails a job half-way through training (``error.code`` 13). Under ``v1beta1`` a job also shows ``tuningJobState``
and ``tuningJobMetadata``. Numbers of type int64 are JSON strings, as Google's REST APIs write them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import math
import re
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airflow_provider_finetune.emulator.faults import register_fault_shape
from airflow_provider_finetune.emulator.inference import answer_from
from airflow_provider_finetune.emulator.store import Record, token
from airflow_provider_finetune.emulator.trainer import (
    FORCE_FAILURE_KEY,
    SimJob,
    auto_batch_size,
    auto_n_epochs,
    durations,
    plan_training,
)
from airflow_provider_finetune.training_data import estimate_text_tokens, iter_lines

if TYPE_CHECKING:
    from airflow_provider_finetune.emulator.core import Emulator

__all__ = [
    "BASE_MODELS",
    "CANCELLING_SECONDS",
    "PREFIX",
    "VERSIONS",
    "GeminiBaseModel",
    "GoogleError",
    "VertexDialect",
    "google_error_body",
    "vertex_routes",
]

logger = logging.getLogger(__name__)

#: Where the dialect is served: give the SDK ``HttpOptions(base_url=f"{root}/vertex/")``.
PREFIX = "/vertex"
#: The API versions served.
VERSIONS = ("v1", "v1beta1")
#: Seconds (at speed 1.0) a cancelled job stays ``JOB_STATE_CANCELLING``.
CANCELLING_SECONDS = 5.0
#: The store's kind of Vertex job records.
JOB_KIND = "vertex-job"
#: Most jobs a list page holds, and the page size when none is asked for.
MAX_PAGE_SIZE = 100
#: Most examples a validation dataset may hold.
MAX_VALIDATION_EXAMPLES = 5000
#: Ranges of the hyper-parameters the emulator accepts, bounds included.
EPOCH_COUNT_RANGE = (1, 100)
LEARNING_RATE_MULTIPLIER_MAX = 10.0
BETA_MAX = 1.0

_ADAPTER_SIZES = (
    "ADAPTER_SIZE_UNSPECIFIED",
    "ADAPTER_SIZE_ONE",
    "ADAPTER_SIZE_TWO",
    "ADAPTER_SIZE_FOUR",
    "ADAPTER_SIZE_EIGHT",
    "ADAPTER_SIZE_SIXTEEN",
    "ADAPTER_SIZE_THIRTY_TWO",
)
_TUNING_MODES = ("TUNING_MODE_UNSPECIFIED", "TUNING_MODE_FULL", "TUNING_MODE_PEFT_ADAPTER")


@dataclass(frozen=True)
class GeminiBaseModel:
    """A Gemini model Vertex tunes.

    :param name: its name, as ``baseModel`` gives it (``publishers/google/models/{name}`` is accepted too).
    :param adapter_sizes: the adapter sizes it takes.
    :param default_adapter_size: the adapter size a job without one gets.
    :param preference: whether it takes preference tuning (``preferenceOptimizationSpec``).
    """

    name: str
    adapter_sizes: tuple[str, ...]
    default_adapter_size: str
    preference: bool = False


_PRO_SIZES = ("ADAPTER_SIZE_ONE", "ADAPTER_SIZE_TWO", "ADAPTER_SIZE_FOUR", "ADAPTER_SIZE_EIGHT")
_FLASH_SIZES = (*_PRO_SIZES, "ADAPTER_SIZE_SIXTEEN")

#: The base models the dialect tunes, by name.
BASE_MODELS: dict[str, GeminiBaseModel] = {
    model.name: model
    for model in (
        GeminiBaseModel("gemini-2.5-pro", _PRO_SIZES, "ADAPTER_SIZE_FOUR"),
        GeminiBaseModel("gemini-2.5-flash", _FLASH_SIZES, "ADAPTER_SIZE_EIGHT", preference=True),
        GeminiBaseModel("gemini-2.5-flash-lite", _FLASH_SIZES, "ADAPTER_SIZE_EIGHT", preference=True),
        GeminiBaseModel("gemini-2.0-flash-001", _PRO_SIZES, "ADAPTER_SIZE_FOUR"),
        GeminiBaseModel("gemini-2.0-flash-lite-001", _PRO_SIZES, "ADAPTER_SIZE_FOUR"),
    )
}

# google.rpc.Code values of a job's ``error``.
_CODE_CANCELLED = 1
_CODE_INVALID_ARGUMENT = 3
_CODE_INTERNAL = 13


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


class GoogleError(Exception):
    """An error answer in Google's shape, raised anywhere in the dialect and rendered by its routes.

    :param status: the HTTP status (also the body's ``code``).
    :param grpc: the gRPC status name (``INVALID_ARGUMENT``...).
    :param message: the message, for a person; never holds a secret.
    :param violations: ``(field, description)`` pairs of a refused request, sent as a ``google.rpc.BadRequest``.
    """

    def __init__(self, status: int, grpc: str, message: str, *, violations: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.grpc = grpc
        self.message = message
        self.violations = violations or []

    def body(self) -> dict[str, Any]:
        """The answer's JSON body."""
        details = None
        if self.violations:
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": name, "description": text} for name, text in self.violations],
                }
            ]
        return google_error_body(self.status, self.grpc, self.message, details)


def google_error_body(
    status: int, grpc: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``{"error": {"code": <HTTP status>, "message", "status": <gRPC status name>, "details"?}}``."""
    error: dict[str, Any] = {"code": status, "message": message, "status": grpc}
    if details:
        error["details"] = details
    return {"error": error}


def _invalid(message: str, *, violations: list[tuple[str, str]] | None = None) -> GoogleError:
    return GoogleError(400, "INVALID_ARGUMENT", message, violations=violations)


def _not_found(message: str) -> GoogleError:
    return GoogleError(404, "NOT_FOUND", message)


def _field_errors(violations: list[tuple[str, str]]) -> GoogleError:
    """Vertex's refusal of a create whose fields break its rules: every broken rule listed, by proto path."""
    listed = "".join(f"{index}.Field: {name}; Message: {text}\t" for index, (name, text) in enumerate(violations, 1))
    return _invalid(f"List of found errors:\t{listed}", violations=violations)


_FAULT_STATUSES = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE"}


def _google_fault(status: int, message: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of an injected fault on a Vertex path."""
    return google_error_body(status, _FAULT_STATUSES.get(status, "UNKNOWN"), message), {}


register_fault_shape(PREFIX + "/", _google_fault)


# ---------------------------------------------------------------------------------------------------------
# The create request: proto JSON parsing, then Vertex's rules
# ---------------------------------------------------------------------------------------------------------

_Schema = Any  # a message (dict of field -> schema), an enum (tuple of names) or a kind (str)

_SFT_HYPER: dict[str, _Schema] = {
    "epochCount": "int64",
    "learningRateMultiplier": "double",
    "adapterSize": _ADAPTER_SIZES,
    "batchSize": "int64",
    "learningRate": "double",
}
_PREFERENCE_HYPER: dict[str, _Schema] = {
    "epochCount": "int64",
    "learningRateMultiplier": "double",
    "adapterSize": _ADAPTER_SIZES,
    "beta": "double",
}
_SFT_SPEC: dict[str, _Schema] = {
    "trainingDatasetUri": "string",
    "validationDatasetUri": "string",
    "hyperParameters": _SFT_HYPER,
    "exportLastCheckpointOnly": "bool",
    "evaluationConfig": "object",
    "tuningMode": _TUNING_MODES,
}
_PREFERENCE_SPEC: dict[str, _Schema] = {
    "trainingDatasetUri": "string",
    "validationDatasetUri": "string",
    "hyperParameters": _PREFERENCE_HYPER,
    "exportLastCheckpointOnly": "bool",
    "evaluationConfig": "object",
}
#: Output-only fields, ignored in a create as Google ignores them.
_OUTPUT_ONLY = (
    "name",
    "state",
    "createTime",
    "startTime",
    "endTime",
    "updateTime",
    "error",
    "experiment",
    "tunedModel",
    "tuningDataStats",
    "pipelineJob",
    "tuningJobState",
    "tuningJobMetadata",
)
#: Fields of other kinds of tuning, which the dialect does not emulate.
_NOT_EMULATED = (
    "preTunedModel",
    "distillationSpec",
    "reinforcementTuningSpec",
    "partnerModelTuningSpec",
    "fullFineTuningSpec",
    "veoTuningSpec",
    "veoLoraTuningSpec",
    "distillationSamplingSpec",
)
_TUNING_JOB: dict[str, _Schema] = {
    "baseModel": "string",
    "tunedModelDisplayName": "string",
    "description": "string",
    "labels": "map",
    "supervisedTuningSpec": _SFT_SPEC,
    "preferenceOptimizationSpec": _PREFERENCE_SPEC,
    "encryptionSpec": {"kmsKeyName": "string"},
    "evaluationConfig": "object",
    "customBaseModel": "string",
    "outputUri": "string",
    "serviceAccount": "string",
    **{name: "output" for name in _OUTPUT_ONLY},
    **{name: "not-emulated" for name in _NOT_EMULATED},
}
_TYPE_NAMES = {"string": "TYPE_STRING", "int64": "TYPE_INT64", "double": "TYPE_DOUBLE", "bool": "TYPE_BOOL"}
#: The ``tuning_spec`` oneof.
_SPECS = ("supervisedTuningSpec", "preferenceOptimizationSpec")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _bad_value(path: str, kind: str, value: Any) -> GoogleError:
    message = f"Invalid value at '{path}' ({kind}), {json.dumps(value)}"
    return _invalid(message, violations=[(path, message)])


def parse_message(value: Any, schema: _Schema, path: str) -> Any:
    """Read a proto JSON value as Google's front end does.

    Field names may be camelCase or snake_case, an int64 a number or a decimal string, an enum its name; an
    unknown field or a wrong type is ``INVALID_ARGUMENT``.

    :param value: the JSON value.
    :param schema: what it must be.
    :param path: its proto path, which errors name (``tuning_job.supervised_tuning_spec``).
    :returns: the value with camelCase field names and typed scalars; output-only fields dropped.
    """
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise _bad_value(path, "TYPE_MESSAGE", value)
        result: dict[str, Any] = {}
        for key, item in value.items():
            name = _camel(key)
            if name not in schema:
                message = f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}': Cannot find field."
                raise _invalid(message, violations=[(path, message)])
            kind = schema[name]
            if kind == "output" or item is None:
                continue
            if kind == "not-emulated":
                raise _field_errors([(f"{path}.{_snake(name)}", f"{name} is not supported by this emulator.")])
            if name in _SPECS and any(spec in result for spec in _SPECS):
                message = (
                    f"Invalid JSON payload received. Oneof field 'tuning_spec' is already set. Cannot set '{name}'"
                )
                raise _invalid(message, violations=[(path, message)])
            result[name] = parse_message(item, kind, f"{path}.{_snake(name)}")
        return result
    if isinstance(schema, tuple):
        if isinstance(value, str) and value in schema:
            return value
        raise _bad_value(path, "TYPE_ENUM", value)
    if schema == "string":
        if not isinstance(value, str):
            raise _bad_value(path, _TYPE_NAMES[schema], value)
        return value
    if schema == "bool":
        if not isinstance(value, bool):
            raise _bad_value(path, _TYPE_NAMES[schema], value)
        return value
    if schema == "int64":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        raise _bad_value(path, _TYPE_NAMES[schema], value)
    if schema == "double":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _bad_value(path, _TYPE_NAMES[schema], value)
    if schema == "map":
        if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
            raise _bad_value(path, "TYPE_MAP", value)
        return dict(value)
    if not isinstance(value, dict):  # "object": any JSON object, kept as sent
        raise _bad_value(path, "TYPE_MESSAGE", value)
    return value


def _gcs_object(uri: str) -> tuple[str, str] | None:
    """The bucket and object of a ``gs://bucket/object.jsonl`` URI, or ``None``."""
    match = re.fullmatch(r"gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/(.+)", uri)
    if match is None or not match[2].lower().endswith(".jsonl"):
        return None
    return match[1], match[2]


def _label_problem(text: str, *, key: bool) -> str | None:
    what = "key" if key else "value"
    if len(text) > 63:
        return f"label {what} {text!r} is longer than 63 characters"
    if key and (not text or not (text[0].isalpha() and not text[0].isupper())):
        return f"label key {text!r} must start with a lowercase letter"
    for char in text:
        if not (char.isdigit() or char in "_-" or (char.isalpha() and not char.isupper())):
            return f"label {what} {text!r} may hold lowercase letters, digits, '_' and '-' only, not {char!r}"
    return None


@dataclass(frozen=True)
class CreateRequest:
    """A create request that passed every check made at once.

    :param body: the request, parsed (camelCase names, typed values).
    :param base: the base model.
    :param method: ``supervised`` or ``preference``.
    :param spec: the name of the request's tuning spec field.
    :param training_uri: the training dataset's ``gs://`` URI.
    :param validation_uri: the validation dataset's, if any.
    """

    body: dict[str, Any]
    base: GeminiBaseModel
    method: str
    spec: str
    training_uri: str
    validation_uri: str | None

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The hyper-parameters the request set."""
        return dict(self.body[self.spec].get("hyperParameters") or {})


def check_create(raw: Any) -> CreateRequest:
    """Parse and check a create request body as Vertex does; every refusal is ``INVALID_ARGUMENT``."""
    body = parse_message(raw, _TUNING_JOB, "tuning_job")
    problems: list[tuple[str, str]] = []
    name = str(body.get("baseModel") or "")
    base = BASE_MODELS.get(name.removeprefix("publishers/google/models/"))
    if not name:
        problems.append(("tuning_job.base_model", "base_model is required."))
    elif base is None:
        supported = ", ".join(BASE_MODELS)
        problems.append(("tuning_job.base_model", f"Base model {name} is not supported for tuning ({supported})."))
    for option in ("customBaseModel", "outputUri"):
        if option in body:
            problems.append((f"tuning_job.{_snake(option)}", f"{option} is only supported for open models."))
    spec_name = next((spec for spec in _SPECS if spec in body), None)
    if spec_name is None:
        required = "One of supervised_tuning_spec or preference_optimization_spec is required."
        problems.append(("tuning_job.supervised_tuning_spec", required))
        raise _field_errors(problems)
    method = "supervised" if spec_name == "supervisedTuningSpec" else "preference"
    spec = body[spec_name]
    at = f"tuning_job.{_snake(spec_name)}"
    if method == "preference" and base is not None and not base.preference:
        problems.append((at, f"Preference optimization is not supported for base model {base.name}."))
    training = spec.get("trainingDatasetUri")
    if not training:
        problems.append((f"{at}.training_dataset_uri", "training_dataset_uri is required."))
    elif _gcs_object(training) is None:
        problems.append((f"{at}.training_dataset_uri", "training_dataset_uri should be a GCS object of type JSONL."))
    validation = spec.get("validationDatasetUri")
    if validation is not None and _gcs_object(validation) is None:
        problems.append(
            (f"{at}.validation_dataset_uri", "validation_dataset_uri should be a GCS object of type JSONL.")
        )
    problems += _hyperparameter_problems(spec.get("hyperParameters") or {}, f"{at}.hyper_parameters", base)
    if spec.get("tuningMode") == "TUNING_MODE_FULL":
        problems.append((f"{at}.tuning_mode", "Full fine-tuning is only supported for open models."))
    labels = body.get("labels") or {}
    if len(labels) > 64:
        problems.append(("tuning_job.labels", f"at most 64 labels are allowed, got {len(labels)}."))
    for key, value in labels.items():
        problem = _label_problem(key, key=True) or _label_problem(value, key=False)
        if problem:
            problems.append(("tuning_job.labels", problem[0].upper() + problem[1:] + "."))
    if len(body.get("tunedModelDisplayName") or "") > 128:
        problems.append(("tuning_job.tuned_model_display_name", "The display name is longer than 128 characters."))
    if problems:
        raise _field_errors(problems)
    assert base is not None
    assert training
    return CreateRequest(body, base, method, spec_name, training, validation)


def _hyperparameter_problems(given: Mapping[str, Any], at: str, base: GeminiBaseModel | None) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    low, high = EPOCH_COUNT_RANGE
    epochs = given.get("epochCount")
    if epochs is not None and not low <= epochs <= high:
        problems.append((f"{at}.epoch_count", f"epoch_count must be from {low} to {high}, got {epochs}."))
    multiplier = given.get("learningRateMultiplier")
    if multiplier is not None and not 0 < multiplier <= LEARNING_RATE_MULTIPLIER_MAX:
        problems.append(
            (
                f"{at}.learning_rate_multiplier",
                f"learning_rate_multiplier must be greater than 0 and at most {LEARNING_RATE_MULTIPLIER_MAX:g}, "
                f"got {multiplier:g}.",
            )
        )
    beta = given.get("beta")
    if beta is not None and not 0 < beta <= BETA_MAX:
        problems.append((f"{at}.beta", f"beta must be greater than 0 and at most {BETA_MAX:g}, got {beta:g}."))
    size = given.get("adapterSize")
    if size not in (None, "ADAPTER_SIZE_UNSPECIFIED") and base is not None and size not in base.adapter_sizes:
        problems.append((f"{at}.adapter_size", "The adapter size is not supported for this base model."))
    for option in ("batchSize", "learningRate"):
        if option in given:
            problems.append((f"{at}.{_snake(option)}", f"{_snake(option)} is only supported for open models."))
    return problems


# ---------------------------------------------------------------------------------------------------------
# Training data: Cloud Storage, Vertex's Gemini format, its statistics
# ---------------------------------------------------------------------------------------------------------


class DataError(Exception):
    """A dataset cannot be read or does not have Vertex's format; the message names the URI and the line."""


async def read_gcs(endpoint: str | None, uri: str) -> bytes:
    """The bytes of a ``gs://`` object, read through the Cloud Storage JSON API at ``endpoint``.

    :raises DataError: when there is no endpoint, it cannot be reached, or the object does not exist.
    """
    if not endpoint:
        raise DataError(
            f"{uri} cannot be read: no Cloud Storage endpoint is configured "
            "(set STORAGE_EMULATOR_HOST or the emulator's gcs_endpoint)"
        )
    where = _gcs_object(uri)
    if where is None:  # pragma: no cover - refused by the create's checks
        raise DataError(f"{uri} is not a gs:// URI of a JSONL object")
    root = (endpoint if "://" in endpoint else f"http://{endpoint}").rstrip("/")
    url = f"{root}/storage/v1/b/{quote(where[0], safe='')}/o/{quote(where[1], safe='')}"
    try:
        async with httpx.AsyncClient(timeout=30.0) as client:
            answer = await client.get(url, params={"alt": "media"})
    except httpx.HTTPError as exc:
        why = type(exc).__name__
        raise DataError(f"{uri} cannot be read: Cloud Storage at {root} did not answer ({why})") from None
    if answer.status_code == 404:
        raise DataError(f"{uri} does not exist")
    if answer.status_code >= 400:
        raise DataError(f"{uri} cannot be read: Cloud Storage answered HTTP {answer.status_code}")
    return answer.content


@dataclass
class DatasetCheck:
    """What a valid dataset holds.

    :param examples: its examples (lines).
    :param characters: the characters of its texts.
    :param input_tokens: each example's prompt tokens (system instruction and user turns).
    :param output_tokens: each example's answer tokens (model turns, or completions).
    :param turns: each example's contents.
    :param scores: the completions' scores (preference data).
    :param samples: the first few examples, as the stats show them.
    """

    examples: int = 0
    characters: int = 0
    input_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    samples: list[Any] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        """All its tokens."""
        return sum(self.input_tokens) + sum(self.output_tokens)


_PART_KINDS = {
    "text",
    "fileData",
    "inlineData",
    "functionCall",
    "functionResponse",
    "thought",
    "thoughtSignature",
    "videoMetadata",
}
_SAMPLES = 3


def check_dataset(data: bytes, *, method: str, name: str, most: int | None = None) -> DatasetCheck:
    """Check a dataset in Vertex's Gemini format; return its counts or raise :class:`DataError`.

    :param method: ``supervised`` or ``preference``.
    :param name: how messages name the file (its URI).
    :param most: the most examples it may hold.
    """
    found = DatasetCheck()
    for number, raw in enumerate(iter_lines(io.BytesIO(data)), start=1):
        line = raw.strip()
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if not line:
            continue
        try:
            example = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise DataError(f"{name}: line {number}: not valid JSON (the file must be JSON Lines)") from None
        try:
            if not isinstance(example, dict):
                raise DataError("an example must be a JSON object")
            _check_example(example, method, found)
        except DataError as exc:
            raise DataError(f"{name}: line {number}: {exc}") from None
        if most is not None and found.examples > most:
            raise DataError(f"{name}: the dataset holds more than {most} examples")
    if found.examples == 0:
        raise DataError(f"{name}: the dataset holds no examples")
    return found


def _check_example(example: dict[str, Any], method: str, found: DatasetCheck) -> None:
    allowed = {"systemInstruction", "contents"} | ({"completions"} if method == "preference" else set())
    names = {_camel(key): key for key in example}
    unknown = sorted(key for camel, key in names.items() if camel not in allowed)
    if unknown:
        expected = ", ".join(sorted(allowed))
        raise DataError(f"unknown field '{unknown[0]}' (an example of {method} tuning has {expected})")
    system = example.get(names.get("systemInstruction", "systemInstruction"))
    prompt = _content_text(system, "systemInstruction", roles=None) if system is not None else ""
    contents = example.get(names.get("contents", "contents"))
    if not isinstance(contents, list) or not contents:
        raise DataError("'contents' is required and must be a non-empty list")
    texts = [_content_text(item, f"contents[{index}]") for index, item in enumerate(contents)]
    roles = [item["role"] for item in contents]
    if roles[0] != "user":
        raise DataError("'contents[0].role' must be 'user' (a conversation starts with the user)")
    answer = ""
    if method == "supervised":
        if roles[-1] != "model":
            raise DataError(f"'contents[{len(contents) - 1}].role' must be 'model' (the answer to learn)")
        prompt += "".join(text for text, role in zip(texts, roles, strict=True) if role == "user")
        answer = "".join(text for text, role in zip(texts, roles, strict=True) if role == "model")
        if len(found.samples) < _SAMPLES:
            found.samples.extend(contents[: _SAMPLES - len(found.samples)])
    else:
        if roles[-1] != "user":
            raise DataError(f"'contents[{len(contents) - 1}].role' must be 'user' (the completions answer it)")
        prompt += "".join(texts)
        completions = example.get(names.get("completions", "completions"))
        if not isinstance(completions, list) or len(completions) < 2:
            raise DataError("'completions' is required and must list at least two scored completions")
        for index, item in enumerate(completions):
            at = f"completions[{index}]"
            if not isinstance(item, dict) or set(item) - {"score", "completion"}:
                raise DataError(f"'{at}' must be an object with 'score' and 'completion'")
            score = item.get("score")
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise DataError(f"'{at}.score' is required and must be a number")
            found.scores.append(float(score))
            completion = item.get("completion")
            answer += _content_text(completion, f"{at}.completion", roles=("model",))
        if len(found.samples) < _SAMPLES:
            found.samples.append({"contents": contents, "completions": completions})
    found.examples += 1
    found.characters += len(prompt) + len(answer)
    found.input_tokens.append(estimate_text_tokens(prompt))
    found.output_tokens.append(estimate_text_tokens(answer))
    found.turns.append(len(contents))


def _content_text(content: Any, where: str, roles: tuple[str | None, ...] | None = ("user", "model")) -> str:
    """The text of a ``Content``: its text parts joined; its role checked when ``roles`` says which."""
    if not isinstance(content, dict):
        raise DataError(f"'{where}' must be an object with 'parts'")
    unknown = sorted(key for key in content if key not in ("role", "parts"))
    if unknown:
        raise DataError(f"unknown field '{where}.{unknown[0]}' (a content has role and parts)")
    if roles is not None and content.get("role") not in roles:
        wanted = " or ".join(f"'{role}'" for role in roles if role)
        raise DataError(f"'{where}.role' must be {wanted}, got {content.get('role')!r}")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise DataError(f"'{where}.parts' is required and must be a non-empty list")
    texts = []
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or not part or any(_camel(key) not in _PART_KINDS for key in part):
            raise DataError(f"'{where}.parts[{index}]' must be a part ({{'text': ...}}, {{'fileData': ...}}...)")
        text = part.get("text")
        if "text" in part and not isinstance(text, str):
            raise DataError(f"'{where}.parts[{index}].text' must be a string")
        texts.append(text or "")
    return "".join(texts)


def example_pairs(data: bytes) -> dict[str, str]:
    """The (last user text -> answer) pairs of a dataset, for a model tuned on it to answer from.

    A supervised example answers with its last model turn; a preference example with its best-scored completion.
    """
    pairs: dict[str, str] = {}
    for raw in iter_lines(io.BytesIO(data)):
        try:
            example = json.loads(raw)
            contents = example["contents"]
            turns = [(item["role"], "".join(part.get("text") or "" for part in item["parts"])) for item in contents]
            if isinstance(example.get("completions"), list):
                best = max(example["completions"], key=lambda item: item["score"])
                turns.append(("model", "".join(part.get("text") or "" for part in best["completion"]["parts"])))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            continue
        answers = [index for index, (role, _) in enumerate(turns) if role == "model"]
        if answers and answers[-1] > 0 and turns[answers[-1] - 1][0] == "user":
            pairs.setdefault(turns[answers[-1] - 1][1].strip(), turns[answers[-1]][1].strip())
    return pairs


def _distribution(values: list[float], *, int64_sums: bool) -> dict[str, Any]:
    """A dataset distribution: sum, extremes, mean, median, 5th and 95th percentiles and a histogram.

    :param int64_sums: write the sums as int64 (``SupervisedTuningDatasetDistribution``) rather than a double,
        and the bucket counts as doubles rather than int64 (``DatasetDistribution``).
    """
    ordered = sorted(values)
    low, high = ordered[0], ordered[-1]

    def percentile(share: float) -> float:
        return float(ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))])

    width = (high - low) / 4 or 1.0
    buckets = []
    for index in range(4 if high > low else 1):
        left = low + index * width
        right = high if index == 3 or high == low else left + width
        count = sum(1 for value in ordered if left <= value < right or (value == right and right == high))
        buckets.append({"count": float(count) if int64_sums else str(count), "left": left, "right": right})
    total = sum(ordered)
    result: dict[str, Any] = {
        "sum": str(int(total)) if int64_sums else float(total),
        "min": float(low),
        "max": float(high),
        "mean": float(statistics.fmean(ordered)),
        "median": float(statistics.median(ordered)),
        "p5": percentile(0.05),
        "p95": percentile(0.95),
        "buckets": buckets,
    }
    if int64_sums:
        result["billableSum"] = str(int(total))
    return result


def _data_stats(found: DatasetCheck, method: str, steps: int) -> dict[str, Any]:
    """``tuningDataStats`` of a dataset."""
    if method == "supervised":
        return {
            "supervisedTuningDataStats": {
                "tuningDatasetExampleCount": str(found.examples),
                "totalTuningCharacterCount": str(found.characters),
                "totalBillableTokenCount": str(found.tokens),
                "tuningStepCount": str(steps),
                "userInputTokenDistribution": _distribution([float(v) for v in found.input_tokens], int64_sums=True),
                "userOutputTokenDistribution": _distribution([float(v) for v in found.output_tokens], int64_sums=True),
                "userMessagePerExampleDistribution": _distribution([float(v) for v in found.turns], int64_sums=True),
                "userDatasetExamples": found.samples,
            }
        }
    return {
        "preferenceOptimizationDataStats": {
            "tuningDatasetExampleCount": str(found.examples),
            "totalBillableTokenCount": str(found.tokens),
            "tuningStepCount": str(steps),
            "userInputTokenDistribution": _distribution([float(v) for v in found.input_tokens], int64_sums=False),
            "userOutputTokenDistribution": _distribution([float(v) for v in found.output_tokens], int64_sums=False),
            "scoresDistribution": _distribution(found.scores, int64_sums=False),
            "userDatasetExamples": found.samples,
        }
    }


# ---------------------------------------------------------------------------------------------------------
# The list filter (AIP-160, as Vertex's lists take it)
# ---------------------------------------------------------------------------------------------------------

_Predicate = Callable[[Mapping[str, Any]], bool]
_FILTER_TOKEN = re.compile(
    r'\s*(?:(?P<paren>[()])|(?P<op><=|>=|!=|[=<>:])|"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<word>[^\s()<>=!:"]+))'
)
_TIME_FIELDS = {
    "create_time": "createTime",
    "update_time": "updateTime",
    "end_time": "endTime",
    "start_time": "startTime",
}
_TEXT_FIELDS = {
    "state": "state",
    "base_model": "baseModel",
    "tuned_model_display_name": "tunedModelDisplayName",
    "display_name": "tunedModelDisplayName",
    "description": "description",
}


def parse_filter(text: str) -> _Predicate:
    """A predicate on rendered jobs from a list filter; an unsupported or malformed filter is ``INVALID_ARGUMENT``."""
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _FILTER_TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise _invalid(f'Invalid filter "{text}": unexpected text at position {position}.')
        position = match.end()
        kind = match.lastgroup or "word"
        value = match[kind]
        tokens.append((kind, value.replace('\\"', '"') if kind == "quoted" else value))
    return _FilterParser(tokens, text).parse()


class _FilterParser:
    """A recursive descent parser of AIP-160's grammar.

    ``expr := seq {AND seq}``, ``seq := factor {factor}``, ``factor := term {OR term}``,
    ``term := [NOT|-] (restriction | "(" expr ")")``.
    """

    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.tokens = tokens
        self.index = 0
        self.text = text

    def parse(self) -> _Predicate:
        if not self.tokens:
            return lambda job: True
        predicate = self.expression()
        if self.index != len(self.tokens):
            raise self.error(f"unexpected {self.tokens[self.index][1]!r}")
        return predicate

    def error(self, why: str) -> GoogleError:
        return _invalid(f'Invalid filter "{self.text}": {why}.')

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token == ("word", word):
            self.index += 1
            return True
        return False

    def expression(self) -> _Predicate:
        parts = [self.sequence()]
        while self.keyword("AND"):
            parts.append(self.sequence())
        return lambda job: all(part(job) for part in parts)

    def sequence(self) -> _Predicate:
        parts = [self.factor()]
        while (token := self.peek()) is not None and token not in (("paren", ")"), ("word", "AND")):
            parts.append(self.factor())
        return lambda job: all(part(job) for part in parts)

    def factor(self) -> _Predicate:
        parts = [self.term()]
        while self.keyword("OR"):
            parts.append(self.term())
        return lambda job: any(part(job) for part in parts)

    def term(self) -> _Predicate:
        negate = self.keyword("NOT")
        token = self.peek()
        if token is None:
            raise self.error("it ends too early")
        if token == ("paren", "("):
            self.index += 1
            inner = self.expression()
            if self.peek() != ("paren", ")"):
                raise self.error("a parenthesis is not closed")
            self.index += 1
            return (lambda job: not inner(job)) if negate else inner
        if token[0] != "word":
            raise self.error(f"unexpected {token[1]!r}")
        name = token[1]
        if name.startswith("-") and len(name) > 1:
            negate, name = not negate, name[1:]
        self.index += 1
        operator = self.peek()
        if operator is None or operator[0] != "op":
            raise self.error(f"{name!r} needs a comparison (free text search is not supported)")
        self.index += 1
        value = self.peek()
        if value is None or value[0] not in ("word", "quoted"):
            raise self.error(f"{name}{operator[1]} needs a value")
        self.index += 1
        test = self.restriction(name, operator[1], value[1])
        return (lambda job: not test(job)) if negate else test

    def restriction(self, name: str, operator: str, value: str) -> _Predicate:
        if name == "labels" and operator == ":":
            return lambda job: value in (job.get("labels") or {})
        if name.startswith("labels."):
            key = name[len("labels.") :]
            if operator == ":":
                return lambda job: key in (job.get("labels") or {}) and _has(str((job.get("labels") or {})[key]), value)
            return self.compare(lambda job: (job.get("labels") or {}).get(key), operator, value, name)
        if name in _TEXT_FIELDS:
            field_name = _TEXT_FIELDS[name]
            if operator == ":":
                return lambda job: field_name in job and _has(str(job[field_name]), value)
            return self.compare(lambda job: job.get(field_name), operator, value, name)
        if name in _TIME_FIELDS:
            field_name = _TIME_FIELDS[name]
            try:
                moment = _parse_time(value)
            except ValueError:
                raise self.error(f"{name} must be compared with an RFC 3339 time, not {value!r}") from None
            return self.compare(
                lambda job: _parse_time(job[field_name]) if field_name in job else None, operator, moment, name
            )
        raise self.error(f"unsupported field {name!r}")

    def compare(self, read: Callable[[Mapping[str, Any]], Any], operator: str, value: Any, name: str) -> _Predicate:
        if operator == ":":
            raise self.error(f"{name} does not take ':'")
        tests: dict[str, Callable[[Any, Any], bool]] = {
            "=": lambda have, want: have == want,
            "!=": lambda have, want: have != want,
            "<": lambda have, want: have < want,
            "<=": lambda have, want: have <= want,
            ">": lambda have, want: have > want,
            ">=": lambda have, want: have >= want,
        }
        test = tests[operator]

        def predicate(job: Mapping[str, Any]) -> bool:
            have = read(job)
            if have is None:
                return operator == "!="
            try:
                return test(have, value)
            except TypeError:
                return False

        return predicate


def _has(have: str, pattern: str) -> bool:
    """AIP-160's ``:`` on a string: ``*`` matches any, otherwise the value must match, ``*`` as a wildcard."""
    if pattern == "*":
        return True
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, have) is not None


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------------------
# The dialect's state: jobs, their endpoints, their answers
# ---------------------------------------------------------------------------------------------------------


def _number(*parts: object) -> str:
    """A 19-digit decimal resource id, as Vertex's."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return str(10**18 + int.from_bytes(digest, "big") % (9 * 10**18))


class VertexDialect:
    """The Vertex dialect's jobs (over the simulated trainer), the endpoints of their models, and their answers.

    :param emulator: the emulator it is part of (config, store, counters, quotas).
    """

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator
        self._config = emulator.config
        self._clock = emulator.config.clock
        self._store = emulator.store
        self._jobs: dict[str, SimJob] = {}
        self._by_number: dict[tuple[str, str, str], str] = {}
        self._endpoints: dict[tuple[str, str, str], tuple[str, int]] = {}
        self._pairs: dict[str, dict[str, str]] = {}
        for record in self._store.records(JOB_KIND).values():
            self._index(SimJob(record))

    def _index(self, job: SimJob) -> None:
        record = job.record
        self._jobs[job.id] = job
        self._by_number[(record["project"], record["location"], record["number"])] = job.id
        plan = record["plan"]
        if plan is None:
            return
        last = plan["steps"]
        self._endpoints[(record["project"], record["location"], record["endpoint_number"])] = (job.id, last)
        for step in plan["checkpoint_steps"]:
            if step != last:
                self._endpoints[(record["project"], record["location"], _checkpoint_endpoint(record, step))] = (
                    job.id,
                    step,
                )

    # -- create ------------------------------------------------------------------------------------------

    async def create(self, project: str, location: str, raw: Any, version: str) -> dict[str, Any]:
        """Create a tuning job (its data read from Cloud Storage now); return it as the API shows it."""
        request = check_create(raw)
        self._check_quota(project, location)
        found: DatasetCheck | None = None
        failure: str | None = None
        data = b""
        try:
            data = await read_gcs(self._config.gcs_endpoint, request.training_uri)
            found = check_dataset(data, method=request.method, name=request.training_uri)
            if request.validation_uri is not None:
                checked = await read_gcs(self._config.gcs_endpoint, request.validation_uri)
                check_dataset(checked, method=request.method, name=request.validation_uri, most=MAX_VALIDATION_EXAMPLES)
        except DataError as exc:
            failure, found = f"Dataset processing failed: {exc}.", None
        self._check_quota(project, location)
        return self.render(self._make(project, location, request, found, failure, data), version)

    def _check_quota(self, project: str, location: str) -> None:
        """Refuse a create beyond ``faults.max_active_jobs`` jobs pending, running or cancelling in the region."""
        quota = self._emulator.jobs.faults.max_active_jobs
        if not quota:
            return
        now = self._clock()
        active = sum(
            1
            for job in self._jobs.values()
            if (job.record["project"], job.record["location"]) == (project, location)
            and self._state(job, now)[0] in _ACTIVE_STATES
        )
        if active >= quota:
            raise GoogleError(
                429,
                "RESOURCE_EXHAUSTED",
                f"Quota exceeded for aiplatform.googleapis.com/concurrent_tuning_jobs: {active} tuning jobs are "
                f"pending, running or cancelling in {location}, the most the quota allows. Retry when one has ended.",
            )

    def _make(
        self,
        project: str,
        location: str,
        request: CreateRequest,
        found: DatasetCheck | None,
        failure: str | None,
        data: bytes,
    ) -> SimJob:
        now = self._clock()
        job_id = self._store.new_id("vertex-job-")
        labels = dict(request.body.get("labels") or {})
        given = request.hyperparameters
        hyperparameters: dict[str, Any] = {
            "learningRateMultiplier": given.get("learningRateMultiplier", 1.0),
            "adapterSize": given.get("adapterSize") or request.base.default_adapter_size,
        }
        if hyperparameters["adapterSize"] == "ADAPTER_SIZE_UNSPECIFIED":
            hyperparameters["adapterSize"] = request.base.default_adapter_size
        if request.method == "preference":
            hyperparameters["beta"] = given.get("beta", 0.1)
        if "epochCount" in given:
            hyperparameters["epochCount"] = given["epochCount"]
        plan = stats = None
        if found is not None:
            epochs = int(given.get("epochCount") or auto_n_epochs(found.examples))
            hyperparameters["epochCount"] = epochs
            plan = plan_training(
                {"batch_size": auto_batch_size(found.examples), "n_epochs": epochs},
                found.examples,
                found.tokens,
                force_failure=FORCE_FAILURE_KEY in labels,
            )
            per_epoch = plan["steps_per_epoch"]
            ends = [epoch * per_epoch for epoch in range(1, epochs + 1)]
            if plan["fail_step"] is not None:
                ends = [step for step in ends if step < plan["fail_step"]]
            plan["checkpoint_steps"] = ends
            stats = _data_stats(found, request.method, plan["steps"])
        record: Record = {
            "id": job_id,
            "number": _number(self._store.seed, "tuning-job", job_id),
            "model_number": _number(self._store.seed, "model", job_id),
            "endpoint_number": _number(self._store.seed, "endpoint", job_id),
            "project": project,
            "location": location,
            "request": request.body,
            "spec": request.spec,
            "method": request.method,
            "base": request.base.name,
            "hyperparameters": hyperparameters,
            "stats": stats,
            "t0": now,
            "created_at": now,
            "seed": self._store.random_int(f"seed:{job_id}", 2**31),
            "metadata": {FORCE_FAILURE_KEY: labels[FORCE_FAILURE_KEY]} if FORCE_FAILURE_KEY in labels else None,
            "training_file": request.training_uri,
            "validation_file": request.validation_uri,
            "plan": plan,
            "file_error": {"code": "invalid_training_data", "message": failure, "param": None} if failure else None,
            "durations": durations(self._config.timings, self._config.speed, plan["steps"] if plan else 0),
            "cancelling": CANCELLING_SECONDS / self._config.speed,
            "holds": [],
            "cancelled_at": None,
            "events": [],
        }
        self._store.save(JOB_KIND, record)
        if plan is not None:
            self._store.put_blob(_data_blob(job_id), data)
        job = SimJob(record)
        self._index(job)
        self._emulator.counters.jobs_created += 1
        return job

    # -- read --------------------------------------------------------------------------------------------

    def find(self, project: str, location: str, number: str) -> SimJob:
        """The job of a resource name's parts; ``NOT_FOUND`` otherwise."""
        job_id = self._by_number.get((project, location, number))
        if job_id is None:
            name = f"projects/{project}/locations/{location}/tuningJobs/{number}"
            raise _not_found(f"The TuningJob {name} does not exist.")
        return self._jobs[job_id]

    def list_jobs(self, project: str, location: str, query: Mapping[str, str], version: str) -> dict[str, Any]:
        """One page of the location's jobs, newest first, that pass the filter."""
        text = query.get("filter") or ""
        predicate = parse_filter(text)
        size_text = query.get("pageSize") or ""
        if size_text and not re.fullmatch(r"-?\d+", size_text.strip()):
            raise _invalid(f"Invalid value at 'page_size' (TYPE_INT32), \"{size_text}\"")
        size = int(size_text or 0)
        if size < 0:
            raise _invalid("page_size must not be negative.")
        size = min(size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
        fingerprint = token(project, location, text, length=12)
        before = math.inf
        if query.get("pageToken"):
            try:
                decoded = json.loads(base64.urlsafe_b64decode(query["pageToken"].encode()))
                before = float(decoded["before"])
                if decoded["query"] != fingerprint:
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                raise _invalid("Invalid page token: it belongs to another list request or is malformed.") from None
        now = self._clock()
        page: list[dict[str, Any]] = []
        last: int | None = None
        more = False
        order = list(self._store.records(JOB_KIND))
        for position in range(len(order) - 1, -1, -1):
            if position >= before:
                continue
            job = self._jobs[order[position]]
            if (job.record["project"], job.record["location"]) != (project, location):
                continue
            rendered = self.render(job, version, now)
            if not predicate(rendered):
                continue
            if len(page) == size:
                more = True
                break
            page.append(rendered)
            last = position
        answer: dict[str, Any] = {"tuningJobs": page}
        if more and last is not None:
            answer["nextPageToken"] = base64.urlsafe_b64encode(
                json.dumps({"before": last, "query": fingerprint}).encode()
            ).decode()
        return answer

    # -- cancel ------------------------------------------------------------------------------------------

    def cancel(self, job: SimJob) -> None:
        """Cancel a job that has not ended (again while it is cancelling does nothing); else ``FAILED_PRECONDITION``."""
        now = self._clock()
        state = self._state(job, now)[0]
        if state == "JOB_STATE_CANCELLING":
            return
        if state not in _ACTIVE_STATES:
            raise GoogleError(
                400,
                "FAILED_PRECONDITION",
                f"The TuningJob {_job_name(job.record)} is in state {state} and cannot be cancelled.",
            )
        job.cancel(now)
        self._store.save(JOB_KIND, job.record)

    # -- state -------------------------------------------------------------------------------------------

    def _state(self, job: SimJob, now: float) -> tuple[str, str | None]:
        """The job's ``JobState`` and, while it is pending or running, its detail ``TuningJobState``."""
        status = job.snapshot(now).status
        if status == "cancelled":
            cancelled_at = float(job.record["cancelled_at"])
            if now < cancelled_at + float(job.record["cancelling"]):
                return "JOB_STATE_CANCELLING", None
            return "JOB_STATE_CANCELLED", None
        return _STATES[status]

    def render(self, job: SimJob, version: str, now: float | None = None) -> dict[str, Any]:
        """A job as the API shows it at ``now``."""
        now = self._clock() if now is None else now
        record = job.record
        request = record["request"]
        snapshot = job.snapshot(now)
        state, detail = self._state(job, now)
        spans = record["durations"]
        created = float(record["t0"])
        validated = job.time_at(spans["validating"])
        started = job.time_at(spans["validating"] + spans["queued"])
        cancelled_at = record.get("cancelled_at")
        horizon = now if cancelled_at is None else min(now, float(cancelled_at))
        plan = record["plan"]
        spec = dict(request[record["spec"]])
        hyperparameters = {**(spec.get("hyperParameters") or {}), **record["hyperparameters"]}
        if "epochCount" in hyperparameters:
            hyperparameters["epochCount"] = str(hyperparameters["epochCount"])
        spec["hyperParameters"] = hyperparameters
        out: dict[str, Any] = {
            "name": _job_name(record),
            "baseModel": request["baseModel"],
            "state": state,
            "createTime": _rfc3339(created),
            "updateTime": _rfc3339(created),
            record["spec"]: spec,
            "experiment": f"projects/{record['project']}/locations/{record['location']}/metadataStores/default/"
            f"contexts/tuning-experiment-{record['number']}",
        }
        for key in ("tunedModelDisplayName", "description", "labels", "encryptionSpec", "evaluationConfig"):
            if request.get(key) is not None:
                out[key] = request[key]
        updated = created
        if plan is not None and horizon + 1e-6 >= validated:
            updated = validated
            out["tuningDataStats"] = record["stats"]
        if plan is not None and horizon + 1e-6 >= started:
            updated = started
            out["startTime"] = _rfc3339(started)
        if state in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"):
            updated = float(snapshot.finished_at or now)
            out["endTime"] = _rfc3339(updated)
        if state == "JOB_STATE_FAILED":
            error = snapshot.error or {}
            forced = plan is not None and plan["fail_step"] is not None
            message = str(error.get("message") or "The tuning job failed.")
            if forced:
                message = (
                    f"Tuning failed at step {plan['fail_step']} of {plan['steps']}: failure forced by the label "
                    f"{FORCE_FAILURE_KEY}={record['metadata'][FORCE_FAILURE_KEY]}."
                )
            out["error"] = {"code": _CODE_INTERNAL if forced else _CODE_INVALID_ARGUMENT, "message": message}
        if state == "JOB_STATE_CANCELLING":
            updated = float(record["cancelled_at"])
        if state == "JOB_STATE_CANCELLED":
            updated = float(record["cancelled_at"]) + float(record["cancelling"])
            out["endTime"] = _rfc3339(updated)
            out["error"] = {"code": _CODE_CANCELLED, "message": "CANCELED"}
        out["updateTime"] = _rfc3339(max(updated, created))
        tuned = self._tuned_model(job, now, succeeded=state == "JOB_STATE_SUCCEEDED")
        if tuned:
            out["tunedModel"] = tuned
        if version == "v1beta1":
            if detail is not None:
                out["tuningJobState"] = detail
            if plan is not None and horizon + 1e-6 >= started:
                per_epoch = max(1, plan["steps_per_epoch"])
                out["tuningJobMetadata"] = {
                    "completedEpochCount": str(snapshot.steps_done // per_epoch),
                    "completedStepCount": str(snapshot.steps_done),
                }
        return out

    def _tuned_model(self, job: SimJob, now: float, *, succeeded: bool) -> dict[str, Any]:
        record = job.record
        plan = record["plan"]
        where = f"projects/{record['project']}/locations/{record['location']}"
        tuned: dict[str, Any] = {}
        if succeeded:
            tuned["model"] = f"{where}/models/{record['model_number']}@1"
            tuned["endpoint"] = f"{where}/endpoints/{record['endpoint_number']}"
        if plan is not None and not record["request"][record["spec"]].get("exportLastCheckpointOnly"):
            per_epoch = max(1, plan["steps_per_epoch"])
            checkpoints = [
                {
                    "checkpointId": str(index),
                    "epoch": str(step // per_epoch),
                    "step": str(step),
                    "endpoint": f"{where}/endpoints/{_checkpoint_endpoint(record, step)}",
                }
                for index, step in enumerate(job.checkpoint_steps(now), start=1)
            ]
            if checkpoints:
                tuned["checkpoints"] = checkpoints
        return tuned

    # -- inference ---------------------------------------------------------------------------------------

    def generate(self, project: str, location: str, resource: str, kind: str, body: Any) -> dict[str, Any]:
        """``generateContent``: a tuned model's endpoint (``kind`` ``endpoints``) or a base model answers."""
        if not isinstance(body, dict):
            raise _invalid("The request body must be a JSON object.")
        name = f"projects/{project}/locations/{location}/{kind}/{resource}"
        examples: Mapping[str, str] = {}
        model_version = resource
        if kind == "endpoints":
            found = self._endpoints.get((project, location, resource))
            job = self._jobs[found[0]] if found is not None else None
            if job is None or found is None or not self._serves(job, found[1]):
                raise _not_found(f"Endpoint `{name}` not found.")
            examples = self._examples(job)
            model_version = str(job.record["base"])
        elif resource not in BASE_MODELS:
            raise _not_found(f"Publisher Model `{name}` was not found or your project does not have access to it.")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _invalid("Unable to submit request because at least one contents field is required.")
        chat = []
        for index, content in enumerate(contents):
            try:
                text = _content_text(content, f"contents[{index}]", roles=("user", "model", None))
            except DataError as exc:
                raise _invalid(f"Invalid contents: {exc}.") from None
            chat.append({"role": "assistant" if content.get("role") == "model" else "user", "content": text})
        system = body.get("systemInstruction") or body.get("system_instruction")
        prompt_text = "".join(str(item["content"]) for item in chat)
        if isinstance(system, dict):
            prompt_text += "".join(str(part.get("text") or "") for part in system.get("parts") or [])
        answer = answer_from(examples, chat, seed=self._store.seed, model=name)
        config = body.get("generationConfig") or body.get("generation_config") or {}
        limit = (config.get("maxOutputTokens") or config.get("max_output_tokens")) if isinstance(config, dict) else None
        finish = "STOP"
        if isinstance(limit, int) and limit > 0 and estimate_text_tokens(answer) > limit:
            answer, finish = answer[: limit * 4], "MAX_TOKENS"
        prompt_tokens = estimate_text_tokens(prompt_text) + 4 * len(chat)
        answer_tokens = estimate_text_tokens(answer)
        now = self._clock()
        return {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": answer}]},
                    "finishReason": finish,
                    "avgLogprobs": -0.05,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": answer_tokens,
                "totalTokenCount": prompt_tokens + answer_tokens,
                "trafficType": "ON_DEMAND",
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
                "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": answer_tokens}],
            },
            "modelVersion": model_version,
            "createTime": _rfc3339(now),
            "responseId": token(self._store.seed, name, now, json.dumps(contents, sort_keys=True), length=22),
        }

    def _serves(self, job: SimJob, step: int) -> bool:
        """Whether an endpoint of a job answers now: the tuned model's once it succeeded, a checkpoint's once made."""
        now = self._clock()
        if step == job.record["plan"]["steps"] and job.snapshot(now).status == "succeeded":
            return True
        return step in job.checkpoint_steps(now) and not job.record["request"][job.record["spec"]].get(
            "exportLastCheckpointOnly"
        )

    def _examples(self, job: SimJob) -> dict[str, str]:
        if job.id not in self._pairs:
            self._pairs[job.id] = example_pairs(self._store.get_blob(_data_blob(job.id)) or b"")
        return self._pairs[job.id]


_STATES: dict[str, tuple[str, str | None]] = {
    "validating_files": ("JOB_STATE_PENDING", "TUNING_JOB_STATE_PROCESSING_DATASET"),
    "queued": ("JOB_STATE_PENDING", "TUNING_JOB_STATE_WAITING_FOR_CAPACITY"),
    "running": ("JOB_STATE_RUNNING", "TUNING_JOB_STATE_TUNING"),
    "paused": ("JOB_STATE_PAUSED", None),
    "succeeded": ("JOB_STATE_SUCCEEDED", None),
    "failed": ("JOB_STATE_FAILED", None),
}
#: The states that count against the quota of tuning jobs and may be cancelled.
_ACTIVE_STATES = ("JOB_STATE_PENDING", "JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING")


def _job_name(record: Mapping[str, Any]) -> str:
    return f"projects/{record['project']}/locations/{record['location']}/tuningJobs/{record['number']}"


def _checkpoint_endpoint(record: Mapping[str, Any], step: int) -> str:
    """The endpoint number of a checkpoint: the tuned model's for the last step, its own for the others."""
    if record["plan"] is not None and step == record["plan"]["steps"]:
        return str(record["endpoint_number"])
    return _number(record["id"], "checkpoint-endpoint", step)


def _data_blob(job_id: str) -> str:
    return f"vertex-training-data/{job_id}"


# ---------------------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------------------

_PARENT = "/projects/{project}/locations/{location}"


def _route_of(method: str, rest: list[str]) -> tuple[str, dict[str, str]] | None:
    """The operation a request's path (after the parent) names, and its parameters."""
    if rest == ["tuningJobs"] and method in ("GET", "POST"):
        return ("list" if method == "GET" else "create"), {}
    if len(rest) == 2 and rest[0] == "tuningJobs":
        number, _, verb = rest[1].partition(":")
        if method == "GET" and not verb:
            return "get", {"number": number}
        if method == "POST" and verb == "cancel":
            return "cancel", {"number": number}
    if method == "POST" and len(rest) == 2 and rest[0] == "endpoints" and rest[1].endswith(":generateContent"):
        return "generate", {"kind": "endpoints", "resource": rest[1].removesuffix(":generateContent")}
    if (
        method == "POST"
        and len(rest) == 4
        and rest[:3] == ["publishers", "google", "models"]
        and rest[3].endswith(":generateContent")
    ):
        return "generate", {"kind": "publishers/google/models", "resource": rest[3].removesuffix(":generateContent")}
    return None


_TEMPLATES = {
    "create": "/tuningJobs",
    "list": "/tuningJobs",
    "get": "/tuningJobs/{id}",
    "cancel": "/tuningJobs/{id}:cancel",
    "generate": "/{model}:generateContent",
}


def _authenticate(emulator: Emulator, headers: Mapping[str, str]) -> None:
    """Check ``Authorization: Bearer <token>`` against the emulator's keys; ``UNAUTHENTICATED`` otherwise."""
    scheme, _, value = (headers.get("authorization") or "").strip().partition(" ")
    presented = value.strip() if scheme.lower() == "bearer" else ""
    if not presented:
        raise GoogleError(
            401,
            "UNAUTHENTICATED",
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie "
            "or other valid authentication credential.",
        )
    keys = [key for key in (emulator.config.api_key, emulator.config.admin_key) if key is not None]
    if emulator.config.api_key is None:
        return
    if not any(hmac.compare_digest(presented.encode(), key.encode()) for key in keys):
        # The token is never echoed, not even in part.
        raise GoogleError(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
            "valid authentication credential.",
        )


def vertex_routes(emulator: Emulator, kit: Any) -> list[Route]:
    """The dialect's one route, ``/vertex/{path}``, which dispatches to the operations above.

    :param emulator: the emulator's state.
    :param kit: the app's :class:`~airflow_provider_finetune.emulator.app.DialectKit` (its ``json`` renders answers).
    """
    dialect = VertexDialect(emulator)
    counters = emulator.counters
    render: Callable[..., Response] = kit.json

    async def endpoint(request: Request) -> Response:
        segments = request.path_params["rest"].split("/")
        version, parent, rest = (segments[0], segments[1:5], segments[5:]) if len(segments) > 5 else ("", [], [])
        found = None
        if version in VERSIONS and parent[0::2] == ["projects", "locations"] and all(parent[1::2]):
            found = _route_of(request.method, rest)
        template = _TEMPLATES[found[0]] if found else "/{unknown}"
        counters.requests[f"{request.method} {PREFIX}/{{version}}{_PARENT}{template}"] += 1
        try:
            _authenticate(emulator, request.headers)
            if found is None:
                raise _not_found(f"The requested URL {request.url.path} ({request.method}) was not found.")
            operation, params = found
            project, location = parent[1], parent[3]
            body = await _json_body(request)
            if operation == "create":
                return render(await dialect.create(project, location, body, version))
            if operation == "list":
                return render(dialect.list_jobs(project, location, request.query_params, version))
            if operation == "generate":
                return render(dialect.generate(project, location, params["resource"], params["kind"], body))
            job = dialect.find(project, location, params["number"])
            if operation == "cancel":
                dialect.cancel(job)
                return render({})
            return render(dialect.render(job, version))
        except GoogleError as exc:
            return render(exc.body(), exc.status)
        except Exception:
            logger.exception("Error while handling a Vertex request")
            return render(google_error_body(500, "INTERNAL", "Internal error encountered."), 500)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return [Route(PREFIX + "/{rest:path}", endpoint, methods=methods)]


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        message = "Invalid JSON payload received. Unexpected token."
        raise _invalid(message, violations=[("", message)]) from None
