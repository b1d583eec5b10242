"""Pydantic models of jobs, files, uploads, graders and requests, in the canonical (OpenAI-shaped) API; no I/O.

Two families live here, with opposite attitudes:

* **Response models** (:class:`APIObject` and its subclasses) are tolerant of the future, like openai-python's
  ``_models.py``: unknown fields are kept (``model_extra``), fields the service may omit have defaults, an
  unknown job status or grader type still parses. A new field or status from the service must not break a
  running pipeline.
* **Request models** (:class:`RequestModel` and its subclasses) are strict: unknown fields are refused, every
  constraint of the published spec is checked, so that bad input is refused before anything billable is
  sent. Build them with :func:`build_request`, which turns pydantic's errors into one
  :class:`~airflow_provider_finetune.exceptions.InvalidRequestError` naming the field as a dotted path.

No Airflow import and no I/O here: the hook, the operators, the triggers and the emulator all share these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeAlias, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from airflow_provider_finetune.core.statuses import TERMINAL_STATUSES, FineTuningJobStatus
from airflow_provider_finetune.exceptions import InvalidRequestError

__all__ = [
    "GRADER_REQUIRED",
    "MAX_UPLOAD_BYTES",
    "TERMINAL_STATUSES",
    "APIObject",
    "CheckpointMetrics",
    "CheckpointPermission",
    "CompleteUploadRequest",
    "CreateCheckpointPermissionRequest",
    "CreateFileRequest",
    "CreateFineTuningJobRequest",
    "CreateUploadRequest",
    "DeletedCheckpointPermission",
    "DeletedFile",
    "DpoHyperparametersRequest",
    "DpoMethod",
    "DpoMethodRequest",
    "FileExpiration",
    "FileObject",
    "FineTuneMethod",
    "FineTuningIntegration",
    "FineTuningJob",
    "FineTuningJobCheckpoint",
    "FineTuningJobEvent",
    "FineTuningJobStatus",
    "Grader",
    "GraderRunErrors",
    "GraderRunMetadata",
    "GraderRunResult",
    "GraderValidation",
    "Hyperparameters",
    "IntegrationRequest",
    "JobError",
    "JobState",
    "LabelModelGrader",
    "MethodRequest",
    "MultiGrader",
    "Page",
    "PythonGrader",
    "ReinforcementHyperparametersRequest",
    "ReinforcementMethod",
    "ReinforcementMethodRequest",
    "RequestModel",
    "ResponseGrader",
    "RunGraderRequest",
    "ScoreModelGrader",
    "StringCheckGrader",
    "SubGrader",
    "SupervisedHyperparametersRequest",
    "SupervisedMethod",
    "SupervisedMethodRequest",
    "TextSimilarityGrader",
    "Upload",
    "UploadPart",
    "ValidateGraderRequest",
    "WandbIntegration",
    "WandbIntegrationRequest",
    "build_request",
]

#: Largest file the ``/uploads`` API accepts, in bytes (8 GB, read as GiB: the lenient reading).
MAX_UPLOAD_BYTES = 8 * 1024**3


_MAX_REPR = 80


def _short_repr(value: Any) -> str:
    # Error messages quote what was given, but never a whole training set pasted into a field.
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _none_as_empty_list(value: Any) -> Any:
    # The service (and its examples) sometimes sends null where a list is documented.
    return [] if value is None else value


def _none_as_empty_dict(value: Any) -> Any:
    return {} if value is None else value


_T = TypeVar("_T")
if TYPE_CHECKING:
    _ListOrNull: TypeAlias = list[_T]
    _DictOrNull: TypeAlias = dict[str, Any]
else:
    # null is made empty once the value is parsed: a validator before parsing would make pydantic build the
    # raw JSON as Python objects first (for a page of jobs, every field of every job, most of them ignored).
    _ListOrNull = Annotated[list[_T] | None, AfterValidator(_none_as_empty_list)]
    _DictOrNull = Annotated[dict[str, Any] | None, AfterValidator(_none_as_empty_dict)]


class _FieldValueError(ValueError):
    """A validator's error that knows which (sub-)field it is about.

    Pydantic places an error raised by a model validator at the model itself; :func:`build_request` appends
    :attr:`loc` so that the message names the field the user has to fix.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.loc: tuple[str, ...] = tuple(part for part in field.split(".") if part)


# ---------------------------------------------------------------------------------------------------------
# Response side: tolerant of the future.
# ---------------------------------------------------------------------------------------------------------


