"""Together AI's own fine-tuning API (``https://api.together.ai/v1``), translated, never approximated.

Together is not OpenAI-compatible for fine-tuning; the installed ``together`` SDK (generated from Together's
OpenAPI document) is the reference for every route, field and status used here:

* jobs are ``/fine-tunes``: create, retrieve, list, ``/{id}/cancel``, ``/{id}/events``, ``/{id}/checkpoints``;
  before a create, ``/fine-tunes/estimate-price`` says what the job will cost and whether the account may
  proceed (:meth:`TogetherBackend.price_call`);
* a file upload is three requests: ``POST /files`` (form fields ``purpose``, ``file_name``, ``file_type``,
  ``checksum``; no content) answered ``302`` with ``Location`` (where to ``PUT`` the content) and
  ``X-Together-File-Id``; the ``PUT`` of the content to that address (the API key is never sent there); and
  ``POST /files/{id}/preprocess``, the service's check of the file, whose verdict is read before the file is
  used (:meth:`TogetherBackend.file_flow` sends the three, each through the request core);
* statuses ``pending``, ``queued``, ``running``, ``compressing``, ``uploading``, ``cancel_requested``,
  ``cancelled``, ``error``, ``user_error``, ``completed`` (:data:`TOGETHER_STATUSES`);
* a job's ``model_output_name`` is the canonical ``fine_tuned_model``; its ``total_price`` (nano-dollars) is the
  canonical ``total_price`` in US dollars (the figure as reported kept as ``together_total_price``);
  ``early_stopped``, ``early_stopping_best_step`` and ``early_stopping_best_metric`` are kept as the job reports
  them;
* jobs carry no metadata and the client cannot choose their id: a create is made once-only by the intent
  record and a search of recent jobs by the request's own fields (``once_only = "intent"``).

OpenAI's ``learning_rate_multiplier`` is refused (Together takes an absolute learning rate, in the service's
own options); Together's own options (:data:`OPTION_FIELDS`: LoRA or full training, learning rate,
checkpoints, evaluations, continuing from a checkpoint, early stopping...) are given as ``service_options``.
A job continued from a checkpoint is asked for by its ``from_checkpoint`` alone, as the SDK asks for it (a
model or a checkpoint, not both); the job reports the model the checkpoint was trained from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Mapping
from datetime import datetime
from typing import IO, Any, ClassVar, Literal, cast
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from airflow_provider_finetune.backends.base import Call, Capabilities, Limits, json_answer, model
from airflow_provider_finetune.backends.openai import OpenAIFiles
from airflow_provider_finetune.core.client import path_param
from airflow_provider_finetune.core.flows import Flow, Transfer, raised
from airflow_provider_finetune.core.statuses import FineTuningJobStatus, canonical
from airflow_provider_finetune.exceptions import FineTuningAPIError, FineTuningError, InvalidRequestError
from airflow_provider_finetune.models import (
    CreateFineTuningJobRequest,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    Page,
)
from airflow_provider_finetune.rules.budget import EpochRule
from airflow_provider_finetune.rules.once import ECHOED_REQUEST
from airflow_provider_finetune.training_data.together import RULES as TOGETHER_RULES

__all__ = [
    "DEFAULT_BASE_URL",
    "OPTION_FIELDS",
    "TOGETHER_STATUSES",
    "PriceEstimate",
    "PriceRefusedError",
    "TogetherAuth",
    "TogetherBackend",
    "TogetherOptions",
    "price_estimate",
]

#: Together's API, as the SDK names it.
DEFAULT_BASE_URL = "https://api.together.ai/v1"
#: Together's job prices (``total_price``) are in billionths of a US dollar.
NANODOLLARS = 1_000_000_000
#: Files the three-request upload takes; larger ones go in parts (:mod:`.together_multipart`), as the SDK sends them.
MAX_SINGLE_UPLOAD = 5 * 1024**3

_S = FineTuningJobStatus
#: Together's job statuses, each onto its canonical one.
TOGETHER_STATUSES: dict[str, FineTuningJobStatus] = {
    "pending": _S.QUEUED,
    "queued": _S.QUEUED,
    "running": _S.RUNNING,
    # The model is trained; the job is still making it available: not ended, not yet succeeded.
    "compressing": _S.RUNNING,
    "uploading": _S.RUNNING,
    "cancel_requested": _S.CANCELLING,
    "cancelled": _S.CANCELLED,
    "error": _S.FAILED,
    "user_error": _S.FAILED,
    "completed": _S.SUCCEEDED,
}

#: Fields Together's request type (the SDK's ``FinetuneRequest``) requires, with the SDK's defaults.
SDK_DEFAULTS: dict[str, Any] = {
    "n_epochs": 1,
    "learning_rate": 0.00001,
    "warmup_ratio": 0.0,
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
}

#: The create fields a Together job reports back, compared with the request's when a lost create is looked for.
_ECHOED = (
    "n_epochs",
    "batch_size",
    "learning_rate",
    "n_checkpoints",
    "n_evals",
    "suffix",
    "from_checkpoint",
    "training_type",
    "training_method",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "random_seed",
)

#: Together's ``training_method`` for each canonical method.
_METHODS = {"supervised": "sft", "dpo": "dpo"}


class TogetherOptions(BaseModel):
    """Together's own create fields (``service_options``), validated before any request.

    Field names and types are those of the SDK's ``FinetuneRequest``; see Together's documentation for each.
    ``training_type`` is ``"lora"`` (the default) or ``"full"``; ``lora_*`` apply to LoRA only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    training_type: Literal["lora", "full"] = "lora"
    lora_r: StrictInt | None = Field(default=None, ge=1)
    lora_alpha: StrictInt | None = Field(default=None, ge=1)
    lora_dropout: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    lora_trainable_modules: StrictStr | None = None
    learning_rate: StrictFloat | StrictInt | None = Field(default=None, gt=0)
    n_checkpoints: StrictInt | None = Field(default=None, ge=1)
    n_evals: StrictInt | None = Field(default=None, ge=0)
    max_seq_length: StrictInt | None = Field(default=None, ge=1)
    packing: StrictBool | None = None
    warmup_ratio: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    max_grad_norm: StrictFloat | StrictInt | None = Field(default=None, ge=0)
    weight_decay: StrictFloat | StrictInt | None = Field(default=None, ge=0)
    gradient_accumulation_steps: StrictInt | None = Field(default=None, ge=1)
    train_on_inputs: StrictBool | Literal["auto"] | None = None
    from_checkpoint: StrictStr | None = Field(default=None, min_length=1)
    early_stopping_enabled: StrictBool | None = None
    early_stopping_patience: StrictInt | None = Field(default=None, ge=1)
    early_stopping_min_delta: StrictFloat | StrictInt | None = Field(default=None, ge=0)
    early_stopping_warmup_evals: StrictInt | None = Field(default=None, ge=0)
    dpo_normalize_logratios_by_length: StrictBool | None = None
    rpo_alpha: StrictFloat | StrictInt | None = None
    simpo_gamma: StrictFloat | StrictInt | None = None


