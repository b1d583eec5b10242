"""Together AI's dialect of fine-tuning, served under ``/together/v1`` over the same trainer, files and jobs.

Give the ``together`` SDK (or a ``finetune`` connection with ``service: together``) the base URL
``{emulator}/together/v1``. The routes are those of the SDK (generated from Together's OpenAPI document):

* ``POST /files``: a multipart form of ``purpose``, ``file_name``, ``file_type`` (``jsonl``, ``parquet``,
  ``csv``) and ``checksum`` (SHA-256 of the content), no content; answered ``302`` with ``Location`` (a
  presigned address under ``/together/storage/``, which takes the content by ``PUT`` without the API key and
  checks it against the checksum) and ``X-Together-File-Id``. ``POST /files/{id}/preprocess`` is the check of
  the uploaded file: it answers the file with ``processing_status`` and a ``validation_report``. ``GET /files``
  lists the files whose content arrived; ``GET``/``DELETE /files/{id}``, ``GET /files/{id}/content``.
* ``GET /fine-tunes/models/limits?model_name=`` and ``POST /fine-tunes/estimate-price`` (the calls the SDK
  makes before a create); both refuse a model Together does not fine-tune with ``404``. The estimate says
  ``allowed_to_proceed: false`` once the account is told so with ``POST /_emulator/together/account``
  ``{"allowed_to_proceed": false, "user_limit": 1.0}``.
* ``POST /fine-tunes`` (the SDK's ``FinetuneRequest``; unknown fields are refused), ``GET /fine-tunes``
  (every job, oldest first, no paging), ``GET /fine-tunes/{id}``, ``POST /fine-tunes/{id}/cancel`` (answered
  ``cancel_requested``; ``cancelled`` from then on), ``GET /fine-tunes/{id}/events`` (oldest first),
  ``GET /fine-tunes/{id}/checkpoints``.
* ``POST /chat/completions`` (Together's inference, OpenAI's shape): a base model of :data:`MODELS` or a completed
  job's ``model_output_name`` answers.

Statuses: ``pending`` (validating the files), ``queued``, ``running``, then ``compressing`` and ``uploading``
(as long as the files' validation took, each) before ``completed``; ``error`` for a job whose files or training
failed; ``cancelled``. A completed job reports ``total_price``, the price its estimate gives in nano-dollars (an
integer, as Together declares it; the SDK divides it by 10^9), and, with early stopping on, ``early_stopped`` and
the step and validation loss of its best checkpoint. The trainer is OpenAI's simulation: each Together base model
of :data:`MODELS` trains as ``gpt-4o-mini``; conversational (``messages``) and preference files train.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airflow_provider_finetune.emulator.errors import APIError, conflict, invalid_request, not_found
from airflow_provider_finetune.emulator.store import token
from airflow_provider_finetune.training_data import TrainingDataError, validate_file
from airflow_provider_finetune.training_data.together import RULES as TOGETHER_RULES

__all__ = ["MODELS", "PREFIX", "PRICE_PER_MILLION", "together_routes"]

#: Where the dialect is served (the SDK's base URL is ``{emulator}/together/v1``).
PREFIX = "/together/v1"
#: Where uploaded content is ``PUT`` (presigned: no API key).
STORAGE = "/together/storage"
#: A multipart upload has at most this many parts, each but the last at least this large (S3's limits).
MULTIPART_MAX_PARTS = 250
MULTIPART_MIN_PART = 5 * 2**20
#: The base models the emulator fine-tunes in Together's dialect; each trains as this trainer model.
MODELS = (
    "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
    "meta-llama/Llama-3.2-3B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
)
_TRAINER_MODEL = "gpt-4o-mini-2024-07-18"
#: US dollars per million trained tokens, by training type.
PRICE_PER_MILLION = {"Lora": 0.48, "Full": 0.54}
#: Together's job prices (``total_price``) are integers, in billionths of a US dollar.
NANODOLLARS = 1_000_000_000
_LIMITS: dict[str, Any] = {
    "default_gradient_accumulation_steps": 1,
    "lora_training": {
        "default_rank": 8,
        "max_batch_size": 32,
        "max_batch_size_dpo": 16,
        "max_rank": 64,
        "min_batch_size": 8,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
    },
    "full_training": {"max_batch_size": 16, "max_batch_size_dpo": 8, "min_batch_size": 8},
    "max_learning_rate": 1.0,
    "max_num_checkpoints": 10,
    "max_num_epochs": 20,
    "max_num_evals": 100,
    "max_seq_length_dpo": 8192,
    "max_seq_length_sft": 8192,
    "merge_output_lora": True,
    "min_learning_rate": 0.0,
    "min_max_seq_length": 512,
    "supports_full_training": True,
    "supports_reasoning": False,
    "supports_tools": True,
    "supports_vision": False,
}
#: The fields of the SDK's ``FinetuneRequest`` (``together.lib.types.fine_tuning``).
CREATE_FIELDS = frozenset(
    {
        "training_file", "validation_file", "packing", "model", "n_epochs", "learning_rate", "lr_scheduler",
        "warmup_ratio", "max_grad_norm", "weight_decay", "n_checkpoints", "n_evals", "max_seq_length",
        "batch_size", "gradient_accumulation_steps", "suffix", "wandb_key", "wandb_base_url",
        "wandb_project_name", "wandb_name", "wandb_entity", "random_seed", "early_stopping_enabled",
        "early_stopping_patience", "early_stopping_min_delta", "early_stopping_warmup_evals", "training_type",
        "training_method", "from_checkpoint", "multimodal_params", "from_hf_model", "hf_model_revision",
        "hf_api_token", "hf_output_repo_name",
    }
)  # fmt: skip
_STATUS = {
    "validating_files": "pending",
    "queued": "queued",
    "running": "running",
    "succeeded": "completed",
    "failed": "error",
    "cancelled": "cancelled",
}

_Wrap = Callable[[str, Callable[[Request], Awaitable[Any]]], Callable[[Request], Awaitable[Response]]]


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _bad(message: str, param: str | None = None) -> APIError:
    return invalid_request(message, param=param)


#: Together's name (the SDK's ``DatasetFormat``) of each format the check finds.
_DATASET_FORMATS: Final = {
    "chat": "conversation",
    "prompt_completion": "instruction",
    "text": "general",
    "preference": "preference_openai",
}


class TogetherDialect:
    """Together's answers over the emulator's files and jobs; Together's own job fields kept beside the job.

    :param emulator: the emulator's state.
    """

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator
        self.files = emulator.files
        self.jobs = emulator.jobs
        self.store = emulator.store
        self.clock = emulator.config.clock
        self.account: dict[str, Any] = {"allowed_to_proceed": True, "user_limit": None}
        # The parts of open multipart uploads: upload id -> part number -> (etag, bytes).
        self._parts: dict[str, dict[int, tuple[str, bytes]]] = {}

    # -- files -----------------------------------------------------------------------------------------

    def reserve_upload(self, form: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``POST /files``'s form; keep the upload waiting for its content."""
        fields = {}
        for name in ("purpose", "file_name", "file_type", "checksum"):
            value = form.get(name)
            if not isinstance(value, str) or not value:
                raise _bad(f"Missing required form field: '{name}'", name)
            fields[name] = value
        if fields["purpose"] not in ("fine-tune", "eval", "batch-api"):
            raise _bad(f"'purpose' must be fine-tune, eval or batch-api; got {fields['purpose']!r}", "purpose")
        if fields["file_type"] not in ("jsonl", "parquet", "csv"):
            raise _bad(f"'file_type' must be jsonl, parquet or csv; got {fields['file_type']!r}", "file_type")
        file_id = self.store.new_id("file-")
        secret = token(file_id, "upload-signature", self.store.seed)
        record = {"id": file_id, **fields, "signature": secret, "created_at": self.clock()}
        self.store.save("together_upload", record)
        return record

    def receive_content(self, file_id: str, signature: str | None, data: bytes) -> None:
        """The presigned ``PUT``: the content, checked against the checksum the upload named."""
        upload = self.store.get("together_upload", file_id)
        if upload is None or signature is None or not hmac.compare_digest(signature, upload["signature"]):
            raise APIError(403, "The request signature does not match.", code="SignatureDoesNotMatch")
        if hashlib.sha256(data).hexdigest() != upload["checksum"]:
            raise _bad("The content does not match the upload's checksum.", "checksum")
        self.files.create(
            filename=upload["file_name"],
            purpose=upload["purpose"],
            data=data,
            file_id=file_id,
            created_at=upload["created_at"],
        )

    # -- the multipart upload of large files ---------------------------------------------------------------

    def initiate_multipart(self, body: Any, storage_url: str) -> dict[str, Any]:
        """``POST /files/multipart/initiate``: the upload's ids and a presigned URL per part.

        A file of the same content (checksum) and purpose made before is answered ``409`` with its ``file_id``.
        """
        if not isinstance(body, Mapping):
            raise _bad("Send a JSON object")
        fields: dict[str, Any] = {}
        for name in ("file_name", "purpose", "file_type", "checksum"):
            value = body.get(name)
            if not isinstance(value, str) or not value:
                raise _bad(f"Missing required field: '{name}'", name)
            fields[name] = value
        for name in ("file_size", "num_parts"):
            value = body.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _bad(f"'{name}' must be a positive integer", name)
            fields[name] = value
        if fields["num_parts"] > MULTIPART_MAX_PARTS:
            raise _bad(f"'num_parts' is at most {MULTIPART_MAX_PARTS}", "num_parts")
        for done in self.store.records("together_multipart").values():
            same = (done["checksum"], done["purpose"]) == (fields["checksum"], fields["purpose"])
            if done.get("completed") and same and self.files.find(done["file_id"]) is not None:
                error = conflict(f"A file with this content exists: {done['file_id']}", code="file_exists")
                error.extra["file_id"] = done["file_id"]
                raise error
        upload_id = self.store.new_id("upload-")
        file_id = self.store.new_id("file-")
        secret = token(upload_id, "multipart-signature", self.store.seed)
        record = {
            "id": upload_id,
            "file_id": file_id,
            **fields,
            "signature": secret,
            "created_at": self.clock(),
            "completed": False,
        }
        self.store.save("together_multipart", record)
        self._parts[upload_id] = {}
        parts = [
            {"PartNumber": n, "URL": f"{storage_url}/{upload_id}/{n}?signature={secret}", "Headers": {}}
            for n in range(1, fields["num_parts"] + 1)
        ]
        return {"upload_id": upload_id, "file_id": file_id, "parts": parts}

    def receive_part(self, upload_id: str, number: int, signature: str | None, data: bytes) -> str:
        """The presigned ``PUT`` of one part; answers its ETag (the part's MD5, as S3's)."""
        upload = self.store.get("together_multipart", upload_id)
        if upload is None or signature is None or not hmac.compare_digest(signature, upload["signature"]):
            raise APIError(403, "The request signature does not match.", code="SignatureDoesNotMatch")
        if upload_id not in self._parts or not 1 <= number <= upload["num_parts"]:
            raise APIError(404, "The specified upload does not exist.", code="NoSuchUpload")
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        self._parts[upload_id][number] = (etag, data)
        return etag

    def complete_multipart(self, body: Any) -> dict[str, Any]:
        """``POST /files/multipart/complete``: the parts, in order, make the file; it is checked as an upload is."""
        upload = self._multipart(body)
        stored = self._parts.get(upload["id"], {})
        listed = body.get("parts")
        if not isinstance(listed, list) or [p.get("part_number") for p in listed if isinstance(p, dict)] != list(
            range(1, upload["num_parts"] + 1)
        ):
            raise _bad(f"'parts' must list parts 1 to {upload['num_parts']} in order", "parts")
        for part in listed:
            number = part["part_number"]
            if number not in stored or stored[number][0] != str(part.get("etag", "")).strip('"'):
                raise _bad(f"Part {number} was not uploaded, or its etag does not match", "parts")
            if number < upload["num_parts"] and len(stored[number][1]) < MULTIPART_MIN_PART:
                raise _bad(f"Part {number} is smaller than the minimum part size of 5 MiB", "parts")
        data = b"".join(stored[n][1] for n in range(1, upload["num_parts"] + 1))
        if len(data) != upload["file_size"]:
            raise _bad(f"The parts make {len(data)} bytes, not the file_size {upload['file_size']}", "file_size")
        if hashlib.sha256(data).hexdigest() != upload["checksum"]:
            raise _bad("The content does not match the upload's checksum.", "checksum")
        record = self.files.create(
            filename=upload["file_name"],
            purpose=upload["purpose"],
            data=data,
            file_id=upload["file_id"],
            created_at=upload["created_at"],
        )
        del self._parts[upload["id"]]
        self.store.save("together_multipart", {**upload, "completed": True})
        self.store.save("together_file", {"id": upload["file_id"], "report": self._validate(record)})
        return {"file": self.render_file(record)}

    def abort_multipart(self, body: Any) -> dict[str, Any]:
        """``POST /files/multipart/abort``: the parts are discarded."""
        upload = self._multipart(body)
        self._parts.pop(upload["id"], None)
        self.store.delete("together_multipart", upload["id"])
        return {"upload_id": upload["id"], "status": "aborted"}

    def _multipart(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, Mapping) or not isinstance(body.get("upload_id"), str):
            raise _bad("Send a JSON object with upload_id and file_id", "upload_id")
        upload = self.store.get("together_multipart", body["upload_id"])
        if upload is None or upload["completed"] or upload["file_id"] != body.get("file_id"):
            raise not_found(f"No multipart upload {body['upload_id']} of file {body.get('file_id')!r} is open")
        return dict(upload)

    def preprocess(self, file_id: str) -> dict[str, Any]:
        """``POST /files/{id}/preprocess``: check the uploaded file and answer it with the verdict."""
        record = self.files.get(file_id)
        report = self._validate(record)
        self.store.save("together_file", {"id": file_id, "report": report})
        return self.render_file(record)

    def _validate(self, record: Mapping[str, Any]) -> dict[str, Any]:
        data = self.files.content(record["id"])
        nlines = sum(1 for line in data.splitlines() if line.strip())
        problems = []
        for method in ("supervised", "dpo"):
            try:
                report = validate_file(
                    io.BytesIO(data),
                    method=method,
                    min_examples=1,
                    name=record["filename"],
                    rules=TOGETHER_RULES,
                )
            except TrainingDataError as exc:
                problems.append(exc.message)
                continue
            dataset_format = _DATASET_FORMATS[report.format]
            return {"valid": True, "file_id": record["id"], "nlines": nlines, "dataset_format": dataset_format}
        return {
            "valid": False,
            "file_id": record["id"],
            "nlines": nlines,
            "error_type": "INVALID_FORMAT",
            "error": problems[0] if problems else "not a conversational or preference dataset",
        }

    def render_file(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A file as Together shows it (``FileResponse``)."""
        checked = self.store.get("together_file", record["id"])
        report = checked["report"] if checked else None
        status = None if report is None else ("COMPLETED" if report["valid"] else "INVALID_FORMAT")
        name = str(record["filename"])
        result = {
            "id": record["id"],
            "object": "file",
            "bytes": record["bytes"],
            "created_at": record["created_at"],
            "filename": name,
            "FileType": name.rsplit(".", 1)[-1] if "." in name else "jsonl",
            "Processed": bool(report and report["valid"]),
            "purpose": record["purpose"],
        }
        if report is not None:
            result["processing_status"] = status
            result["validation_report"] = report
        return result

    def list_files(self) -> dict[str, Any]:
        """``GET /files``: the files whose content arrived, in Together's shape."""
        page = self.files.list(purpose=None, limit="10000", order="asc", after=None)
        return {"object": "list", "data": [self.render_file(self.files.get(item["id"])) for item in page["data"]]}

    # -- price and limits --------------------------------------------------------------------------------

    def limits(self, model_name: str | None) -> dict[str, Any]:
        """``GET /fine-tunes/models/limits``."""
        if not model_name:
            raise _bad("Missing required query parameter: 'model_name'", "model_name")
        job = self.store.get("together_job", model_name)  # the SDK asks by the job a checkpoint comes from
        base = job["model"] if job is not None else model_name
        if base not in MODELS:
            raise not_found(f"Model {model_name} is not available for fine-tuning", param="model_name")
        return {**_LIMITS, "model_name": base}

    def estimate(self, body: Any) -> dict[str, Any]:
        """``POST /fine-tunes/estimate-price``: tokens of the training file, times epochs, at the model's price.

        A model Together does not fine-tune is refused as Together's description says it refuses one (``404``,
        "Model not found or not supported for fine-tuning", the answer of the model lookup the SDK makes before
        its estimate), in the error shape the estimate declares (``ErrorData``), naming ``model``. A job from a
        checkpoint is priced by the model the checkpoint was trained from (the SDK sends an empty ``model``).
        """
        if not isinstance(body, dict) or not isinstance(body.get("training_file"), str):
            raise _bad("Missing required field: 'training_file'", "training_file")
        unknown = sorted(
            set(body)
            - {"training_file", "from_checkpoint", "model", "n_epochs", "n_evals", "training_method"}
            - {"training_type", "validation_file"}
        )
        if unknown:
            raise _bad(f"Unknown field '{unknown[0]}'", unknown[0])
        self._priced_model(body.get("model"), body.get("from_checkpoint"))
        record = self.files.find(body["training_file"])
        checked = self.store.get("together_file", body["training_file"])
        if record is None or checked is None:
            return {"estimation_available": False, "unavailable_reason": "train_file_not_validated"}
        if not checked["report"]["valid"]:
            return {"estimation_available": False, "unavailable_reason": "train_file_invalid"}
        tokens, price = self._price(record, body.get("n_epochs"), body.get("training_type"))
        limit = self.account["user_limit"]
        allowed = bool(self.account["allowed_to_proceed"]) and (limit is None or price <= limit)
        answer = {
            "estimation_available": True,
            "allowed_to_proceed": allowed,
            "estimated_total_price": price,
            "estimated_train_token_count": float(tokens),
            "estimated_eval_token_count": 0.0,
        }
        if limit is not None:
            answer["user_limit"] = float(limit)
        return answer

    def _priced_model(self, model: Any, from_checkpoint: Any) -> str:
        """The base model an estimate prices: the one named, or the one a checkpoint was trained from."""
        if from_checkpoint:
            return self._checkpoint_model(str(from_checkpoint), model or None)[1]
        if model is None:
            raise _bad("Give a model or from_checkpoint to price a job from", "model")
        if model not in MODELS:
            raise not_found(f"Model {model!r} not found or not supported for fine-tuning", param="model")
        return str(model)

    def _price(self, record: Mapping[str, Any], epochs: Any, training_type: Any) -> tuple[int, float]:
        """The tokens a job trains on and its price in US dollars: what the estimate answers, and the job reports."""
        kind = str((training_type or {}).get("type") or "Lora") if isinstance(training_type, dict) else "Lora"
        tokens = self._tokens(record) * int(epochs or 1)
        return tokens, round(tokens / 1e6 * PRICE_PER_MILLION.get(kind, PRICE_PER_MILLION["Lora"]), 6)

    def _tokens(self, record: Mapping[str, Any]) -> int:
        data = self.files.content(record["id"])
        for method in ("supervised", "dpo"):
            try:
                return validate_file(io.BytesIO(data), method=method, min_examples=1, rules=TOGETHER_RULES).tokens
            except TrainingDataError:
                continue
        return 0

    # -- jobs ------------------------------------------------------------------------------------------

    def create(self, body: Any) -> dict[str, Any]:
        """``POST /fine-tunes``: check the ``FinetuneRequest`` and start the trainer on its equivalent."""
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object.")
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise _bad(f"Unknown field '{unknown[0]}'", unknown[0])
        for name in ("training_file",):
            if not isinstance(body.get(name), str):
                raise _bad(f"Missing required field: '{name}'", name)
        from_checkpoint = body.get("from_checkpoint")
        model = body.get("model")
        trainer_model = _TRAINER_MODEL
        if from_checkpoint:
            trainer_model, model = self._checkpoint_model(str(from_checkpoint), model)
        elif model not in MODELS:
            raise _bad(f"Model {model!r} is not available for fine-tuning", "model")
        method = body.get("training_method") or {"method": "sft", "train_on_inputs": "auto"}
        kind = method.get("method") if isinstance(method, dict) else None
        if kind not in ("sft", "dpo"):
            raise _bad("'training_method.method' must be 'sft' or 'dpo'", "training_method")
        training_type = body.get("training_type") or {"type": "Full"}
        if training_type.get("type") == "Lora" and not all(k in training_type for k in ("lora_r", "lora_alpha")):
            raise _bad("A LoRA training_type needs lora_r and lora_alpha", "training_type")
        if training_type.get("type") not in ("Lora", "Full"):
            raise _bad("'training_type.type' must be 'Lora' or 'Full'", "training_type")
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or not 1 <= len(suffix) <= 40):
            raise _bad("'suffix' must be 1 to 40 characters", "suffix")
        if body.get("early_stopping_enabled") and not body.get("validation_file"):
            raise _bad("Early stopping needs a validation_file", "early_stopping_enabled")
        hyperparameters: dict[str, Any] = {}
        if isinstance(body.get("n_epochs"), int):
            hyperparameters["n_epochs"] = body["n_epochs"]
        if isinstance(body.get("batch_size"), int):
            hyperparameters["batch_size"] = body["batch_size"]
        if kind == "dpo" and method.get("dpo_beta") is not None:
            hyperparameters["beta"] = method["dpo_beta"]
        canonical = "dpo" if kind == "dpo" else "supervised"
        openai_body: dict[str, Any] = {
            "model": trainer_model,
            "training_file": body["training_file"],
            "method": {"type": canonical, canonical: {"hyperparameters": hyperparameters}},
        }
        if body.get("validation_file"):
            openai_body["validation_file"] = body["validation_file"]
        if suffix:
            openai_body["suffix"] = suffix
        if body.get("random_seed") is not None:
            openai_body["seed"] = body["random_seed"]
        record = self.files.find(body["training_file"])
        price = None if record is None else self._price(record, body.get("n_epochs"), training_type)[1]
        job = self.jobs.create(openai_body)
        self.store.save(
            "together_job",
            {
                "id": job["id"],
                "request": body,
                "model": model,
                "training_type": training_type,
                "training_method": method,
                "price": price,
                "cancel_requested": False,
            },
        )
        return self.render(job["id"])

    def _checkpoint_model(self, reference: str, model: Any) -> tuple[str, Any]:
        job_id, _, step = reference.partition(":")
        found = self.store.get("together_job", job_id)
        if found is None:
            raise _bad(f"from_checkpoint: no job {job_id}", "from_checkpoint")
        job = self.jobs.get(job_id)
        if step:
            if not step.isdigit() or int(step) not in job.checkpoint_steps(self.clock()):
                raise _bad(f"from_checkpoint: job {job_id} has no checkpoint at step {step}", "from_checkpoint")
            return job.checkpoint_model(int(step)), model or found["model"]
        if job.snapshot(self.clock()).status != "succeeded":
            raise _bad(f"from_checkpoint: job {job_id} has not completed", "from_checkpoint")
        return job.fine_tuned_model(), model or found["model"]

    def _together(self, job_id: str) -> dict[str, Any]:
        record = self.store.get("together_job", job_id)
        if record is None:
            raise not_found(f"Fine-tune job {job_id} not found", param="id")
        return dict(record)

    def render(self, job_id: str) -> dict[str, Any]:
        """A job as Together shows it (``FinetuneResponse``)."""
        record = self._together(job_id)
        job = self.jobs.get(job_id)
        now = self.clock()
        snap = job.snapshot(now)
        status = _STATUS.get(snap.status, snap.status)
        tail = job.record["durations"]["validating"]
        finished = snap.finished_at
        if status == "completed" and finished is not None and now < finished + 2 * tail:
            status = "compressing" if now < finished + tail else "uploading"
        if status == "cancelled" and record["cancel_requested"] == "answering":
            status = "cancel_requested"
        request = record["request"]
        plan = job.record["plan"]
        name = f"{record['model'].split('/')[-1]}-{request.get('suffix') or 'ft'}-{token(job_id, 'out', length=8)}"
        result: dict[str, Any] = {
            "id": job_id,
            "status": status,
            "user_id": "user-emulator",
            "model": record["model"],
            "model_output_name": f"emulator/{name}",
            "created_at": _iso(job.record["created_at"]),
            "updated_at": _iso(
                finished if finished is not None and status not in ("compressing", "uploading") else now
            ),
            "training_file": request["training_file"],
            "validation_file": request.get("validation_file") or "",
            "n_epochs": (job.record["hyperparameters"] or {}).get("n_epochs", request.get("n_epochs")),
            "batch_size": request.get("batch_size", "max"),
            "learning_rate": request.get("learning_rate"),
            "n_checkpoints": request.get("n_checkpoints"),
            "n_evals": request.get("n_evals"),
            "suffix": request.get("suffix"),
            "from_checkpoint": request.get("from_checkpoint"),
            "training_type": record["training_type"],
            "training_method": record["training_method"],
            "events": self.events(job_id)["data"],
        }
        if status == "completed":
            result["token_count"] = plan["tokens"] * job.record["hyperparameters"]["n_epochs"] if plan else None
            result["total_price"] = round((record["price"] or 0) * NANODOLLARS)
            if request.get("early_stopping_enabled"):
                result.update(self._early_stopping(job))
        return {k: v for k, v in result.items() if v is not None}

    def _early_stopping(self, job: Any) -> dict[str, Any]:
        steps = job.checkpoint_steps(self.clock()) or [job.record["plan"]["steps"]]
        losses = {step: job.metrics(step).get("valid_loss") for step in steps}
        known = {step: loss for step, loss in losses.items() if loss is not None}
        if not known:
            return {"early_stopped": False}
        best = min(known, key=lambda step: known[step])
        return {
            "early_stopped": best != steps[-1],
            "early_stopping_best_step": best,
            "early_stopping_best_metric": known[best],
        }

    def list(self) -> dict[str, Any]:
        """``GET /fine-tunes``: every job of the dialect, oldest first."""
        ids = [job.id for job in self.jobs if self.store.get("together_job", job.id) is not None]
        return {"data": [self.render(job_id) for job_id in ids]}

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``POST /fine-tunes/{id}/cancel``: answered ``cancel_requested``; ``cancelled`` from then on."""
        record = self._together(job_id)
        self.jobs.cancel(job_id)
        record["cancel_requested"] = "answering"
        self.store.save("together_job", record)
        try:
            return self.render(job_id)
        finally:
            record["cancel_requested"] = True
            self.store.save("together_job", record)

    def events(self, job_id: str) -> dict[str, Any]:
        """``GET /fine-tunes/{id}/events``: the job's events, oldest first, in Together's words."""
        self._together(job_id)
        job = self.jobs.get(job_id)
        return {"data": [_event(job.render_event(row), row.kind) for row in job.event_rows(self.clock())]}

    def chat(self, body: Any) -> dict[str, Any]:
        """``POST /chat/completions``: a base model, or a completed job's ``model_output_name``, answers.

        Together's inference speaks OpenAI's shapes; the answer comes from the trainer's model the name stands for.
        """
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise _bad("you must provide a model parameter", "model")
        name = body["model"]
        served = _TRAINER_MODEL if name in MODELS else None
        for job_id in (job.id for job in self.jobs if self.store.get("together_job", job.id) is not None):
            rendered = self.render(job_id)
            if rendered.get("model_output_name") == name and rendered["status"] == "completed":
                served = self.jobs.get(job_id).fine_tuned_model()
        if served is None:
            raise not_found(
                f"Unable to access model {name}. Please visit https://api.together.ai/models", param="model"
            )
        answer = self.emulator.inference.chat_completion({**body, "model": served})
        return {**answer, "model": name}

    def checkpoints(self, job_id: str) -> dict[str, Any]:
        """``GET /fine-tunes/{id}/checkpoints``."""
        self._together(job_id)
        job = self.jobs.get(job_id)
        steps = job.checkpoint_steps(self.clock())
        return {"data": [_checkpoint(job_id, step, job.render_checkpoint(step)) for step in steps]}


_EVENT_TYPES = {
    "created": "JOB_PENDING",
    "validating": "TRAINING_DATA_DOWNLOADING",
    "validated": "TRAINING_DATA_DOWNLOAD_COMPLETE",
    "invalid": "JOB_USER_ERROR",
    "started": "TRAINING_START",
    "metrics": "EPOCH_COMPLETE",
    "checkpoint": "CHECKPOINT_SAVE",
    "failed": "JOB_ERROR",
    "model": "MODEL_UPLOAD_COMPLETE",
    "succeeded": "JOB_COMPLETE",
    "note": "WARNING",
}


def _event(event: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A job's event, as the trainer renders it, in Together's words."""
    return {
        "object": "fine-tune-event",
        "created_at": _iso(event["created_at"]),
        "level": {"info": "Info", "warn": "Warning", "error": "Error"}.get(event["level"], "Info"),
        "message": event["message"],
        "type": _EVENT_TYPES.get(kind, "WARNING"),
        "hash": event["id"],
    }