class APIObject(BaseModel):
    """Base of every object the service returns: unknown fields are kept, not refused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())


class JobError(APIObject):
    """Why a fine-tuning job failed.

    :param code: machine-readable error code.
    :param message: human-readable message.
    :param param: the request parameter at fault (usually ``training_file`` or ``validation_file``).
    """

    code: str | None = None
    message: str | None = None
    param: str | None = None

    def describe(self) -> str:
        """The error as people read it: ``[code] message (param: training_file)``."""
        text = f"[{self.code}] {self.message}"
        return text + (f" (param: {self.param})" if self.param else "")


def _real_error(value: JobError | None) -> JobError | None:
    """``None`` for the empty error (``{}`` or all fields null) that a job which has not failed carries."""
    if value is not None and not value.code and not value.message:
        return None
    return value


#: A job's ``error``: ``None`` unless the job failed (see :func:`_real_error`).
_JobErrorOrNone: TypeAlias = Annotated[JobError | None, AfterValidator(_real_error)]


class Hyperparameters(APIObject):
    """Hyperparameters of a job as the service reports them (any method; no range checks on this side).

    Each value is ``"auto"``, a number, or absent.
    """

    batch_size: Literal["auto"] | int | None = None
    learning_rate_multiplier: Literal["auto"] | float | None = None
    n_epochs: Literal["auto"] | int | None = None
    beta: Literal["auto"] | float | None = None
    reasoning_effort: str | None = None
    compute_multiplier: Literal["auto"] | float | None = None
    eval_interval: Literal["auto"] | int | None = None
    eval_samples: Literal["auto"] | int | None = None


class SupervisedMethod(APIObject):
    """The ``supervised`` block of a job's method."""

    hyperparameters: Hyperparameters | None = None


class DpoMethod(APIObject):
    """The ``dpo`` block of a job's method."""

    hyperparameters: Hyperparameters | None = None


# ---------------------------------------------------------------------------------------------------------
# Graders: used in requests (strict) and read back in responses (through ResponseGrader, tolerant).
# ---------------------------------------------------------------------------------------------------------


class RequestModel(BaseModel):
    """Base of every request body: unknown fields are refused, constraints are checked before sending."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    #: What :func:`build_request` calls this kind of request in its error messages.
    request_label: ClassVar[str] = "fine-tuning request"

    def to_body(self) -> dict[str, Any]:
        """Return the JSON-ready body to send: JSON types only, no ``None`` values."""
        return self.model_dump(mode="json", exclude_none=True)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError(f"must not be empty or blank (got {value!r})")
    return value


def _id_like(value: str) -> str:
    if not value or any(char.isspace() for char in value):
        raise ValueError(f"must be a non-empty id without spaces (got {_short_repr(value)})")
    return value


_NonBlankStr: TypeAlias = Annotated[StrictStr, AfterValidator(_not_blank)]
_IdStr: TypeAlias = Annotated[StrictStr, AfterValidator(_id_like)]


class StringCheckGrader(RequestModel):
    """Compares ``input`` with ``reference`` by a string operation.

    :param name: name of the grader.
    :param input: the text to check; may hold template strings such as ``{{sample.output_text}}``.
    :param reference: the text to compare with; may hold template strings.
    :param operation: ``eq``, ``ne``, ``like`` or ``ilike``.
    """

    type: Literal["string_check"] = "string_check"
    name: StrictStr
    input: StrictStr
    reference: StrictStr
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(RequestModel):
    """Grades ``input`` by its similarity to ``reference``.

    :param name: name of the grader.
    :param input: the text being graded.
    :param reference: the text graded against.
    :param evaluation_metric: one of the spec's eleven metrics (``fuzzy_match``, ``bleu``, ``rouge_l``...).
    """

    type: Literal["text_similarity"] = "text_similarity"
    name: StrictStr
    input: StrictStr
    reference: StrictStr
    evaluation_metric: Literal[
        "cosine",
        "fuzzy_match",
        "bleu",
        "gleu",
        "meteor",
        "rouge_1",
        "rouge_2",
        "rouge_3",
        "rouge_4",
        "rouge_5",
        "rouge_l",
    ]


class PythonGrader(RequestModel):
    """Runs a Python ``grade(sample, item) -> float`` function.

    :param name: name of the grader.
    :param source: the Python source.
    :param image_tag: image tag to run the source in.
    """

    type: Literal["python"] = "python"
    name: StrictStr
    source: _NonBlankStr
    image_tag: StrictStr | None = None


class ScoreModelGrader(RequestModel):
    """Asks a model for a score.

    :param name: name of the grader.
    :param model: the model that scores.
    :param input: the messages sent to the scoring model (``EvalItem`` objects), with template strings.
    :param range: the range of the score, ``[low, high]`` (the service defaults to ``[0, 1]``).
    :param sampling_params: sampling parameters of the scoring model (seed, top_p, temperature...).
    """

    type: Literal["score_model"] = "score_model"
    name: StrictStr
    model: _NonBlankStr
    input: Annotated[list[dict[str, Any]], Field(min_length=1)]
    range: list[float] | None = None
    sampling_params: dict[str, Any] | None = None

    @field_validator("range")
    @classmethod
    def _range_is_interval(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 2 or not value[0] < value[1]):
            raise ValueError(f"range must be two numbers [low, high] with low < high, got {value!r}")
        return value


class LabelModelGrader(RequestModel):
    """Asks a model for a label; the item passes when the label is one of ``passing_labels``.

    The spec allows this grader only inside a :class:`MultiGrader`.

    :param name: name of the grader.
    :param model: the labelling model (must support structured outputs).
    :param input: the messages sent to the model.
    :param labels: the labels the model may assign.
    :param passing_labels: the labels that count as a pass: a non-empty subset of ``labels``.
    """

    type: Literal["label_model"] = "label_model"
    name: StrictStr
    model: _NonBlankStr
    input: Annotated[list[dict[str, Any]], Field(min_length=1)]
    labels: Annotated[list[StrictStr], Field(min_length=1)]
    passing_labels: Annotated[list[StrictStr], Field(min_length=1)]

    @model_validator(mode="after")
    def _passing_labels_are_labels(self) -> LabelModelGrader:
        unknown = [label for label in self.passing_labels if label not in self.labels]
        if unknown:
            raise _FieldValueError("passing_labels", f"passing_labels {unknown!r} are not among labels {self.labels!r}")
        return self


#: A grader that may sit inside a multi grader (the spec's ``GraderMulti.graders`` oneOf).
SubGrader: TypeAlias = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader,
    Field(discriminator="type"),
]


def _graders_shape(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "grader-list"
    if isinstance(value, BaseModel) or (isinstance(value, Mapping) and isinstance(value.get("type"), str)):
        return "single-grader"
    return "named-graders"


class MultiGrader(RequestModel):
    """Combines the scores of several graders with a formula.

    :param name: name of the grader.
    :param graders: the graders: a mapping of name to grader (what ``calculate_output`` refers to), or a
        single grader as the spec's schema says, or a list as the spec's example shows.
    :param calculate_output: the formula combining the graders' scores.
    """

    type: Literal["multi"] = "multi"
    name: StrictStr
    graders: Annotated[
        Annotated[SubGrader, Tag("single-grader")]
        | Annotated[dict[str, SubGrader], Tag("named-graders")]
        | Annotated[list[SubGrader], Tag("grader-list")],
        Discriminator(_graders_shape),
    ]
    calculate_output: _NonBlankStr

    @field_validator("graders")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, dict | list) and not value:
            raise ValueError("a multi grader needs at least one grader")
        return value


#: A grader as a request takes it (the spec's top-level oneOf: string_check, text_similarity, python,
#: score_model, multi), chosen by its ``type``.
Grader: TypeAlias = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | MultiGrader,
    Field(discriminator="type"),
]

#: A grader as the service returns it: a known grader when it validates as one, else the raw mapping (a new
#: grader type or field must not break reading a job back).
ResponseGrader: TypeAlias = Annotated[Grader | LabelModelGrader | dict[str, Any], Field(union_mode="left_to_right")]


class ReinforcementMethod(APIObject):
    """The ``reinforcement`` block of a job's method: grader and hyperparameters."""

    grader: ResponseGrader | None = None
    hyperparameters: Hyperparameters | None = None
    response_format: dict[str, Any] | None = None


