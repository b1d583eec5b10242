"""AWS Bedrock model customization under the provider's canonical, OpenAI-shaped calls.

Bedrock's control plane (``https://bedrock.<region>.amazonaws.com``, restJson1) is translated faithfully:

* ``CreateModelCustomizationJob`` is made from a canonical request and :class:`BedrockOptions` (the options only
  Bedrock has: role, output location, customization type, hyperparameters as Bedrock takes them, VPC, KMS, tags,
  distillation teacher, reinforcement fine-tuning's Lambda grader). Unknown or out-of-range options are refused
  before any request, naming the field; OpenAI options that mean something else on Bedrock are refused with a
  line naming the Bedrock option to use.
* A create is once-only by the service itself: the job's name is the task instance's client-chosen id
  (:meth:`Backend.client_job_id`) and its ``clientRequestToken`` is derived from that name, so a lost answer, a
  killed worker or a retry finds the job by its name (``GetModelCustomizationJob`` takes one) instead of making a
  second, billed one. The custom model's name follows the job's generation too (:func:`generation_model_name`):
  after a failed or stopped job, the next one asks for a name of its own.
* ``GetModelCustomizationJob`` becomes the canonical job: ``jobArn`` is its id, ``outputModelArn`` its
  ``fine_tuned_model``, ``failureMessage`` its error, ``status`` and ``statusDetails`` a canonical status
  (:data:`BEDROCK_STATUSES`, :func:`canonical_status`), the metrics ride along as ``training_metrics`` and
  ``validation_metrics``; ``StopModelCustomizationJob`` is the cancel.
* Requests are signed with SigV4 from an Airflow AWS connection (:mod:`.aws`) or carry a Bedrock API key.

Bedrock keeps no event log, checkpoints, metadata, graders endpoint, files or uploads API: those capabilities are
off, and asking for them is refused before any request. Training data is referenced by ``s3://`` URIs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, TypeVar, cast
from urllib.parse import urlsplit

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from airflow_provider_finetune.backends.aws import AwsCredentials, SigV4Auth, read_aws_error, region_of_host
from airflow_provider_finetune.backends.base import (
    Backend,
    Call,
    Capabilities,
    HeaderAuth,
    Limits,
    read_options,
    refuse_untranslatable,
)
from airflow_provider_finetune.core.client import ErrorFields, path_param
from airflow_provider_finetune.core.statuses import FineTuningJobStatus, canonical
from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.models import (
    CreateFineTuningJobRequest,
    FineTuningJob,
    JobState,
    Page,
)
from airflow_provider_finetune.rules.budget import EpochRule

__all__ = [
    "BEDROCK_STATUSES",
    "BedrockBackend",
    "BedrockOptions",
    "CustomModelDeployment",
    "bedrock_options",
    "canonical_status",
    "client_request_token",
    "generation_model_name",
]

M = TypeVar("M", bound=BaseModel)
_S = FineTuningJobStatus

#: Bedrock's job statuses onto the canonical ones (``InProgress`` is refined by ``statusDetails``).
BEDROCK_STATUSES: dict[str, FineTuningJobStatus] = {
    "InProgress": _S.RUNNING,
    "Completed": _S.SUCCEEDED,
    "Failed": _S.FAILED,
    "Stopping": _S.CANCELLING,
    "Stopped": _S.CANCELLED,
}

#: The patterns of Bedrock's request shapes (botocore's ``bedrock`` service model), checked before sending.
S3_URI = re.compile(r"s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](?:/[-!_*'().a-z0-9A-Z]+(?:/[-!_*'().a-z0-9A-Z]+)*)?/?")
ROLE_ARN = re.compile(r"arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+")
CUSTOM_MODEL_NAME = re.compile(r"([0-9a-zA-Z][_-]?){1,63}")
KMS_KEY = re.compile(
    r"(arn:aws(-[^:]+)?:kms:[a-zA-Z0-9-]*:[0-9]{12}:((key/[a-zA-Z0-9-]{36})|(alias/[a-zA-Z0-9-_/]+)))"
    r"|([a-zA-Z0-9-]{36})|(alias/[a-zA-Z0-9-_/]+)"
)
TAG_TEXT = re.compile(r"[a-zA-Z0-9\s._:/=+@-]*")
LAMBDA_ARN = re.compile(
    r"arn:(aws[a-zA-Z-]*)?:lambda:[a-z]{2}(-gov)?-[a-z]+-\d{1}:\d{12}:function:[a-zA-Z0-9-_\.]+(:(\$LATEST|[a-zA-Z0-9-_]+))?"
)
_SUBNET = re.compile(r"subnet-[0-9a-z]+")
_SECURITY_GROUP = re.compile(r"sg-[0-9a-z]+")

CustomizationType = Literal["FINE_TUNING", "CONTINUED_PRE_TRAINING", "DISTILLATION", "REINFORCEMENT_FINE_TUNING"]


#: The pattern each option must match, and what it is in people's words.
_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "role_arn": (ROLE_ARN, "an IAM role ARN (arn:aws:iam::<account>:role/<name>)"),
    "output_s3_uri": (S3_URI, "an s3:// URI"),
    "custom_model_name": (CUSTOM_MODEL_NAME, "a custom model name (1 to 63 of a-z A-Z 0-9 _ -)"),
    "kms_key_id": (KMS_KEY, "a KMS key id, ARN or alias"),
    "lambda_grader_arn": (LAMBDA_ARN, "a Lambda function ARN"),
}


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Refuse tags Bedrock would refuse: keys 1 to 128, values up to 256 characters of its tag alphabet."""
    for key, item in tags.items():
        if not 1 <= len(key) <= 128 or not TAG_TEXT.fullmatch(key):
            raise ValueError(f"tag key {key!r}: 1 to 128 of letters, digits, spaces and . _ : / = + @ -")
        if len(item) > 256 or not TAG_TEXT.fullmatch(item):
            raise ValueError(f"the value of tag {key!r}: at most 256 of letters, digits, spaces and . _ : / = + @ -")
    return dict(tags)