#: The names of Together's own options.
OPTION_FIELDS = tuple(TogetherOptions.model_fields)


def together_options(options: Mapping[str, Any] | TogetherOptions | None) -> TogetherOptions:
    """Together's own create fields (``service_options``), validated; a bad one is refused, by name.

    :raises InvalidRequestError: naming the option.
    """
    if isinstance(options, TogetherOptions):
        return options
    try:
        return TogetherOptions.model_validate(dict(options or {}))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "service_options"
        raise InvalidRequestError(
            f"Invalid fine-tuning request: service_options.{where}: {first['msg']} "
            f"(Together's options: {', '.join(OPTION_FIELDS)})",
            field=f"service_options.{where}",
        ) from None


class PriceEstimate(BaseModel):
    """Together's answer to ``POST /fine-tunes/estimate-price``, read as Together's SDK reads it.

    Every field may be missing: Together's published description of the answer has no ``estimation_available``
    (the SDK's types have it, with ``unavailable_reason`` when it is ``false``), and none of its fields is
    required. An estimate is available unless the answer says ``estimation_available: false`` (the SDK's rule).
    """

    model_config = ConfigDict(extra="allow")

    estimation_available: bool | None = None
    allowed_to_proceed: bool | None = None
    estimated_total_price: float | None = None
    estimated_train_token_count: float | None = None
    estimated_eval_token_count: float | None = None
    user_limit: float | None = None
    unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        """Whether Together estimated the job (it did unless it says it could not)."""
        return self.estimation_available is not False

    def to_xcom(self) -> dict[str, Any]:
        """The estimate as JSON primitives, for XCom."""
        return self.model_dump(mode="json", exclude_none=True)