class FineTuneMethod(APIObject):
    """The method of a job as the service reports it.

    :param type: ``supervised``, ``dpo`` or ``reinforcement`` (or a method added since).
    """

    type: str | None = None
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class WandbIntegration(APIObject):
    """Weights and Biases settings of a job."""

    project: str | None = None
    name: str | None = None
    entity: str | None = None
    run_id: str | None = None
    tags: _ListOrNull[str] = []


class FineTuningIntegration(APIObject):
    """An integration of a job (only ``wandb`` exists today)."""

    type: str = "wandb"
    wandb: WandbIntegration | None = None


class _Resource(APIObject):
    """An object the service keeps: its ``id``, and in ``object`` what kind of object it is.

    Each kind gives ``object`` the value the service sends as its default.
    """

    id: str
    object: str


class _DatedResource(_Resource):
    """A kept object that says when it was made (``created_at``, Unix seconds)."""

    created_at: int | None = None


class _Deletion(_Resource):
    """The answer to deleting an object: its ``id``, its kind, and whether it is gone."""

    deleted: bool = False


class FineTuningJob(_DatedResource):
    """A fine-tuning job (``fine_tuning.job``).

    ``error`` is ``None`` unless the job failed: the service (and its examples) also send ``{}`` or an
    error whose fields are all null for a job that has not failed.
    """

    object: str = "fine_tuning.job"
    error: _JobErrorOrNone = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: Hyperparameters | None = None
    model: str | None = None
    organization_id: str | None = None
    result_files: _ListOrNull[str] = []
    status: FineTuningJobStatus
    trained_tokens: int | None = None
    training_file: str | None = None
    validation_file: str | None = None
    integrations: _ListOrNull[FineTuningIntegration] = []
    seed: int | None = None
    estimated_finish: int | None = None
    method: FineTuneMethod | None = None
    metadata: dict[str, str] | None = None

    @property
    def method_type(self) -> str:
        """The job's method: ``method.type``, else the block present, else ``supervised`` (the default)."""
        method = self.method
        if method is None:
            return "supervised"
        if method.type:
            return method.type
        for name in ("dpo", "reinforcement", "supervised"):
            if getattr(method, name) is not None:
                return name
        return "supervised"