# -- hyperparameters as Bedrock takes them, per model family ----------------------------------------------

_Range = tuple[type, float, float]

#: The hyperparameters each model family takes (AWS, "Custom model hyperparameters"), with their type and range.
#: A family is known by its model id's prefix; keys outside a known family's list are refused by name.
FAMILY_HYPERPARAMETERS: dict[str, dict[str, _Range]] = {
    "amazon.nova": {
        "epochCount": (int, 1, 5),
        "learningRate": (float, 1e-6, 1e-4),
        "learningRateWarmupSteps": (int, 0, 100),
    },
    "amazon.titan-text": {
        "epochCount": (int, 1, 10),
        "batchSize": (int, 1, 64),
        "learningRate": (float, 1e-8, 1.0),
        "learningRateWarmupSteps": (int, 0, 250),
    },
    "meta.llama": {
        "epochCount": (int, 1, 10),
        "batchSize": (int, 1, 1),
        "learningRate": (float, 5e-6, 0.1),
    },
    "cohere.command": {
        "epochCount": (int, 1, 100),
        "batchSize": (int, 8, 32),
        "learningRate": (float, 5e-6, 0.1),
        "earlyStoppingThreshold": (float, 0.0, 0.1),
        "earlyStoppingPatience": (int, 1, 10),
        "evalPercentage": (float, 5, 50),
    },
    "anthropic.claude-3-haiku": {
        "epochCount": (int, 1, 10),
        "batchSize": (int, 4, 256),
        "learningRateMultiplier": (float, 0.1, 2.0),
        "earlyStoppingEnabled": (bool, 0, 1),
        "earlyStoppingThreshold": (float, 0.0, 0.1),
        "earlyStoppingPatience": (int, 1, 10),
    },
}

#: Reinforcement fine-tuning's hyperparameters: typed, in ``customizationConfig.rftConfig.hyperParameters``.
RFT_HYPERPARAMETERS: dict[str, _Range] = {
    "epochCount": (int, 1, 50),
    "batchSize": (int, 16, 512),
    "learningRate": (float, 1e-7, 1e-3),
    "maxPromptLength": (int, 1, 2**31 - 1),
    "trainingSamplePerPrompt": (int, 2, 16),
    "inferenceMaxTokens": (int, 1, 2**31 - 1),
    "evalInterval": (int, 1, 100),
}
REASONING_EFFORT = ("low", "medium", "high")


def model_family(model: str) -> str | None:
    """The hyperparameter family of a base model id or ARN (``us.amazon.nova-lite-v1:0`` -> ``amazon.nova``)."""
    name = model.rsplit("/", 1)[-1]
    for family in FAMILY_HYPERPARAMETERS:
        if name.startswith(family) or f".{family}" in name:
            return family
    return None


def _number(name: str, value: Any, kind: type, low: float, high: float) -> int | float | bool:
    where = f"service_options.hyperparameters.{name}"
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise InvalidRequestError(f"{where}: must be true or false, got {value!r}", field=where)
    try:
        number = kind(value) if not isinstance(value, bool) else None
        if kind is int and isinstance(value, float | str) and float(value) != int(float(value)):
            number = None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise InvalidRequestError(
            f"{where}: must be {'an integer' if kind is int else 'a number'}, got {value!r}", field=where
        )
    if not low <= number <= high:
        raise InvalidRequestError(f"{where}: {value!r} is outside {low:g} to {high:g}", field=where)
    return cast(int | float, number)