def price_estimate(response: httpx.Response) -> PriceEstimate:
    """Together's estimate, whatever it leaves out.

    A field of the wrong type is read as missing, as is an answer that is not an object: the price check then
    says what it lacks (:meth:`TogetherBackend.refuse_if_not_allowed`).
    """
    data = response.json() if response.content else {}
    if not isinstance(data, dict):
        data = {}
    try:
        return PriceEstimate.model_validate(data)
    except ValidationError as err:
        unreadable = {str(error["loc"][0]) for error in err.errors() if error["loc"]}
        return PriceEstimate.model_validate({k: v for k, v in data.items() if k not in unreadable})


class PriceRefusedError(InvalidRequestError):
    """The price check refused a job before its create.

    Together says the account may not proceed with it (the message gives the price), or its estimate says neither
    what the job costs nor whether the account may pay.
    """


def _timestamp(value: Any) -> int | None:
    """Together's ISO 8601 times as Unix seconds (a number is kept)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def job_from(data: Any) -> Any:
    """Together's job onto the canonical one; Together's own fields ride along as they are."""
    if not isinstance(data, dict):
        return data
    status = data.get("status")
    ours = canonical(TOGETHER_STATUSES, status)
    ended = ours in ("succeeded", "failed", "cancelled")
    job: dict[str, Any] = {
        **{k: v for k, v in data.items() if k not in ("events", "created_at", "updated_at", "status")},
        "object": "fine_tuning.job",
        "id": data.get("id"),
        "status": ours,
        "together_status": status,
        "model": data.get("model"),
        "created_at": _timestamp(data.get("created_at")),
        "updated_at": data.get("updated_at"),
        "finished_at": _timestamp(data.get("updated_at")) if ended else None,
        "fine_tuned_model": data.get("model_output_name"),
        "training_file": data.get("training_file"),
        "validation_file": data.get("validation_file") or None,
        "trained_tokens": data.get("token_count") if ours == "succeeded" else None,
        "hyperparameters": {
            k: v for k, v in (("n_epochs", data.get("n_epochs")), ("batch_size", data.get("batch_size"))) if v
        }
        or None,
        "method": _method_from(data.get("training_method")),
        "result_files": [],
        "integrations": [],
        "metadata": None,
    }
    if isinstance(job["hyperparameters"], dict) and job["hyperparameters"].get("batch_size") == "max":
        job["hyperparameters"] = {**job["hyperparameters"], "batch_size": None}
    price = data.get("total_price")
    if isinstance(price, int | float) and not isinstance(price, bool):
        # Together reports nano-dollars (the SDK's finetune_price_to_dollars); a canonical cost is in US dollars,
        # as budgets compare it with max_cost.
        job["together_total_price"] = price
        job["total_price"] = price / NANODOLLARS
    job[ECHOED_REQUEST] = {name: data[name] for name in _ECHOED if data.get(name) is not None}
    if canonical == "failed":
        job["error"] = {"code": status, "message": _last_error(data.get("events")), "param": None}
    return job


def _method_from(block: Any) -> Any:
    if not isinstance(block, dict):
        return None
    kind = {"sft": "supervised", "dpo": "dpo"}.get(str(block.get("method")))
    return {"type": kind} if kind else None


def _last_error(events: Any) -> str:
    for event in reversed(events or []):
        if isinstance(event, dict) and str(event.get("level", "")).lower() == "error":
            return str(event.get("message") or "")
    return "the job ended with an error"


def _event_id(job_id: str, event: Mapping[str, Any]) -> str:
    given = event.get("hash")
    if isinstance(given, str) and given:
        return f"{job_id}:{given}"
    blob = f"{event.get('created_at')}|{event.get('type')}|{event.get('message')}"
    return f"{job_id}:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _events_page(job_id: str, after: str | None, limit: int | None) -> Any:
    """Together's whole event list (oldest first, no cursor) as a canonical page: newest first, cut at ``after``."""

    def translate(data: Any) -> Any:
        items = data.get("data") if isinstance(data, dict) else None
        events = []
        for item in reversed(items or []):
            if not isinstance(item, dict):
                continue
            level = str(item.get("level") or "info").lower()
            events.append(
                {
                    **item,
                    "object": "fine_tuning.job.event",
                    "id": _event_id(job_id, item),
                    "created_at": _timestamp(item.get("created_at")),
                    "level": {"warning": "warn", "": "info"}.get(level, level),
                    "message": item.get("message") or "",
                    "type": "message",
                    "together_type": item.get("type"),
                }
            )
        if after is not None:
            ids = [event["id"] for event in events]
            events = events[ids.index(after) + 1 :] if after in ids else []
        more = limit is not None and len(events) > limit
        if limit is not None:
            events = events[:limit]
        return {"object": "list", "data": events, "has_more": more}

    return translate