class FineTuningJobEvent(_DatedResource):
    """An event of a job (``fine_tuning.job.event``): a log message or a metrics record.

    :param level: ``info``, ``warn`` (``warning`` on Azure) or ``error``.
    :param type: ``message`` or ``metrics``.
    :param data: the event's data (the metrics for ``metrics`` events).
    """

    object: str = "fine_tuning.job.event"
    level: str = "info"
    message: str = ""
    type: str | None = None
    data: dict[str, Any] | None = None


class CheckpointMetrics(APIObject):
    """Metrics of a checkpoint at its step; any of them may be absent."""

    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(_DatedResource):
    """A checkpoint of a job (``fine_tuning.job.checkpoint``): a usable model at a training step."""

    object: str = "fine_tuning.job.checkpoint"
    fine_tuned_model_checkpoint: str | None = None
    fine_tuning_job_id: str | None = None
    step_number: int | None = None
    metrics: Annotated[CheckpointMetrics, BeforeValidator(_none_as_empty_dict)] = Field(
        default_factory=CheckpointMetrics
    )


class CheckpointPermission(_DatedResource):
    """A permission for a project to use a checkpoint (``checkpoint.permission``)."""

    object: str = "checkpoint.permission"
    project_id: str | None = None


class DeletedCheckpointPermission(_Deletion):
    """The answer to deleting a checkpoint permission."""

    object: str = "checkpoint.permission"


class _StoredFile(_Resource):
    """What a file and an upload both report: the file's size, name, purpose, lifetime and status."""

    bytes: int | None = None
    created_at: int | None = None
    expires_at: int | None = None
    filename: str | None = None
    purpose: str | None = None
    status: str | None = None


class FileObject(_StoredFile):
    """An uploaded file (the spec's ``OpenAIFile``).

    :param purpose: ``fine-tune``, ``fine-tune-results``, ``batch``... (kept as a string: the list grows).
    :param status: deprecated by the service: ``uploaded``, ``processed`` or ``error``.
    """

    object: str = "file"
    status_details: str | None = None


class DeletedFile(_Deletion):
    """The answer to deleting a file."""

    object: str = "file"


class Upload(_StoredFile):
    """A multi-part upload (``upload``); ``file`` is set once the upload is completed.

    :param status: ``pending``, ``completed``, ``cancelled`` or ``expired``.
    """

    object: str = "upload"
    file: FileObject | None = None


class UploadPart(_DatedResource):
    """A part added to an upload (``upload.part``)."""

    object: str = "upload.part"
    upload_id: str | None = None


class GraderRunErrors(APIObject):
    """The error flags of a grader run; all false when the run went well."""

    formula_parse_error: bool | None = None
    sample_parse_error: bool | None = None
    truncated_observation_error: bool | None = None
    unresponsive_reward_error: bool | None = None
    invalid_variable_error: bool | None = None
    other_error: bool | None = None
    python_grader_server_error: bool | None = None
    python_grader_server_error_type: str | None = None
    python_grader_runtime_error: bool | None = None
    python_grader_runtime_error_details: str | None = None
    model_grader_server_error: bool | None = None
    model_grader_refusal_error: bool | None = None
    model_grader_parse_error: bool | None = None
    model_grader_server_error_details: str | None = None

    def failed(self) -> list[str]:
        """Return the names of the error flags that are set."""
        return sorted(name for name, value in {**self.__dict__, **(self.model_extra or {})}.items() if value is True)


class GraderRunMetadata(APIObject):
    """What a grader run reports besides its reward.

    :param token_usage: the spec says an integer; the service answers a usage object.
    """

    name: str | None = None
    type: str | None = None
    errors: GraderRunErrors | None = None
    execution_time: float | None = None
    scores: _DictOrNull = {}
    token_usage: int | dict[str, Any] | None = None
    sampled_model_name: str | None = None


class GraderRunResult(APIObject):
    """The answer of ``POST /fine_tuning/alpha/graders/run``."""

    reward: float | None = None
    metadata: GraderRunMetadata | None = None
    sub_rewards: _DictOrNull = {}
    model_grader_token_usage_per_model: _DictOrNull = {}


class GraderValidation(APIObject):
    """The answer of ``POST /fine_tuning/alpha/graders/validate``: the grader as the service read it."""

    grader: ResponseGrader | None = None