def _as_bedrock_string(value: int | float | bool) -> str:
    """Bedrock's hyperparameters are strings, written as its docs write them: ``"5"``, ``"0.00001"``, ``"true"``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")
    return str(value)


class VpcOptions(BaseModel):
    """The VPC a job's training runs in.

    :param subnet_ids: 1 to 16 subnet ids.
    :param security_group_ids: 1 to 5 security group ids.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    subnet_ids: Annotated[
        list[Annotated[StrictStr, Field(pattern=_SUBNET.pattern)]], Field(min_length=1, max_length=16)
    ]
    security_group_ids: Annotated[
        list[Annotated[StrictStr, Field(pattern=_SECURITY_GROUP.pattern)]], Field(min_length=1, max_length=5)
    ]


class BedrockOptions(BaseModel):
    """The options only Bedrock has, given to the create operator as ``service_options``.

    :param role_arn: the IAM role Bedrock assumes to read the data and write the output (required).
    :param output_s3_uri: where Bedrock writes the job's metrics (required).
    :param customization_type: ``FINE_TUNING`` (default), ``CONTINUED_PRE_TRAINING``, ``DISTILLATION`` or
        ``REINFORCEMENT_FINE_TUNING``.
    :param custom_model_name: the name of the custom model; the job's own name when not given. Custom model names
        are unique in the account: the task instance's first job asks for this name, and a job made after a failed
        or stopped one for ``<name>-<n>`` (``support-model-1``), cut to fit 63 characters.
    :param hyperparameters: as Bedrock takes them for the model family (``epochCount``, ``batchSize``,
        ``learningRate``, ``learningRateWarmupSteps``...); checked by name and range, sent as strings (typed, in
        the reinforcement fine-tuning config, for that type).
    :param vpc: ``{"subnet_ids": [...], "security_group_ids": [...]}``.
    :param kms_key_id: the KMS key that encrypts the custom model.
    :param job_tags: tags of the job.
    :param model_tags: tags of the custom model.
    :param teacher_model: the teacher of a distillation (a model id, ARN or inference profile).
    :param max_response_length_for_inference: the teacher's longest response in a distillation.
    :param lambda_grader_arn: the Lambda function that grades a reinforcement fine-tuning's samples.
    :param reasoning_effort: reinforcement fine-tuning's reasoning effort (``low``, ``medium``, ``high``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    role_arn: StrictStr
    output_s3_uri: StrictStr
    customization_type: CustomizationType = "FINE_TUNING"
    custom_model_name: StrictStr | None = None
    hyperparameters: dict[StrictStr, Any] = Field(default_factory=dict)
    vpc: VpcOptions | None = None
    kms_key_id: StrictStr | None = None
    job_tags: Annotated[dict[StrictStr, StrictStr], Field(max_length=200)] = Field(default_factory=dict)
    model_tags: Annotated[dict[StrictStr, StrictStr], Field(max_length=200)] = Field(default_factory=dict)
    teacher_model: StrictStr | None = None
    max_response_length_for_inference: Annotated[int, Field(ge=1, strict=True)] | None = None
    lambda_grader_arn: StrictStr | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None

    @field_validator("role_arn", "output_s3_uri", "custom_model_name", "kms_key_id", "lambda_grader_arn")
    @classmethod
    def _pattern(cls, value: str | None, info: ValidationInfo) -> str | None:
        pattern, what = _PATTERNS[str(info.field_name)]
        if value is not None and not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}")
        if info.field_name == "custom_model_name" and value is not None and len(value) > 63:
            raise ValueError(f"{len(value)} characters, at most 63")
        return value

    @field_validator("job_tags", "model_tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        return check_tags(value)

    @model_validator(mode="after")
    def _what_the_type_needs(self) -> BedrockOptions:
        kind = self.customization_type
        if kind == "DISTILLATION" and self.teacher_model is None:
            raise _OptionError("teacher_model", "a DISTILLATION needs its teacher_model")
        if kind != "DISTILLATION":
            for name in ("teacher_model", "max_response_length_for_inference"):
                if getattr(self, name) is not None:
                    raise _OptionError(name, f"only a DISTILLATION takes it (customization_type is {kind})")
        if kind == "REINFORCEMENT_FINE_TUNING" and self.lambda_grader_arn is None:
            raise _OptionError("lambda_grader_arn", "a REINFORCEMENT_FINE_TUNING needs the Lambda function that grades")
        if kind != "REINFORCEMENT_FINE_TUNING":
            for name in ("lambda_grader_arn", "reasoning_effort"):
                if getattr(self, name) is not None:
                    raise _OptionError(
                        name, f"only a REINFORCEMENT_FINE_TUNING takes it (customization_type is {kind})"
                    )
        return self


class _OptionError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def bedrock_options(raw: Mapping[str, Any] | BedrockOptions | None) -> BedrockOptions:
    """Validate ``service_options`` for Bedrock; the first fault is refused in one line naming its field."""
    if isinstance(raw, BedrockOptions):
        return raw
    if not raw:
        raise InvalidRequestError(
            "service_options: Bedrock needs at least role_arn and output_s3_uri", field="service_options"
        )
    return read_options(BedrockOptions, raw, "Bedrock")


# -- from Bedrock's answers to the canonical models ------------------------------------------------------


def _epoch(value: Any) -> int | None:
    """An AWS timestamp (ISO 8601 or epoch seconds) as whole epoch seconds."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return int(value)
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def canonical_status(status: Any, details: Any = None) -> str:
    """Bedrock's status (and, while ``InProgress``, its ``statusDetails`` stages) as a canonical status.

    An ``InProgress`` job is ``validating_files`` while its data is validated or processed, ``running`` once
    training has started, and ``queued`` before any stage has started.
    """
    if not isinstance(status, str):
        return str(status)
    if status != "InProgress":
        return str(canonical(BEDROCK_STATUSES, status))
    stages = details if isinstance(details, dict) else {}

    def stage(name: str) -> str | None:
        block = stages.get(name)
        return block.get("status") if isinstance(block, dict) else None

    training = stage("trainingDetails")
    if training in ("InProgress", "Completed"):
        return _S.RUNNING.value
    if stage("validationDetails") == "InProgress" or stage("dataProcessingDetails") == "InProgress":
        return _S.VALIDATING_FILES.value
    if stage("validationDetails") == "Completed" or stage("dataProcessingDetails") == "Completed":
        return _S.QUEUED.value if training in (None, "NotStarted") else _S.RUNNING.value
    if not stages:
        return _S.RUNNING.value  # Bedrock gave no stages: in progress is all that is known
    return _S.QUEUED.value