def _checkpoints_page(job_id: str) -> Any:
    """Together's checkpoints: each named the way ``from_checkpoint`` takes it, ``{job_id}:{step}``."""

    def translate(data: Any) -> Any:
        items = data.get("data") if isinstance(data, dict) else None
        checkpoints = [
            {
                **item,
                "object": "fine_tuning.job.checkpoint",
                "id": f"{job_id}:{item.get('step')}",
                "created_at": _timestamp(item.get("created_at")),
                "fine_tuned_model_checkpoint": f"{job_id}:{item.get('step')}",
                "fine_tuning_job_id": job_id,
                "step_number": item.get("step"),
                "metrics": {},
            }
            for item in items or []
            if isinstance(item, dict)
        ]
        checkpoints.sort(key=lambda item: item["step_number"] or 0, reverse=True)
        return {"object": "list", "data": checkpoints, "has_more": False}

    return translate


def file_from(data: Any) -> Any:
    """Together's file (``FileType``, ``Processed``) onto the canonical file; the service's check is read."""
    if not isinstance(data, dict):
        return data
    report = data.get("validation_report")
    processing = data.get("processing_status")
    status = "processed" if data.get("Processed") else "uploaded"
    details = None
    if processing in ("FAILED", "INVALID_FORMAT") or (isinstance(report, dict) and report.get("valid") is False):
        status = "error"
        details = (report or {}).get("error") if isinstance(report, dict) else None
        details = details or f"processing status {processing}"
    return {**data, "object": "file", "status": status, "status_details": details}


def _file_type(name: str) -> str:
    """``jsonl``, ``parquet`` or ``csv``, by the name's extension; anything else is refused, by name."""
    kind = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if kind not in ("jsonl", "parquet", "csv"):
        raise InvalidRequestError(f"file: Together takes .jsonl, .parquet or .csv files, not {name!r}", field="file")
    return kind


def _object(response: httpx.Response) -> dict[str, Any]:
    data = response.json() if response.content else {}
    return data if isinstance(data, dict) else {"answer": data}


def completed_file(response: httpx.Response) -> FileObject:
    """The file a multipart upload made (its answer's ``file``, or the answer itself, as the SDK reads it)."""
    data = response.json()
    file = data.get("file", data) if isinstance(data, dict) else data
    return _refuse_invalid(FileObject.model_validate(file_from(file)))


def checked_file(response: httpx.Response) -> FileObject:
    """The file the service checked after the upload; a file it found invalid is refused here, by name."""
    return _refuse_invalid(FileObject.model_validate(file_from(response.json())))


def _refuse_invalid(file: FileObject) -> FileObject:
    if file.status == "error":
        raise InvalidRequestError(
            f"training file: Together's check of {file.filename or file.id} ({file.id}) failed: {file.status_details}",
            field="file",
        )
    return file


class TogetherAuth(httpx.Auth):
    """Together's Bearer key, sent to the API's own origin only (never to the address an upload's content goes to).

    :param key: the API key.
    :param base_url: the API's base URL (its origin receives the key).
    """

    def __init__(self, key: str, base_url: str) -> None:
        self._key = key
        self._origin = _origin(base_url)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._origin!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Authenticate a request to the API's origin."""
        if self._key and _origin(str(request.url)) == self._origin:
            request.headers["Authorization"] = f"Bearer {self._key}"
        yield request


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _redirect_or_checked(response: httpx.Response) -> FileObject | httpx.Response:
    """``POST /files``'s answer: the redirect to where the content goes, or (answered at once) the checked file."""
    return response if response.is_redirect else checked_file(response)