class JobState(BaseModel):
    """What a wait needs of a job: its status, its estimate, and how it ended; nothing else is read.

    The triggerer's shared poller parses pages of many jobs into this lean form straight from the JSON,
    so that watching a thousand jobs does not build a thousand full :class:`FineTuningJob` objects a poll.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    status: FineTuningJobStatus
    created_at: int | None = None
    estimated_finish: int | None = None
    fine_tuned_model: str | None = None
    error: _JobErrorOrNone = None
    #: The cost so far, where the service reports one (a budget cap reads it).
    total_price: float | None = None


_ItemT = TypeVar("_ItemT")


class Page(APIObject, Generic[_ItemT]):
    """One page of a list answer (``{"object": "list", "data": [...], "has_more": ...}``).

    Event pages carry no ``first_id`` / ``last_id``.
    """

    object: str = "list"
    data: _ListOrNull[_ItemT] = []
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None

    @property
    def next_after(self) -> str | None:
        """The id to pass as ``after`` to get the next page (check :attr:`has_more` first)."""
        if self.last_id:
            return self.last_id
        if self.data:
            last_id = getattr(self.data[-1], "id", None)
            return last_id if isinstance(last_id, str) else None
        return None


# ---------------------------------------------------------------------------------------------------------
# Request side: strict.
# ---------------------------------------------------------------------------------------------------------

_Auto: TypeAlias = Literal["auto"]
_NEpochs: TypeAlias = Annotated[StrictInt, Field(ge=1, le=50)]
_BatchSize: TypeAlias = Annotated[StrictInt, Field(ge=1, le=256)]
# strict: a bool or a numeric string is refused; an int is fine for a float.
_LearningRate: TypeAlias = Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)]
_Beta: TypeAlias = Annotated[float, Field(gt=0, le=2, strict=True, allow_inf_nan=False)]
_ComputeMultiplier: TypeAlias = Annotated[float, Field(gt=1e-5, le=10, strict=True, allow_inf_nan=False)]
_PositiveInt: TypeAlias = Annotated[StrictInt, Field(ge=1)]


class SupervisedHyperparametersRequest(RequestModel):
    """Hyperparameters of a supervised job; each is ``"auto"``, a number in range, or left to the service.

    :param n_epochs: 1 to 50.
    :param batch_size: 1 to 256.
    :param learning_rate_multiplier: greater than 0.
    """

    n_epochs: _Auto | _NEpochs | None = None
    batch_size: _Auto | _BatchSize | None = None
    learning_rate_multiplier: _Auto | _LearningRate | None = None


class DpoHyperparametersRequest(SupervisedHyperparametersRequest):
    """Hyperparameters of a DPO job: the supervised ones and ``beta``.

    :param beta: greater than 0, at most 2.
    """

    beta: _Auto | _Beta | None = None


class ReinforcementHyperparametersRequest(SupervisedHyperparametersRequest):
    """Hyperparameters of a reinforcement job: the supervised ones and the reinforcement ones.

    :param reasoning_effort: ``default``, ``low``, ``medium`` or ``high``.
    :param compute_multiplier: greater than 0.00001, at most 10.
    :param eval_interval: training steps between evaluations, at least 1.
    :param eval_samples: evaluation samples per step, at least 1.
    """

    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None
    compute_multiplier: _Auto | _ComputeMultiplier | None = None
    eval_interval: _Auto | _PositiveInt | None = None
    eval_samples: _Auto | _PositiveInt | None = None


class SupervisedMethodRequest(RequestModel):
    """The ``supervised`` block of a job request."""

    hyperparameters: SupervisedHyperparametersRequest | None = None


class DpoMethodRequest(RequestModel):
    """The ``dpo`` block of a job request."""

    hyperparameters: DpoHyperparametersRequest | None = None


#: Validation context key of :func:`build_request`: ``False`` for a service that grades reinforcement jobs by
#: other means than an OpenAI grader (Fireworks' evaluator); a grader is required otherwise.
GRADER_REQUIRED = "grader_required"


def _grader_required(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get(GRADER_REQUIRED, True))


class ReinforcementMethodRequest(RequestModel):
    """The ``reinforcement`` block of a job request: a grader is required (see :data:`GRADER_REQUIRED`)."""

    grader: Grader | None = None
    hyperparameters: ReinforcementHyperparametersRequest | None = None

    @model_validator(mode="after")
    def _has_grader(self, info: ValidationInfo) -> ReinforcementMethodRequest:
        if self.grader is None and _grader_required(info):
            raise _FieldValueError("grader", "reinforcement fine-tuning needs a grader")
        return self


_METHOD_BLOCKS = ("supervised", "dpo", "reinforcement")


class MethodRequest(RequestModel):
    """The ``method`` of a job request: its type and the matching block.

    :param type: ``supervised``, ``dpo`` or ``reinforcement``.
    """

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethodRequest | None = None
    dpo: DpoMethodRequest | None = None
    reinforcement: ReinforcementMethodRequest | None = None

    @model_validator(mode="after")
    def _block_matches_type(self, info: ValidationInfo) -> MethodRequest:
        for block in _METHOD_BLOCKS:
            if block != self.type and getattr(self, block) is not None:
                raise _FieldValueError(
                    block,
                    f"a {block!r} block does not go with method type {self.type!r}; set type to {block!r}",
                )
        if self.type == "reinforcement" and self.reinforcement is None and _grader_required(info):
            raise _FieldValueError("reinforcement.grader", "reinforcement fine-tuning needs a grader")
        return self


class WandbIntegrationRequest(RequestModel):
    """Weights and Biases settings of a job request.

    :param project: the W&B project the run goes to.
    :param name: display name of the run (the service uses the job id when unset).
    :param entity: W&B team or user.
    :param tags: tags of the run.
    """

    project: _NonBlankStr
    name: StrictStr | None = None
    entity: StrictStr | None = None
    tags: list[StrictStr] | None = None


class IntegrationRequest(RequestModel):
    """An integration of a job request (only ``wandb`` exists)."""

    type: Literal["wandb"] = "wandb"
    wandb: WandbIntegrationRequest


_MODEL_NAME = re.compile(r"[A-Za-z0-9._:\-/]+")
_MAX_METADATA_KEYS = 16
_MAX_METADATA_KEY_CHARS = 64
_MAX_METADATA_VALUE_CHARS = 512


class CreateFineTuningJobRequest(RequestModel):
    """The body of ``POST /fine_tuning/jobs``.

    The deprecated top-level ``hyperparameters`` are moved into ``method`` (supervised) on validation, so
    that the body sent never carries them.

    :param model: the base model (or a fine-tuned model to continue from).
    :param training_file: id of the uploaded training file.
    :param validation_file: id of the uploaded validation file; must differ from ``training_file``.
    :param hyperparameters: deprecated; use ``method``.
    :param suffix: 1 to 64 characters added to the fine-tuned model's name.
    :param seed: 0 to 2147483647.
    :param method: the method and its hyperparameters.
    :param metadata: at most 16 string pairs, keys up to 64 characters, values up to 512.
    :param integrations: at most 5 integrations.
    """

    model: StrictStr
    training_file: _IdStr
    validation_file: _IdStr | None = None
    hyperparameters: SupervisedHyperparametersRequest | None = None
    suffix: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2_147_483_647)] | None = None
    method: MethodRequest | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    integrations: Annotated[list[IntegrationRequest], Field(max_length=5)] | None = None

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        if not _MODEL_NAME.fullmatch(value):
            raise ValueError(
                f"{_short_repr(value)} is not a model name (letters, digits and . _ : - / only, no spaces)"
            )
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > _MAX_METADATA_KEYS:
            raise ValueError(f"{len(value)} keys given, at most {_MAX_METADATA_KEYS} are allowed")
        for key, item in value.items():
            if not key or len(key) > _MAX_METADATA_KEY_CHARS:
                raise ValueError(f"key {_short_repr(key)} must be 1 to {_MAX_METADATA_KEY_CHARS} characters")
            if len(item) > _MAX_METADATA_VALUE_CHARS:
                raise ValueError(
                    f"the value of key {_short_repr(key)} is {len(item)} characters long, "
                    f"at most {_MAX_METADATA_VALUE_CHARS} are allowed"
                )
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> CreateFineTuningJobRequest:
        if self.validation_file is not None and self.validation_file == self.training_file:
            raise _FieldValueError(
                "validation_file", "validation_file must differ from training_file (the same file was given)"
            )
        if self.hyperparameters is not None:
            self.method = self._method_with_deprecated_hyperparameters(self.hyperparameters)
            self.hyperparameters = None
        return self

    def _method_with_deprecated_hyperparameters(self, legacy: SupervisedHyperparametersRequest) -> MethodRequest:
        method = self.method
        if method is None:
            return MethodRequest(type="supervised", supervised=SupervisedMethodRequest(hyperparameters=legacy))
        if method.type == "supervised":
            block = method.supervised
            if block is None or block.hyperparameters is None:
                return method.model_copy(update={"supervised": SupervisedMethodRequest(hyperparameters=legacy)})
            if block.hyperparameters == legacy:
                return method
        raise _FieldValueError(
            "hyperparameters",
            "the deprecated top-level hyperparameters conflict with method "
            f"{method.type!r}; give them only as method.{method.type}.hyperparameters",
        )

    def to_body(self) -> dict[str, Any]:
        """Return the JSON-ready body to send; never with the deprecated top-level hyperparameters."""
        body = super().to_body()
        body.pop("hyperparameters", None)
        return body


class FileExpiration(RequestModel):
    """When a file or upload expires: ``seconds`` (1 hour to 30 days) after its creation.

    :param anchor: always ``created_at``.
    :param seconds: 3600 to 2592000.
    """

    anchor: Literal["created_at"] = "created_at"
    seconds: Annotated[StrictInt, Field(ge=3600, le=2_592_000)]


class CreateFileRequest(RequestModel):
    """The form fields of ``POST /files`` besides the file itself.

    :param purpose: ``fine-tune`` for training and validation files.
    :param expires_after: when the file expires; kept until deleted when unset.
    """

    request_label: ClassVar[str] = "file request"

    purpose: Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"] = "fine-tune"
    expires_after: FileExpiration | None = None

    def to_form_fields(self) -> dict[str, str]:
        """Return the multipart form fields, nested objects flattened as ``expires_after[seconds]``."""
        fields: dict[str, str] = {"purpose": self.purpose}
        if self.expires_after is not None:
            fields["expires_after[anchor]"] = self.expires_after.anchor
            fields["expires_after[seconds]"] = str(self.expires_after.seconds)
        return fields


class CreateUploadRequest(RequestModel):
    """The body of ``POST /uploads``.

    :param filename: name of the file to create.
    :param purpose: ``fine-tune`` for training and validation files.
    :param bytes: total size, more than 0 and at most 8 GB.
    :param mime_type: MIME type of the file (``text/jsonl`` for fine-tuning).
    :param expires_after: when the upload's file expires.
    """

    request_label: ClassVar[str] = "upload request"

    filename: _NonBlankStr
    purpose: Literal["assistants", "batch", "fine-tune", "vision"]
    bytes: Annotated[StrictInt, Field(gt=0, le=MAX_UPLOAD_BYTES)]
    mime_type: _NonBlankStr
    expires_after: FileExpiration | None = None


def _md5_hex(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{32}", value):
        raise ValueError(f"must be an md5 checksum: 32 hexadecimal digits (got {_short_repr(value)})")
    return value


class CompleteUploadRequest(RequestModel):
    """The body of ``POST /uploads/{id}/complete``.

    :param part_ids: the parts, in the order they make the file.
    :param md5: md5 checksum of the whole file, checked by the service.
    """

    request_label: ClassVar[str] = "upload request"

    part_ids: Annotated[list[_IdStr], Field(min_length=1)]
    md5: Annotated[StrictStr, AfterValidator(_md5_hex)] | None = None


class CreateCheckpointPermissionRequest(RequestModel):
    """The body of ``POST /fine_tuning/checkpoints/{checkpoint}/permissions``.

    :param project_ids: the projects to share the checkpoint with.
    """

    request_label: ClassVar[str] = "checkpoint permission request"

    project_ids: Annotated[list[_IdStr], Field(min_length=1)]


class RunGraderRequest(RequestModel):
    """The body of ``POST /fine_tuning/alpha/graders/run``.

    :param grader: the grader to run.
    :param model_sample: the model output to grade (the ``sample`` namespace).
    :param item: the dataset item (the ``item`` namespace).
    """

    request_label: ClassVar[str] = "grader request"

    grader: Grader
    model_sample: StrictStr
    item: dict[str, Any] | None = None


class ValidateGraderRequest(RequestModel):
    """The body of ``POST /fine_tuning/alpha/graders/validate``."""

    request_label: ClassVar[str] = "grader request"

    grader: Grader


# ---------------------------------------------------------------------------------------------------------
# Building requests: pydantic errors -> InvalidRequestError naming the field.
# ---------------------------------------------------------------------------------------------------------

_R = TypeVar("_R", bound=BaseModel)
# pydantic's primitive union-member tags; field names never collide with these.
_PRIMITIVE_TAGS = frozenset({"int", "float", "str", "bool", "none", "bytes", "list", "dict", "any"})
# Errors that only say "the input is not of this member's type"; a union reports one per member.
_MISMATCH_TYPES = frozenset({"literal_error", "enum", "union_tag_invalid", "union_tag_not_found"})
_SHOULD_BE = "Input should be "
# Graders the spec allows in one place only, and what to say when one turns up elsewhere.
_TAG_HINTS = {
    "label_model": "a label_model grader goes only among a multi grader's graders",
    "multi": "multi graders do not nest",
}


def _is_mismatch(error_type: str) -> bool:
    return error_type in _MISMATCH_TYPES or error_type.endswith(("_type", "_parsing"))


def _child(node: Any, part: str | int) -> tuple[bool, Any]:
    """Step into the user's input along one location part, if the part indexes it."""
    if isinstance(node, Mapping) and part in node:
        return True, node[part]
    if isinstance(node, list | tuple) and isinstance(part, int) and -len(node) <= part < len(node):
        return True, node[part]
    if isinstance(node, BaseModel) and isinstance(part, str) and part in type(node).model_fields:
        return True, getattr(node, part)
    return False, None