def job_from_bedrock(data: Any) -> Any:
    """``GetModelCustomizationJob`` (or a list summary) onto the canonical job."""
    if not isinstance(data, dict):
        return data
    status = data.get("status")
    job: dict[str, Any] = {
        "id": data.get("jobArn"),
        "object": "fine_tuning.job",
        "status": canonical_status(status, data.get("statusDetails")),
        "created_at": _epoch(data.get("creationTime")),
        "finished_at": _epoch(data.get("endTime")),
        "model": data.get("baseModelArn"),
        "fine_tuned_model": data.get("outputModelArn") or data.get("customModelArn"),
        "client_job_id": data.get("jobName"),
        "bedrock_status": status,
        "customization_type": data.get("customizationType"),
        "output_model_name": data.get("outputModelName") or data.get("customModelName"),
    }
    training = data.get("trainingDataConfig")
    if isinstance(training, dict):
        job["training_file"] = training.get("s3Uri")
    validators = (data.get("validationDataConfig") or {}).get("validators") or []
    if validators and isinstance(validators[0], dict):
        job["validation_file"] = validators[0].get("s3Uri")
    if data.get("failureMessage"):
        job["error"] = {"code": status or "Failed", "message": data["failureMessage"]}
    if data.get("statusDetails"):
        job["status_details"] = data["statusDetails"]
    if data.get("trainingMetrics"):
        job["training_metrics"] = data["trainingMetrics"]
    if data.get("validationMetrics"):
        job["validation_metrics"] = data["validationMetrics"]
    if data.get("hyperParameters"):
        job["bedrock_hyperparameters"] = data["hyperParameters"]
    return {k: v for k, v in job.items() if v is not None}