def _checkpoint(job_id: str, step: int, rendered: Mapping[str, Any]) -> dict[str, Any]:
    """A job's checkpoint at ``step``, as the trainer renders it, in Together's words."""
    return {
        "checkpoint_type": f"Intermediate (step {step})",
        "created_at": _iso(rendered["created_at"]),
        "path": f"s3://emulator/{job_id}/checkpoint-{step}",
        "step": step,
        "checkpoint": "adapter",
    }


def together_routes(
    emulator: Any, endpoint: Callable[[str, Callable[[Request], Awaitable[Any]]], Any], helpers: Mapping[str, Any]
) -> tuple[list[Route], TogetherDialect]:
    """The dialect's routes (authenticated by ``endpoint``) and its presigned storage (not authenticated).

    :param emulator: the emulator's state.
    :param endpoint: makes an authenticated, counted endpoint of a handler (the app's ``/v1`` wrapper).
    :param helpers: the app's request readers: ``body``, ``query``, ``form``, ``json``.
    """
    dialect = TogetherDialect(emulator)
    body_of, query, form_of, json_response = helpers["body"], helpers["query"], helpers["form"], helpers["json"]

    async def upload(request: Request) -> Any:
        form = await form_of(request)
        try:
            record = dialect.reserve_upload(form)
        finally:
            await form.close()
        location = f"{request.base_url}{STORAGE.lstrip('/')}/{record['id']}?signature={record['signature']}"
        return Response(status_code=302, headers={"Location": location, "X-Together-File-Id": record["id"]})

    async def put_content(request: Request) -> Response:
        emulator.counters.requests[f"PUT {STORAGE}/{{file_id}}"] += 1
        try:
            dialect.receive_content(
                request.path_params["file_id"], request.query_params.get("signature"), await request.body()
            )
        except APIError as exc:
            return json_response(exc.body(), exc.status)
        return Response(status_code=200)

    async def put_part(request: Request) -> Response:
        emulator.counters.requests[f"PUT {STORAGE}/{{upload_id}}/{{part}}"] += 1
        try:
            etag = dialect.receive_part(
                request.path_params["upload_id"],
                int(request.path_params["part"]),
                request.query_params.get("signature"),
                await request.body(),
            )
        except APIError as exc:
            return json_response(exc.body(), exc.status)
        return Response(status_code=200, headers={"ETag": f'"{etag}"'})

    async def initiate(request: Request) -> Any:
        return dialect.initiate_multipart(await body_of(request), f"{request.base_url}{STORAGE.lstrip('/')}")

    async def set_account(request: Request) -> Any:
        changes = await body_of(request)
        if not isinstance(changes, dict) or set(changes) - {"allowed_to_proceed", "user_limit"}:
            raise _bad("Send a JSON object of allowed_to_proceed and user_limit")
        dialect.account.update(changes)
        return dict(dialect.account)

    file_path = "/files/{file_id}"
    job = "/fine-tunes/{id}"
    table: list[tuple[str, str, Callable[[Request], Awaitable[Any]]]] = [
        ("POST", "/files", upload),
        ("GET", "/files", lambda r: _done(dialect.list_files())),
        ("GET", file_path, lambda r: _done(dialect.render_file(dialect.files.get(r.path_params["file_id"])))),
        ("DELETE", file_path, lambda r: _done(dialect.files.delete(r.path_params["file_id"]))),
        (
            "GET",
            file_path + "/content",
            lambda r: _done(Response(dialect.files.content(r.path_params["file_id"]), media_type="text/plain")),
        ),
        ("POST", file_path + "/preprocess", lambda r: _done(dialect.preprocess(r.path_params["file_id"]))),
        ("POST", "/files/multipart/initiate", initiate),
        ("POST", "/files/multipart/complete", lambda r: _with_body(r, body_of, dialect.complete_multipart)),
        ("POST", "/files/multipart/abort", lambda r: _with_body(r, body_of, dialect.abort_multipart)),
        ("GET", "/fine-tunes/models/limits", lambda r: _done(dialect.limits(query(r, "model_name")))),
        ("POST", "/fine-tunes/estimate-price", lambda r: _with_body(r, body_of, dialect.estimate)),
        ("POST", "/fine-tunes", lambda r: _with_body(r, body_of, dialect.create)),
        ("GET", "/fine-tunes", lambda r: _done(dialect.list())),
        ("GET", job, lambda r: _done(dialect.render(r.path_params["id"]))),
        ("POST", job + "/cancel", lambda r: _done(dialect.cancel(r.path_params["id"]))),
        ("GET", job + "/events", lambda r: _done(dialect.events(r.path_params["id"]))),
        ("GET", job + "/checkpoints", lambda r: _done(dialect.checkpoints(r.path_params["id"]))),
        ("POST", "/chat/completions", lambda r: _with_body(r, body_of, dialect.chat)),
    ]
    routes = [
        Route(PREFIX + path, endpoint(f"{method} {PREFIX}{path}", handler), methods=[method])
        for method, path, handler in table
    ]
    routes.append(Route(STORAGE + "/{file_id}", put_content, methods=["PUT"]))
    routes.append(Route(STORAGE + "/{upload_id}/{part:int}", put_part, methods=["PUT"]))
    routes.append(Route("/_emulator/together/account", endpoint("together account", set_account), methods=["POST"]))
    return routes, dialect


async def _done(value: Any) -> Any:
    return value


async def _with_body(request: Request, body_of: Any, handle: Callable[[Any], Any]) -> Any:
    return handle(await body_of(request))