def _is_noise(part: str | int, node: Any) -> bool:
    """Whether a location part names a union member rather than a field of the user's input."""
    if isinstance(part, int):
        return False
    if not part.isidentifier() or part in _PRIMITIVE_TAGS or part[:1].isupper():
        # "literal['auto']", "constrained-int", "function-after[...]", "dict[str,...]", "single-grader",
        # or a model class name: field names are snake_case identifiers.
        return True
    # A discriminated union's tag: the value of the input's ``type``.
    return isinstance(node, Mapping) and node.get("type") == part


def _clean_loc(loc: tuple[str | int, ...], data: Any, error_type: str) -> tuple[tuple[str | int, ...], bool]:
    """Keep the parts of pydantic's location that are the user's field path; say whether any were dropped.

    The location is walked along the input itself: a part that indexes the input is the user's, a part that
    does not is either a union member's tag (dropped) or a field missing from the input (kept).
    """
    kept: list[str | int] = []
    node = data
    dropped = False
    for index, part in enumerate(loc):
        found, child = _child(node, part)
        if found:
            kept.append(part)
            node = child
        elif _is_noise(part, node) and not (error_type == "missing" and index == len(loc) - 1):
            dropped = True
        else:
            kept.append(part)
            node = None
    return tuple(kept), dropped