def _page(item: Callable[[Any], Any], key: str) -> Callable[[Any], Any]:
    """A Bedrock list answer (``{key: [...], "nextToken"}``) as a canonical page whose cursor is ``nextToken``."""

    def translate(data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        token = data.get("nextToken")
        return {
            "object": "list",
            "data": [item(x) for x in data.get(key) or []],
            "has_more": bool(token),
            "last_id": token,
        }

    return translate


def _json(cls: type[M], translate: Callable[[Any], Any]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        return cls.model_validate(translate(response.json()))

    return parse


#: The generation at the end of a job name made by :meth:`BedrockBackend.client_job_id` (``ft-...-<generation>``).
_GENERATION = re.compile(r"-([0-9]+)\Z")
_MODEL_NAME_MAX = 63


def generation_model_name(name: str, generation: int) -> str:
    """The custom model name a task instance's job of ``generation`` asks for, from the name the user gave.

    The name itself for the first job; ``<name>-<generation>`` for each job made after a failed or stopped one
    (the name cut to leave room, within Bedrock's 63 characters of ``([0-9a-zA-Z][_-]?)``), so that a new job
    never asks for the name of an earlier job of its task instance.
    """
    if generation == 0:
        return name
    suffix = f"-{generation}"
    stem = name[: _MODEL_NAME_MAX - len(suffix)].rstrip("_-")
    return stem + suffix


def client_request_token(name: str) -> str:
    """The ``clientRequestToken`` of a create named ``name``: the same for every try of the same name."""
    return "airflow-" + hashlib.sha256(name.encode()).hexdigest()[:40]


class CustomModelDeployment(BaseModel):
    """A custom model deployment for on-demand inference (``GetCustomModelDeployment``), as Bedrock gives it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    arn: str = Field(alias="customModelDeploymentArn")
    name: str | None = Field(default=None, alias="modelDeploymentName")
    model_arn: str | None = Field(default=None, alias="modelArn")
    status: str | None = None
    failure_message: str | None = Field(default=None, alias="failureMessage")


#: Deployment statuses.
DEPLOYMENT_ACTIVE = "Active"
DEPLOYMENT_FAILED = "Failed"
DEPLOYMENT_CREATING = "Creating"


class BedrockBackend(Backend):
    """AWS Bedrock model customization jobs, and the custom model deployments that serve their models."""

    service: ClassVar[str] = "bedrock"
    label: ClassVar[str] = "AWS Bedrock"
    file_reference = "s3_uri"
    once_only = "client_job_id"

    capabilities = Capabilities(chat_completions=True, cancel=True, client_job_id=True, idempotency_token=True)
    instead = {
        "files": (
            "AWS Bedrock has no files API: training data is read from S3 (BedrockTrainingDataOperator writes it "
            "there and returns its s3:// URI)"
        ),
    }
    limits = Limits(max_metadata_keys=0, hyperparameters_auto=False, methods=frozenset({"supervised"}))

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        auth = settings.auth or ("key" if settings.api_key else "sigv4")
        if auth == "entra":
            raise InvalidRequestError("auth: a Bedrock connection takes 'key' or 'sigv4', not 'entra'", field="auth")
        self.auth_kind = auth
        self.region = settings.region_name or region_of_host(urlsplit(settings.base_url).hostname or "")

    # -- authentication and errors ---------------------------------------------------------------------

    def auth(self) -> httpx.Auth | None:
        """A Bedrock API key as a Bearer token, or SigV4 with the AWS connection's credentials."""
        if self.auth_kind == "key":
            if not self.settings.api_key:
                raise InvalidRequestError(
                    "auth 'key': the connection's password must be a Bedrock API key", field="auth"
                )
            return HeaderAuth("Authorization", f"Bearer {self.settings.api_key}")
        return SigV4Auth(AwsCredentials(self.settings.aws_conn_id or "aws_default", self.region), "bedrock")

    def read_error(self, response: httpx.Response, body: Any) -> ErrorFields:
        """restJson1 errors (``x-amzn-ErrorType``, ``message``)."""
        return read_aws_error(response, body)

    # -- the create request ----------------------------------------------------------------------------

    def job_body(self, request: CreateFineTuningJobRequest, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``CreateModelCustomizationJob`` body, without the name and token (added per generation)."""
        opts = bedrock_options(options)
        self._refuse_openai_only(request)
        for field in ("training_file", "validation_file"):
            uri = getattr(request, field)
            if uri is not None and not S3_URI.fullmatch(uri):
                raise InvalidRequestError(
                    f"Invalid fine-tuning request: {field}: Bedrock reads data from S3; {uri!r} is not an s3:// URI "
                    "(upload it with BedrockTrainingDataOperator)",
                    field=field,
                )
        body: dict[str, Any] = {
            "baseModelIdentifier": request.model,
            "roleArn": opts.role_arn,
            "customizationType": opts.customization_type,
            "trainingDataConfig": {"s3Uri": request.training_file},
            "outputDataConfig": {"s3Uri": opts.output_s3_uri},
        }
        if opts.custom_model_name:
            body["customModelName"] = opts.custom_model_name
        if request.validation_file:
            body["validationDataConfig"] = {"validators": [{"s3Uri": request.validation_file}]}
        config = self._customization_config(opts)
        if config:
            body["customizationConfig"] = config
        if opts.customization_type != "REINFORCEMENT_FINE_TUNING" and opts.hyperparameters:
            body["hyperParameters"] = self._string_hyperparameters(request.model, opts.hyperparameters)
        if opts.vpc is not None:
            body["vpcConfig"] = {"subnetIds": opts.vpc.subnet_ids, "securityGroupIds": opts.vpc.security_group_ids}
        if opts.kms_key_id:
            body["customModelKmsKeyId"] = opts.kms_key_id
        if opts.job_tags:
            body["jobTags"] = [{"key": k, "value": v} for k, v in opts.job_tags.items()]
        if opts.model_tags:
            body["customModelTags"] = [{"key": k, "value": v} for k, v in opts.model_tags.items()]
        return body

    def _refuse_openai_only(self, request: CreateFineTuningJobRequest) -> None:
        """Refuse the OpenAI options that mean something else on Bedrock, naming the Bedrock option to use."""
        instead = {
            "suffix": "service_options.custom_model_name",
            "seed": "nothing: Bedrock takes no seed",
            "metadata": "service_options.job_tags",
            "integrations": "nothing: Bedrock reports metrics to output_s3_uri",
            "hyperparameters": "service_options.hyperparameters (epochCount, batchSize, learningRate...)",
        }
        refuse_untranslatable(request, {field: f"not a Bedrock option; use {use}" for field, use in instead.items()})
        method = request.method
        if method is None:
            return
        if method.type == "dpo":
            raise InvalidRequestError(
                "Invalid fine-tuning request: method.type: Bedrock has no DPO; use service_options.customization_type",
                field="method.type",
            )
        if method.type == "reinforcement":
            raise InvalidRequestError(
                "Invalid fine-tuning request: method.type: Bedrock grades with a Lambda function; use "
                "service_options.customization_type 'REINFORCEMENT_FINE_TUNING' and service_options.lambda_grader_arn",
                field="method.type",
            )
        block = getattr(method, method.type, None)
        if getattr(block, "hyperparameters", None) is not None:
            raise InvalidRequestError(
                f"Invalid fine-tuning request: method.{method.type}.hyperparameters: OpenAI's hyperparameters mean "
                "something else on Bedrock (learning_rate_multiplier is not learningRate); use "
                "service_options.hyperparameters (epochCount, batchSize, learningRate...)",
                field=f"method.{method.type}.hyperparameters",
            )

    def _string_hyperparameters(self, model: str, given: Mapping[str, Any]) -> dict[str, str]:
        family = model_family(model)
        known = FAMILY_HYPERPARAMETERS.get(family or "")
        sent: dict[str, str] = {}
        for name, value in given.items():
            if known is None:
                # A family this provider does not list: Bedrock checks the names, the values go as strings.
                if isinstance(value, dict | list) or value is None:
                    raise InvalidRequestError(
                        f"service_options.hyperparameters.{name}: must be a number, true or false, got {value!r}",
                        field=f"service_options.hyperparameters.{name}",
                    )
                sent[name] = _as_bedrock_string(value) if not isinstance(value, str) else value
                continue
            if name not in known:
                raise InvalidRequestError(
                    f"service_options.hyperparameters.{name}: {family} models take {', '.join(known)}",
                    field=f"service_options.hyperparameters.{name}",
                )
            sent[name] = _as_bedrock_string(_number(name, value, *known[name]))
        return sent

    def epoch_rule(self, request: CreateFineTuningJobRequest, body: Mapping[str, Any]) -> EpochRule:
        """The body's ``epochCount`` (``service_options.hyperparameters.epochCount``), for a cost estimate.

        Bedrock's default differs by model and is published as no rule: an estimate needs the count given.
        """
        rft = body.get("customizationConfig", {}).get("rftConfig", {})
        count = (rft.get("hyperParameters") or body.get("hyperParameters") or {}).get("epochCount")
        given = int(count) if isinstance(count, int | str) and str(count).isdigit() else None
        return EpochRule(given, None, "service_options.hyperparameters.epochCount")

    def _customization_config(self, opts: BedrockOptions) -> dict[str, Any]:
        if opts.customization_type == "DISTILLATION":
            teacher: dict[str, Any] = {"teacherModelIdentifier": opts.teacher_model}
            if opts.max_response_length_for_inference is not None:
                teacher["maxResponseLengthForInference"] = opts.max_response_length_for_inference
            return {"distillationConfig": {"teacherModelConfig": teacher}}
        if opts.customization_type == "REINFORCEMENT_FINE_TUNING":
            rft: dict[str, Any] = {"graderConfig": {"lambdaGrader": {"lambdaArn": opts.lambda_grader_arn}}}
            hyper: dict[str, Any] = {
                name: _number(name, value, *RFT_HYPERPARAMETERS[name]) if name in RFT_HYPERPARAMETERS else None
                for name, value in opts.hyperparameters.items()
            }
            for name, value in hyper.items():
                if value is None:
                    raise InvalidRequestError(
                        f"service_options.hyperparameters.{name}: reinforcement fine-tuning takes "
                        f"{', '.join(RFT_HYPERPARAMETERS)} (and reasoning_effort)",
                        field=f"service_options.hyperparameters.{name}",
                    )
            if opts.reasoning_effort:
                hyper["reasoningEffort"] = opts.reasoning_effort
            if hyper:
                rft["hyperParameters"] = hyper
            return {"rftConfig": rft}
        return {}

    def create_job(
        self, request: CreateFineTuningJobRequest | Mapping[str, Any], options: Mapping[str, Any] | None = None
    ) -> Call[FineTuningJob]:
        """A bare create is refused: on Bedrock a create is made under a task instance's name (``ensure_job``)."""
        raise InvalidRequestError(
            "Bedrock jobs are created under a client-chosen name: use FineTuningHook.ensure_job (the create "
            "operator does)",
            field="service",
        )

    def create_prepared_job(self, body: Mapping[str, Any], *, job_id: str | None = None) -> Call[FineTuningJob]:
        """``CreateModelCustomizationJob`` named ``job_id``, with the ``clientRequestToken`` derived from it.

        The custom model is named after the job, or, where the user named it, by :func:`generation_model_name` for
        the job's generation (the end of ``job_id``): a failed or stopped job made no model, and the next job of
        the task instance does not ask for the name it asked for.

        The answer carries only the job's ARN: the job is read back by its name, so that the canonical job the
        hook sees is Bedrock's own record (with its name, the proof that it is ours).
        """
        if job_id is None:
            raise InvalidRequestError("Bedrock jobs are created under a client-chosen name", field="job_id")
        given = body.get("customModelName")
        model_name = job_id
        if given:
            generation = _GENERATION.search(job_id)
            model_name = generation_model_name(str(given), int(generation.group(1)) if generation else 0)
        if len(model_name) > _MODEL_NAME_MAX or not CUSTOM_MODEL_NAME.fullmatch(model_name):
            raise InvalidRequestError(
                f"service_options.custom_model_name: {model_name!r} is not a custom model name (1 to 63 of "
                "a-z A-Z 0-9 _ -)",
                field="service_options.custom_model_name",
            )
        sent = {
            **body,
            "jobName": job_id,
            "customModelName": model_name,
            "clientRequestToken": client_request_token(job_id),
        }
        name = job_id

        def parse(response: httpx.Response) -> FineTuningJob:
            arn = response.json().get("jobArn")
            # The create answers the ARN only; what Bedrock made is the job known by the name we chose.
            return FineTuningJob.model_validate(
                {
                    "id": arn,
                    "status": _S.QUEUED.value,
                    "client_job_id": name,
                    "model": body.get("baseModelIdentifier"),
                    "training_file": (body.get("trainingDataConfig") or {}).get("s3Uri"),
                }
            )

        return Call("POST", "model-customization-jobs", parse, json=sent, idempotent=False)

    def client_job_id(self, tag: str, fingerprint: str, generation: int) -> str:
        """The job's name: the house id, which fits Bedrock's name rules (and its custom model names')."""
        return super().client_job_id(tag, fingerprint, generation)

    # -- jobs --------------------------------------------------------------------------------------------

    def _job(self) -> Callable[[httpx.Response], FineTuningJob]:
        return _json(FineTuningJob, job_from_bedrock)

    def job_call(self, method: str, job_id: str, action: str | None = None) -> Call[FineTuningJob]:
        """``GetModelCustomizationJob`` (by ARN or name), or ``StopModelCustomizationJob`` for ``cancel``."""
        if action in ("pause", "resume"):
            self.require(action, job_id=job_id)
        path = f"model-customization-jobs/{path_param('job_id', job_id)}"
        if action is None:
            return Call("GET", path, self._job())
        if action != "cancel":
            raise InvalidRequestError(f"action: Bedrock jobs take no {action!r}", field="action")

        def stopped(response: httpx.Response) -> FineTuningJob:
            # Stop answers nothing; a stop Bedrock accepted leaves the job Stopping.
            return FineTuningJob.model_validate({"id": job_id, "status": _S.CANCELLING.value})

        return Call("POST", f"{path}/stop", stopped)

    def _list_params(self, after: str | None, limit: int | None) -> dict[str, Any]:
        if limit is not None and not 1 <= limit <= 1000:
            raise InvalidRequestError(f"limit: Bedrock lists 1 to 1000 jobs a page, got {limit}", field="limit")
        return {"nextToken": after, "maxResults": limit, "sortBy": "CreationTime", "sortOrder": "Descending"}

    def list_jobs(
        self, after: str | None, limit: int | None, metadata: Mapping[str, str] | None
    ) -> Call[Page[FineTuningJob]]:
        """``ListModelCustomizationJobs``, newest first; Bedrock jobs carry no metadata to filter by."""
        if metadata:
            self.require("metadata_filter")
        parse = _json(Page[FineTuningJob], _page(job_from_bedrock, "modelCustomizationJobSummaries"))
        return Call("GET", "model-customization-jobs", parse, params=self._list_params(after, limit))

    def list_job_states(self, after: str | None, limit: int | None) -> Call[Page[JobState]]:
        """The job list as lean states (the triggerer's shared poller)."""
        parse = _json(Page[JobState], _page(job_from_bedrock, "modelCustomizationJobSummaries"))
        return Call("GET", "model-customization-jobs", parse, params=self._list_params(after, limit))

    def next_page(self, call: Call[Page[M]], page: Page[M]) -> Call[Page[M]] | None:
        """The next page: Bedrock's cursor is ``nextToken``."""
        token = page.last_id
        if not page.has_more or not token:
            return None
        return replace(call, params={**(call.params or {}), "nextToken": token})

    def job_url(self, job_id: str) -> str | None:
        """The job's page in the Bedrock console (only for AWS's own endpoints)."""
        host = urlsplit(self.settings.base_url).hostname or ""
        if not (host.endswith(".amazonaws.com") and self.region and job_id.startswith("arn:")):
            return None
        short = job_id.rsplit("/", 1)[-1]
        return (
            f"https://{self.region}.console.aws.amazon.com/bedrock/home?region={self.region}"
            f"#/custom-models/item?arn={job_id.replace(':', '%3A').replace('/', '%2F')}&tab=training&job={short}"
        )

    # -- what Bedrock has no API for ----------------------------------------------------------------------

    def chat_completion(self, body: Mapping[str, Any]) -> Call[dict[str, Any]]:
        """Refused here: a custom model answers through Bedrock Runtime's Converse (see the deployment operator)."""
        raise InvalidRequestError(
            "AWS Bedrock's control plane answers no chat completions: ask a deployed custom model through "
            "Bedrock Runtime's Converse (BedrockCustomModelDeploymentOperator returns the ARN to ask)",
            field="model",
        )

    # -- custom model deployments (on-demand inference) -------------------------------------------------

    def create_deployment(
        self, name: str, model_arn: str, *, description: str | None = None, tags: Mapping[str, str] | None = None
    ) -> Call[str]:
        """``CreateCustomModelDeployment``: answers the deployment's ARN; once-only by its name and token."""
        if not CUSTOM_MODEL_NAME.fullmatch(name) or len(name) > 63:
            raise InvalidRequestError(
                f"deployment_name: {name!r} is not 1 to 63 of a-z A-Z 0-9 _ -", field="deployment_name"
            )
        body: dict[str, Any] = {
            "modelDeploymentName": name,
            "modelArn": model_arn,
            "clientRequestToken": client_request_token(name),
        }
        if description:
            body["description"] = description
        if tags:
            try:
                check_tags(tags)
            except ValueError as err:
                raise InvalidRequestError(f"tags: {err}", field="tags") from None
            body["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        return Call(
            "POST",
            "model-customization/custom-model-deployments",
            lambda response: str(response.json()["customModelDeploymentArn"]),
            json=body,
            idempotent=False,
        )

    def get_deployment(self, identifier: str) -> Call[CustomModelDeployment]:
        """``GetCustomModelDeployment`` by ARN or name."""
        path = f"model-customization/custom-model-deployments/{path_param('deployment', identifier)}"
        return Call("GET", path, lambda response: CustomModelDeployment.model_validate(response.json()))

    def delete_deployment(self, identifier: str) -> Call[None]:
        """``DeleteCustomModelDeployment`` by ARN or name."""
        path = f"model-customization/custom-model-deployments/{path_param('deployment', identifier)}"
        return Call("DELETE", path, lambda response: None)


def bedrock_backend(settings: Any) -> BedrockBackend:
    """The Bedrock backend of a connection."""
    return BedrockBackend(settings)


def base_url_for(host_url: str | None, extra: Mapping[str, Any]) -> str:
    """Bedrock's control-plane endpoint: the host when given, else the region's (a connection must name one)."""
    if host_url:
        return host_url
    region = str(extra["region_name"]).strip() if extra.get("region_name") else None
    if not region:
        raise InvalidRequestError(
            "region_name: a Bedrock connection without a host must name its AWS region (e.g. us-east-1)",
            field="region_name",
        )
    return f"https://bedrock.{region}.amazonaws.com"