class TogetherBackend(OpenAIFiles):
    """Together AI's fine-tuning API (see the module's description)."""

    service: ClassVar[str] = "together"
    label: ClassVar[str] = "Together AI"
    once_only = "intent"
    multipart_threshold = MAX_SINGLE_UPLOAD
    max_file_size = int(50.1 * 2**30)  # the SDK's bound

    training_data_rules = TOGETHER_RULES  # registered by its module on import
    capabilities = Capabilities(
        chat_completions=True, events=True, checkpoints=True, cancel=True, files=True, suffix=True
    )
    limits = Limits(
        max_suffix_length=40,
        max_metadata_keys=0,
        hyperparameters_auto=False,
        methods=frozenset({"supervised", "dpo"}),
    )

    # -- how requests authenticate and read ----------------------------------------------------------------

    def auth(self) -> httpx.Auth | None:
        """Bearer key to Together's origin only; uploads through their redirect and check."""
        return TogetherAuth(self.settings.api_key, self.settings.base_url)

    def job_url(self, job_id: str) -> str | None:
        """None: Together's published API names no page for a job (no link that may be broken)."""
        return None

    # -- translation ---------------------------------------------------------------------------------------

    def job_from(self, data: Any) -> Any:
        """Together's job onto the canonical one."""
        return job_from(data)

    def job_body(
        self, request: CreateFineTuningJobRequest, options: Mapping[str, Any] | TogetherOptions | None = None
    ) -> dict[str, Any]:
        """Together's create body (``FinetuneRequest``) for a canonical request and the service's options.

        :param request: the canonical request.
        :param options: Together's own create fields (:class:`TogetherOptions`), refused by name when bad.

        :raises InvalidRequestError: for what Together cannot be asked (metadata, integrations, a learning-rate
            multiplier, a seed out of range), naming the field.
        """
        self._check_request(request)
        if request.integrations:
            raise InvalidRequestError(
                "Invalid fine-tuning request: integrations: Together takes Weights & Biases settings of its own "
                "(wandb_*), which carry a secret and are not sent by this provider",
                field="integrations",
            )
        own = together_options(options)
        method = request.method.type if request.method is not None else "supervised"
        block = getattr(request.method, method, None) if request.method is not None else None
        hyper = block.hyperparameters.to_body() if block is not None and block.hyperparameters else {}
        if hyper.get("learning_rate_multiplier") not in (None, "auto"):
            raise InvalidRequestError(
                "Invalid fine-tuning request: method.hyperparameters.learning_rate_multiplier: Together takes an "
                "absolute learning rate, not a multiplier; give service_options.learning_rate",
                field="learning_rate_multiplier",
            )
        unknown = sorted(set(hyper) - {"n_epochs", "batch_size", "learning_rate_multiplier", "beta"})
        if unknown:
            raise InvalidRequestError(
                f"Invalid fine-tuning request: method.hyperparameters.{unknown[0]}: Together has no such setting",
                field=unknown[0],
            )
        body: dict[str, Any] = {"training_file": request.training_file}
        if own.from_checkpoint is None:
            # A job from a checkpoint starts from the checkpoint's model: Together's SDK sends the checkpoint
            # alone ("either a model or a checkpoint, not both"), and the job reports the model it came from.
            body["model"] = request.model
        if request.validation_file:
            body["validation_file"] = request.validation_file
        for name in ("n_epochs", "batch_size"):
            if hyper.get(name) not in (None, "auto"):  # "auto": the service's own default, by leaving it out
                body[name] = hyper[name]
        # The request type requires these; where the request gives none, the values the SDK sends by default.
        for name, default in SDK_DEFAULTS.items():
            value = getattr(own, name, None)
            body.setdefault(name, default if value is None else value)
        if request.suffix is not None:
            body["suffix"] = request.suffix
        if request.seed is not None:
            body["random_seed"] = request.seed
        body["training_method"] = self._training_method(method, hyper, own)
        body["training_type"] = self._training_type(own)
        for name in OPTION_FIELDS:
            value = getattr(own, name)
            if (
                value is None
                or name.startswith(("lora_", "dpo_", "rpo_", "simpo_"))
                or name
                in (
                    "training_type",
                    "train_on_inputs",
                )
            ):
                continue
            body[name] = value
        if own.early_stopping_enabled and not request.validation_file:
            raise InvalidRequestError(
                "Invalid fine-tuning request: service_options.early_stopping_enabled: Together stops early on the "
                "validation loss, so a validation_file is needed",
                field="service_options.early_stopping_enabled",
            )
        return body

    def _training_method(self, method: str, hyper: Mapping[str, Any], options: TogetherOptions) -> dict[str, Any]:
        if method == "dpo":
            if options.train_on_inputs is not None:
                raise InvalidRequestError(
                    "Invalid fine-tuning request: service_options.train_on_inputs: a setting of supervised "
                    "training (Together's sft), not of DPO",
                    field="service_options.train_on_inputs",
                )
            block: dict[str, Any] = {"method": "dpo"}
            if hyper.get("beta") not in (None, "auto"):
                block["dpo_beta"] = hyper["beta"]
            for name in ("dpo_normalize_logratios_by_length", "rpo_alpha", "simpo_gamma"):
                if getattr(options, name) is not None:
                    block[name] = getattr(options, name)
            return block
        if options.rpo_alpha is not None or options.simpo_gamma is not None:
            raise InvalidRequestError(
                "Invalid fine-tuning request: service_options: rpo_alpha and simpo_gamma are DPO settings",
                field="service_options",
            )
        # False must reach the service as False: "auto" is only what the SDK sends where nothing was asked.
        inputs = "auto" if options.train_on_inputs is None else options.train_on_inputs
        return {"method": _METHODS["supervised"], "train_on_inputs": inputs}

    def _training_type(self, options: TogetherOptions) -> dict[str, Any]:
        lora = {
            name: getattr(options, name)
            for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_trainable_modules")
            if getattr(options, name) is not None
        }
        if options.training_type == "full":
            if lora:
                raise InvalidRequestError(
                    f"Invalid fine-tuning request: service_options.{next(iter(lora))}: a LoRA setting, but "
                    "training_type is 'full'",
                    field=f"service_options.{next(iter(lora))}",
                )
            return {"type": "Full"}
        # The API requires the rank and alpha of a LoRA job; the SDK fills them from the model's limits. They are
        # asked for here instead of guessed: the request must say what it trains.
        for name in ("lora_r", "lora_alpha"):
            if name not in lora:
                raise InvalidRequestError(
                    f"Invalid fine-tuning request: service_options.{name}: a LoRA job (the default training_type) "
                    "must give lora_r and lora_alpha",
                    field=f"service_options.{name}",
                )
        return {"type": "Lora", **lora}

    def epoch_rule(self, request: CreateFineTuningJobRequest, body: Mapping[str, Any]) -> EpochRule:
        """The body's ``n_epochs``: always sent (the SDK's default, 1, where the request leaves it out)."""
        return EpochRule(int(body["n_epochs"]), None, "n_epochs")

    # -- the price before paying ---------------------------------------------------------------------------

    def price_call(self, body: Mapping[str, Any]) -> Call[PriceEstimate]:
        """``POST /fine-tunes/estimate-price`` for a create body :meth:`job_body` made."""
        estimate: dict[str, Any] = {"training_file": body["training_file"]}
        for name in ("from_checkpoint", "model", "n_epochs", "n_evals", "validation_file"):
            if body.get(name) is not None:
                estimate[name] = body[name]
        if "from_checkpoint" in estimate:
            # The SDK's create asks the price of a job from a checkpoint with an empty model: what the service
            # is known to take (its description requires neither).
            estimate.setdefault("model", "")
        method = body.get("training_method") or {"method": "sft", "train_on_inputs": "auto"}
        estimate["training_method"] = method
        training_type = dict(body.get("training_type") or {})
        estimate["training_type"] = training_type
        return Call("POST", "fine-tunes/estimate-price", price_estimate, json=estimate)

    def refuse_if_not_allowed(self, estimate: PriceEstimate) -> None:
        """Fail before the create when Together says the account may not proceed, with the estimated price.

        An estimate Together says it could not make (``estimation_available: false``: a multimodal dataset, a
        file not checked yet...) lets the job proceed, as the SDK does; so does an available one that gives a
        price or says the account may proceed. One that gives neither cannot price the job: refused.

        :raises PriceRefusedError: naming the estimated price and the account's limit, or what the estimate lacks.
        """
        if not estimate.available:
            return
        if estimate.allowed_to_proceed is False:
            price = "unknown" if estimate.estimated_total_price is None else f"${estimate.estimated_total_price:.2f}"
            limit = "" if estimate.user_limit is None else f" (the account's limit is ${estimate.user_limit:.2f})"
            raise PriceRefusedError(
                f"Together says this account may not proceed with the fine-tuning job: its estimated price is "
                f"{price}{limit}; no job was created",
                field="training_file",
            )
        if estimate.estimated_total_price is None and estimate.allowed_to_proceed is None:
            raise PriceRefusedError(
                "Together's price estimate for the fine-tuning job gave no estimated_total_price and no "
                "allowed_to_proceed: the job's price cannot be known, nor whether the account may pay it; "
                "no job was created",
                field="estimated_total_price",
            )

    def price_flow(
        self, request: CreateFineTuningJobRequest, options: Mapping[str, Any] | None = None
    ) -> Flow[PriceEstimate]:
        """Ask the price of the job ``request`` and Together's ``options`` make; refuse it there.

        Refused when the account may not proceed.

        :raises PriceRefusedError: before any create, with the estimated price.
        """
        estimate = yield self.price_call(self.job_body(request, options))
        if isinstance(estimate, FineTuningError):
            raise estimate
        self.refuse_if_not_allowed(estimate)
        return cast(PriceEstimate, estimate)

    # -- jobs ----------------------------------------------------------------------------------------------

    def chat_completion(self, body: Mapping[str, Any]) -> Call[dict[str, Any]]:
        """``POST /chat/completions``: Together serves its models in OpenAI's shape."""
        return Call("POST", "chat/completions", json_answer, json=dict(body))

    def create_prepared_job(self, body: Mapping[str, Any], *, job_id: str | None = None) -> Call[FineTuningJob]:
        """``POST /fine-tunes``: not re-sent when its outcome is unknown. Together takes no client-chosen id."""
        if job_id is not None:
            self.require("client_job_id")
        return Call("POST", "fine-tunes", self._job(), json=dict(body), idempotent=False)

    def list_jobs(
        self, after: str | None, limit: int | None, metadata: Mapping[str, str] | None
    ) -> Call[Page[FineTuningJob]]:
        """``GET /fine-tunes``: every job, newest first (the list takes no cursor, limit or filter)."""
        if metadata:
            self.require("metadata_filter")
        if after is not None:
            raise InvalidRequestError("after: Together's job list does not page", field="after")
        return Call("GET", "fine-tunes", model(Page[FineTuningJob], self._jobs_page))

    def _jobs_page(self, data: Any) -> Any:
        items = data.get("data") if isinstance(data, dict) else None
        jobs = [job_from(item) for item in items or []]
        jobs.sort(key=lambda job: job.get("created_at") or 0, reverse=True)
        return {"object": "list", "data": jobs, "has_more": False}

    def list_job_states(self, after: str | None, limit: int | None) -> Any:
        """The job list read as lean states."""
        from airflow_provider_finetune.models import JobState

        if after is not None:
            raise InvalidRequestError("after: Together's job list does not page", field="after")
        return Call("GET", "fine-tunes", model(Page[JobState], self._jobs_page))

    def job_call(self, method: str, job_id: str, action: str | None = None) -> Call[FineTuningJob]:
        """``GET /fine-tunes/{id}`` or ``POST /fine-tunes/{id}/cancel``."""
        if action in ("pause", "resume"):
            self.require(action, job_id=job_id)
        path = f"fine-tunes/{path_param('job_id', job_id)}" + (f"/{action}" if action else "")
        return Call(method, path, self._job())

    def events(self, job_id: str, after: str | None, limit: int | None) -> Call[Page[FineTuningJobEvent]]:
        """``GET /fine-tunes/{id}/events``: the whole log, read newest first and cut at ``after`` here."""
        path = f"fine-tunes/{path_param('job_id', job_id)}/events"
        return Call("GET", path, model(Page[FineTuningJobEvent], _events_page(job_id, after, limit)))

    def checkpoints(self, job_id: str, after: str | None, limit: int | None) -> Call[Page[FineTuningJobCheckpoint]]:
        """``GET /fine-tunes/{id}/checkpoints``, newest first."""
        if after is not None:
            raise InvalidRequestError("after: Together's checkpoint list does not page", field="after")
        path = f"fine-tunes/{path_param('job_id', job_id)}/checkpoints"
        return Call("GET", path, model(Page[FineTuningJobCheckpoint], _checkpoints_page(job_id)))

    def next_page(self, call: Any, page: Any) -> Any:
        """Together's lists come whole: there is never a next page."""
        return None

    # -- files ---------------------------------------------------------------------------------------------

    # -- files larger than one upload takes: Together's multipart upload (:mod:`.together_multipart`) ----------

    def multipart_initiate(self, body: Mapping[str, Any]) -> Call[dict[str, Any]]:
        """``POST /files/multipart/initiate``: the upload's ids and each part's presigned URL."""
        return Call("POST", "files/multipart/initiate", _object, json=dict(body), idempotent=False)

    def multipart_complete(self, body: Mapping[str, Any]) -> Call[FileObject]:
        """``POST /files/multipart/complete``: the file the parts make (refused when Together's check failed)."""
        return Call("POST", "files/multipart/complete", completed_file, json=dict(body), idempotent=False)

    def multipart_abort(self, body: Mapping[str, Any]) -> Call[dict[str, Any]]:
        """``POST /files/multipart/abort``: the service discards the parts of an upload that failed."""
        return Call("POST", "files/multipart/abort", _object, json=dict(body))

    def multipart_flow(self, stream: IO[bytes], name: str, size: int, purpose: str) -> Flow[FileObject]:
        """Upload a file too large for one request, in parts (:mod:`.together_multipart`)."""
        from airflow_provider_finetune.backends.together_multipart import multipart_flow

        return multipart_flow(self, stream, name, _file_type(name), size, purpose)

    def get_file(self, file_id: str) -> Call[FileObject]:
        """``GET /files/{id}``."""
        return self.file_call("GET", file_id, model(FileObject, file_from))

    def list_files(self, purpose: str | None, after: str | None, limit: int | None) -> Call[Page[FileObject]]:
        """``GET /files``: every file (no cursor); ``purpose`` is matched here, newest first."""
        if after is not None:
            raise InvalidRequestError("after: Together's file list does not page", field="after")

        def translate(data: Any) -> Any:
            items = [file_from(item) for item in (data.get("data") if isinstance(data, dict) else None) or []]
            kept = [item for item in items if purpose is None or item.get("purpose") == purpose]
            kept.sort(key=lambda item: item.get("created_at") or 0, reverse=True)
            return {"object": "list", "data": kept, "has_more": False}

        return Call("GET", "files", model(Page[FileObject], translate))

    def create_file(self, stream: IO[bytes], name: str, purpose: str) -> Call[Any]:
        """``POST /files`` (form fields, no content): answered by the redirect to where the content goes.

        The first of the three requests of an upload (:meth:`file_flow`).
        """
        kind = _file_type(name)
        content = stream.read()
        if len(content) > MAX_SINGLE_UPLOAD:
            raise InvalidRequestError(
                f"file: {name} is {len(content)} bytes; one upload takes at most {MAX_SINGLE_UPLOAD} "
                "(FineTuningHook.upload_file sends larger files in parts)",
                field="file",
            )
        form = {
            "purpose": purpose,
            "file_name": name,
            "file_type": kind,
            "checksum": hashlib.sha256(content).hexdigest(),
        }
        fields = {key: (None, value) for key, value in form.items()}
        return Call(
            "POST", "files", _redirect_or_checked, multipart=lambda: ({}, fields), idempotent=False, redirect=True
        )

    def preprocess_file(self, file_id: str) -> Call[FileObject]:
        """``POST /files/{id}/preprocess``: the service's check of an uploaded file (refused here when it failed)."""
        return Call("POST", f"files/{path_param('file_id', file_id)}/preprocess", checked_file, idempotent=False)

    def file_flow(self, stream: IO[bytes], name: str, purpose: str) -> Flow[FileObject]:
        """Upload a file in three requests: ``POST /files``, the ``PUT`` of its content, the service's check.

        ``POST /files`` answers a redirect (``Location``, and ``X-Together-File-Id``); the content is ``PUT``
        there without the key (a presigned address elsewhere; its further redirects are followed, as the SDK
        does); ``POST /files/{id}/preprocess`` answers the file as the service checked it. The create and the
        check are never sent again while their outcome is unknown; the ``PUT`` to the same address is.
        """
        start = stream.tell()
        redirect = raised((yield self.create_file(stream, name, purpose)))
        if not isinstance(redirect, httpx.Response):
            return redirect  # the service answered the file at once
        file_id = redirect.headers.get("x-together-file-id")
        if not file_id:
            raise FineTuningAPIError(
                redirect.status_code, f"Together answered the upload of {name} with a redirect but no file id"
            )
        target = urljoin(str(redirect.request.url), redirect.headers["location"])
        stream.seek(start)
        content = stream.read()
        put = lambda client: client.build_request("PUT", target, content=content)  # noqa: E731
        raised((yield Transfer(put, _sent, self.settings.timeouts(), follow_redirects=True)))
        return cast(FileObject, raised((yield self.preprocess_file(file_id))))


def _sent(response: httpx.Response) -> None:
    """A ``PUT`` of content answers nothing the upload needs."""