@dataclass(slots=True)
class _Problem:
    """One error of a validation, located on the user's field path."""

    path: str
    error_type: str
    message: str
    got: str | None
    from_union: bool

    def render(self) -> str:
        text = self.message if self.got is None else f"{self.message} (got {self.got})"
        return f"{self.path}: {text}" if self.path else text


def _problem(error: Mapping[str, Any], payload: Mapping[str, Any]) -> _Problem:
    error_type = str(error["type"])
    loc, from_union = _clean_loc(tuple(error["loc"]), payload, error_type)
    message = str(error["msg"])
    got: str | None = None
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _FieldValueError):
        loc, message = loc + cause.loc, str(cause)
    elif error_type in ("value_error", "assertion_error"):
        # Our validators' messages say what was given; pydantic's prefix adds nothing.
        message = re.sub(r"^(Value error|Assertion failed), ", "", message)
    elif error_type != "missing":
        got = _short_repr(error.get("input"))
    if error_type == "union_tag_invalid":
        hint = _TAG_HINTS.get(str((error.get("ctx") or {}).get("tag")))
        message = f"{message}; {hint}" if hint else message
    return _Problem(".".join(str(part) for part in loc), error_type, message, got, from_union)


def _merge_union_members(problems: list[_Problem]) -> list[_Problem]:
    """Collapse the one-error-per-member reports of a union into one problem per field, keeping order.

    A member that got the right type but a bad value ("less than or equal to 50") says what to fix; when
    every member only says "not my type", their expectations are joined: "'auto' or a valid integer".
    """
    groups: dict[str, list[_Problem]] = {}
    merged: list[_Problem] = []
    for problem in problems:
        if not problem.from_union:
            merged.append(problem)
            continue
        if problem.path not in groups:
            groups[problem.path] = []
            merged.append(problem)  # placeholder for the group, replaced below
        groups[problem.path].append(problem)
    for index, problem in enumerate(merged):
        group = groups.get(problem.path) if problem.from_union else None
        if not group or len(group) == 1:
            continue
        telling = [member for member in group if not _is_mismatch(member.error_type)]
        if telling:
            merged[index] = telling[0]
            continue
        expectations = [group[0].message] + [member.message.removeprefix(_SHOULD_BE) for member in group[1:]]
        message = " or ".join(dict.fromkeys(expectations))
        merged[index] = _Problem(problem.path, problem.error_type, message, group[0].got, True)
    return merged


def build_request(
    model_cls: type[_R],
    data: Mapping[str, Any] | None = None,
    /,
    *,
    validation_context: Mapping[str, Any] | None = None,
    **fields: Any,
) -> _R:
    """Validate a request, raising :class:`InvalidRequestError` that names the offending field.

    :param model_cls: the request model, e.g. :class:`CreateFineTuningJobRequest`.
    :param data: the request's fields as a mapping (e.g. rendered operator arguments).
    :param validation_context: what the validators are told of the service (:data:`GRADER_REQUIRED`).
    :param fields: more fields; they win over ``data``.
    :return: the validated request.
    :raises InvalidRequestError: when the input breaks a rule; ``field`` is the dotted path of the first
        error (``method.supervised.hyperparameters.n_epochs``) and the message lists every error.
    """
    label = getattr(model_cls, "request_label", "fine-tuning request")
    if data is not None and not isinstance(data, Mapping):
        raise InvalidRequestError(f"Invalid {label}: expected a mapping of fields, got {type(data).__name__}")
    payload = {**(data or {}), **fields}
    try:
        return model_cls.model_validate(payload, context=dict(validation_context or {}))
    except ValidationError as exc:
        problems = _merge_union_members([_problem(error, payload) for error in exc.errors()])
        text = "; ".join(problem.render() for problem in problems)
        raise InvalidRequestError(f"Invalid {label}: {text}", field=problems[0].path or None) from None
