"""Fireworks AI's fine-tuning dialect, served over the same trainer, files and jobs as ``/v1``.

Routes (as the ``fireworks-ai`` SDK, generated from Fireworks' OpenAPI document, calls them; the SDK's base URL
is the server's root, e.g. ``Fireworks(base_url="http://127.0.0.1:8089", account_id="acme")``):

* datasets: ``POST /v1/accounts/{a}/datasets`` (``datasetId``, ``dataset``), ``GET``/``DELETE .../datasets/{id}``,
  ``GET .../datasets``, ``POST .../datasets/{id}:upload`` (multipart ``file``), ``...:getUploadEndpoint``
  (``filenameToSize`` -> ``filenameToSignedUrls``; the signed URL takes one ``PUT`` of the bytes, with no API
  key), ``...:validateUpload`` (checks each line is a JSON object; the dataset becomes ``READY``);
* inference: ``POST /inference/v1/chat/completions`` answers for a base model (``accounts/fireworks/models/...``)
  or a job's ``outputModel`` once the job completed;
* jobs, one collection per method: ``supervisedFineTuningJobs``, ``dpoJobs`` and
  ``reinforcementFineTuningJobs`` (an ``evaluator`` is required): ``POST`` (the id from the ``...JobId`` query
  parameter, else a fresh one; an id in use is ``409 ALREADY_EXISTS``), ``GET`` list (``pageSize``,
  ``pageToken`` -> ``nextPageToken``), ``GET``/``DELETE .../{id}``, ``POST .../{id}:cancel`` and ``:resume``
  (of a paused job). No pause: Fireworks pauses a job itself (``JOB_STATE_PAUSED``, e.g. an account suspended);
  the emulator's trainer pauses one when told directly (``emulator.jobs.pause``).

Bodies are camelCase; unknown fields are ``400 INVALID_ARGUMENT``. Jobs report ``JOB_STATE_*`` states,
``jobProgress`` (the epoch in progress, counted from 0, and the percent of that epoch done), and ``outputModel``
(``accounts/{a}/models/{id}``). Errors are ``{"code": <gRPC code>, "message", "details": []}``. A base model
``accounts/fireworks/models/...`` trains on the simulated trainer as one of the emulator's own base models.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airflow_provider_finetune.emulator.errors import APIError

__all__ = ["COLLECTIONS", "SIM_STATES", "fireworks_routes"]

#: Collection -> (method, the create's id query parameter).
COLLECTIONS: dict[str, tuple[str, str]] = {
    "supervisedFineTuningJobs": ("supervised", "supervisedFineTuningJobId"),
    "dpoJobs": ("dpo", "dpoJobId"),
    "reinforcementFineTuningJobs": ("reinforcement", "reinforcementFineTuningJobId"),
}

#: The simulated trainer's statuses in Fireworks' words.
SIM_STATES = {
    "validating_files": "JOB_STATE_VALIDATING",
    "queued": "JOB_STATE_PENDING",
    "running": "JOB_STATE_RUNNING",
    "pausing": "JOB_STATE_RUNNING",
    "paused": "JOB_STATE_PAUSED",
    "resuming": "JOB_STATE_PENDING",
    "succeeded": "JOB_STATE_COMPLETED",
    "failed": "JOB_STATE_FAILED",
    "cancelled": "JOB_STATE_CANCELLED",
}

_GRPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 412: 9, 429: 8, 500: 13, 503: 14}
_GRPC_NAMES = {3: "INVALID_ARGUMENT", 5: "NOT_FOUND", 6: "ALREADY_EXISTS", 9: "FAILED_PRECONDITION"}

_TRAINING = {
    "baseModel",
    "batchSize",
    "batchSizeSamples",
    "samplerCheckpointSaveIntervalSteps",
    "epochs",
    "gradientAccumulationSteps",
    "jinjaTemplate",
    "learningRate",
    "learningRateWarmupSteps",
    "loraRank",
    "maxContextLength",
    "optimizerWeightDecay",
    "outputModel",
    "region",
    "warmStartFrom",
}
_COMMON = {
    "dataset",
    "awsS3Config",
    "azureBlobStorageConfig",
    "displayName",
    "wandbConfig",
    "reservationTarget",
    "useReservation",
    "rendererHuggingFaceRepoId",
}
#: The create body fields each collection takes (``types/*_create_params.py`` of the SDK).
BODY_FIELDS: dict[str, set[str]] = {
    "supervisedFineTuningJobs": _COMMON
    | (_TRAINING - {"region"})
    | {
        "region",
        "earlyStop",
        "evalAutoCarveout",
        "evaluationDataset",
        "isTurbo",
        "metricsFileSignedUrl",
        "mtpEnabled",
        "mtpFreezeBaseModel",
        "mtpNumDraftTokens",
        "nodes",
        "usePurpose",
    },
    "dpoJobs": _COMMON | {"lossConfig", "trainingConfig"},
    "reinforcementFineTuningJobs": _COMMON
    | {
        "evaluator",
        "chunkSize",
        "evalAutoCarveout",
        "evaluationDataset",
        "inferenceParameters",
        "lossConfig",
        "maxConcurrentEvaluations",
        "maxConcurrentRollouts",
        "maxInferenceReplicaCount",
        "mcpServer",
        "nodeCount",
        "trainingConfig",
    },
}
_NUMBER_FIELDS = {"learningRate", "optimizerWeightDecay"}
_INT_FIELDS = {
    "epochs",
    "loraRank",
    "batchSize",
    "batchSizeSamples",
    "maxContextLength",
    "learningRateWarmupSteps",
    "gradientAccumulationSteps",
    "nodes",
    "nodeCount",
}
_BOOL_FIELDS = {"earlyStop", "evalAutoCarveout", "isTurbo", "mtpEnabled", "mtpFreezeBaseModel", "useReservation"}

#: The emulator's base model a Fireworks base model trains as, by method.
SIM_BASE = {
    "supervised": "gpt-4o-mini-2024-07-18",
    "dpo": "gpt-4o-mini-2024-07-18",
    "reinforcement": "o4-mini-2025-04-16",
}
_EVALUATOR_GRADER = {
    "type": "string_check",
    "name": "evaluator",
    "input": "{{sample.output_text}}",
    "reference": "{{item.reference_answer}}",
    "operation": "eq",
}


def _error(status: int, message: str) -> APIError:
    return APIError(status, message, error_type=_GRPC_NAMES.get(_GRPC.get(status, 2), "UNKNOWN"))


def fireworks_error_body(exc: APIError) -> dict[str, Any]:
    """``{"code": <gRPC code>, "message", "details": []}``."""
    return {"code": _GRPC.get(exc.status, 2), "message": exc.message, "details": []}


def _rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _job_progress(steps_done: int, steps: int, per_epoch: int) -> dict[str, int]:
    """``jobProgress`` as Fireworks publishes it: ``epoch`` is the epoch the ``percent`` is of, counted from 0.

    So it is the epoch in progress and how far into it training is (not how far into the whole job): the first
    epoch done of two is ``{"epoch": 1, "percent": 0}``, and a finished job reports its last epoch at 100.
    """
    per_epoch = max(1, per_epoch)
    epochs = max(1, -(-steps // per_epoch))
    if steps_done >= steps:
        return {"epoch": epochs - 1, "percent": 100}
    epoch = min(epochs - 1, steps_done // per_epoch)
    return {"epoch": epoch, "percent": min(100, 100 * (steps_done - epoch * per_epoch) // per_epoch)}


#: Fields Fireworks' API reference marks deprecated and rejected when set.
_REJECTED_FIELDS = {"gradientAccumulationSteps"}


def _check_types(body: Mapping[str, Any], where: str) -> None:
    for key, value in body.items():
        if key in _REJECTED_FIELDS:
            raise _error(400, f"{where}{key} is deprecated and may not be set")
        if key in _INT_FIELDS and (isinstance(value, bool) or not isinstance(value, int)):
            raise _error(400, f"{where}{key}: invalid value {json.dumps(value)} for type int32")
        if key in _NUMBER_FIELDS and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _error(400, f"{where}{key}: invalid value {json.dumps(value)} for type float")
        if key in _BOOL_FIELDS and not isinstance(value, bool):
            raise _error(400, f"{where}{key}: invalid value {json.dumps(value)} for type bool")


def fireworks_routes(emulator: Any, wrap: Callable[[str, Any], Any], helpers: Mapping[str, Any]) -> list[Route]:
    """The Fireworks routes.

    :param emulator: the emulator's state.
    :param wrap: makes an endpoint of a handler (counts, authenticates, renders errors in Fireworks' shape).
    :param helpers: the app's request readers: ``body``, ``query``, ``form``, ``form_file``.
    """
    store, files, jobs, clock = emulator.store, emulator.files, emulator.jobs, emulator.config.clock
    body_of, query, form_of, form_file = helpers["body"], helpers["query"], helpers["form"], helpers["form_file"]
    signing_key = secrets.token_bytes(16)

    # -- datasets ----------------------------------------------------------------------------------------

    def dataset_key(account: str, dataset_id: str) -> str:
        return f"{account}/{dataset_id}"

    def dataset_of(account: str, dataset_id: str) -> dict[str, Any]:
        record = store.get("fw_dataset", dataset_key(account, dataset_id))
        if record is None:
            raise _error(404, f"Dataset accounts/{account}/datasets/{dataset_id} not found")
        return record

    def render_dataset(record: dict[str, Any]) -> dict[str, Any]:
        out = {
            "name": f"accounts/{record['account']}/datasets/{record['dataset_id']}",
            "state": record["state"],
            "createTime": _rfc3339(record["created"]),
            "updateTime": _rfc3339(record["updated"]),
            "userUploaded": {},
            "status": {"code": "OK", "message": ""},
        }
        for key in ("exampleCount", "displayName", "format"):
            if record.get(key) is not None:
                out[key] = record[key]
        return out

    async def create_dataset(request: Request) -> Any:
        account = request.path_params["account_id"]
        body = await body_of(request)
        unknown = set(body) - {"dataset", "datasetId", "sourceDatasetId"}
        if unknown:
            raise _error(400, f"Unknown field(s) in the request: {', '.join(sorted(unknown))}")
        dataset_id, dataset = body.get("datasetId"), body.get("dataset")
        if not isinstance(dataset_id, str) or not dataset_id or not isinstance(dataset, dict):
            raise _error(400, "datasetId and dataset are required")
        if store.get("fw_dataset", dataset_key(account, dataset_id)) is not None:
            raise _error(409, f"Dataset accounts/{account}/datasets/{dataset_id} already exists")
        now = clock()
        record = {
            "id": dataset_key(account, dataset_id),
            "account": account,
            "dataset_id": dataset_id,
            "state": "UPLOADING",
            "created": now,
            "updated": now,
            "file_id": None,
            "exampleCount": dataset.get("exampleCount"),
            "displayName": dataset.get("displayName"),
            "format": dataset.get("format"),
            "expected": None,
        }
        store.save("fw_dataset", record)
        return render_dataset(record)

    async def list_datasets(request: Request) -> Any:
        account = request.path_params["account_id"]
        mine = [r for r in store.records("fw_dataset").values() if r["account"] == account]
        return {"datasets": [render_dataset(r) for r in mine], "nextPageToken": "", "totalSize": len(mine)}

    def attach(record: dict[str, Any], filename: str, data: bytes) -> dict[str, Any]:
        file_record = files.create(filename=filename, purpose="fine-tune", data=data)
        record["file_id"] = file_record["id"]
        record["updated"] = clock()
        store.save("fw_dataset", record)
        return file_record

    async def dataset_action(request: Request) -> Any:
        account = request.path_params["account_id"]
        dataset_id, _, action = request.path_params["dataset_ref"].partition(":")
        record = dataset_of(account, dataset_id)
        if request.method == "GET" and not action:
            return render_dataset(record)
        if request.method == "DELETE" and not action:
            store.delete("fw_dataset", record["id"])
            return {}
        if request.method != "POST" or action not in ("upload", "getUploadEndpoint", "validateUpload"):
            raise _error(404, f"No such method: {request.method} {request.url.path}")
        if action == "upload":
            form = await form_of(request)
            try:
                filename, data = await form_file(form, "file")
            finally:
                await form.close()
            file_record = attach(record, filename, data)
            return {**files.render(file_record), "object": "file"}
        body = await body_of(request)
        if action == "getUploadEndpoint":
            sizes = body.get("filenameToSize")
            if not isinstance(sizes, dict) or not sizes:
                raise _error(400, "filenameToSize is required")
            urls = {}
            for name, size in sizes.items():
                if not str(size).isdigit():
                    raise _error(400, f"filenameToSize[{name}]: invalid value {json.dumps(size)} for type int64")
                token = hmac.new(signing_key, f"{record['id']}|{name}|{size}".encode(), "sha256").hexdigest()
                store.save("fw_signed", {"id": token, "dataset": record["id"], "name": name, "size": int(size)})
                urls[name] = f"{str(request.base_url).rstrip('/')}/_emulator/fireworks/signed/{token}"
            return {"filenameToSignedUrls": urls}
        # validateUpload
        if record["file_id"] is None:
            raise _error(412, f"Dataset {dataset_id} has no uploaded file to validate")
        content = files.content(record["file_id"])
        count = 0
        for number, line in enumerate(content.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise _error(400, f"Dataset {dataset_id}: line {number} is not JSON") from None
            if not isinstance(row, dict):
                raise _error(400, f"Dataset {dataset_id}: line {number} is not a JSON object")
            count += 1
        record.update(state="READY", exampleCount=str(count), updated=clock())
        store.save("fw_dataset", record)
        return {}

    async def signed_put(request: Request) -> Response:
        grant = store.get("fw_signed", request.path_params["token"])
        if grant is None:
            return Response("<Error><Code>AccessDenied</Code></Error>", status_code=403, media_type="application/xml")
        data = await request.body()
        if len(data) != grant["size"]:
            return Response("<Error><Code>EntityTooLarge</Code></Error>", status_code=400, media_type="application/xml")
        record = store.get("fw_dataset", grant["dataset"])
        if record is None:
            return Response(status_code=404)
        attach(record, grant["name"], data)
        store.delete("fw_signed", grant["id"])
        return Response(status_code=200)

    # -- jobs --------------------------------------------------------------------------------------------

    def job_key(account: str, collection: str, job_id: str) -> str:
        return f"{account}/{collection}/{job_id}"

    def job_of(account: str, collection: str, job_id: str) -> dict[str, Any]:
        record = store.get("fw_job", job_key(account, collection, job_id))
        if record is None:
            raise _error(404, f"Job accounts/{account}/{collection}/{job_id} not found")
        return record

    def render_job(record: dict[str, Any]) -> dict[str, Any]:
        now = clock()
        sim = jobs.get(record["sim_id"])
        rendered = jobs.render(sim, now)
        snap = sim.snapshot(now)
        plan = sim.record["plan"]
        state = SIM_STATES.get(rendered["status"], "JOB_STATE_UNSPECIFIED")
        out: dict[str, Any] = {
            "name": f"accounts/{record['account']}/{record['collection']}/{record['job_id']}",
            **record["body"],
            "state": state,
            "createTime": _rfc3339(record["created"]),
            "updateTime": _rfc3339(now),
            "createdBy": "emulator@example.com",
        }
        error = rendered.get("error")
        out["status"] = (
            {"code": "INVALID_ARGUMENT", "message": error.get("message", "")}
            if error
            else {"code": "OK", "message": ""}
        )
        if rendered["finished_at"] is not None:
            out["completedTime"] = _rfc3339(rendered["finished_at"])
        if plan:
            out["jobProgress"] = _job_progress(snap.steps_done, int(plan["steps"]), int(plan["steps_per_epoch"]))
        output = record["output_model"]
        if record["collection"] == "supervisedFineTuningJobs":
            out["outputModel"] = output
        else:
            out["trainingConfig"] = {**(out.get("trainingConfig") or {}), "outputModel": output}
        return out

    def dataset_file(ref: Any, field: str) -> str:
        if not isinstance(ref, str) or ref.count("/") != 3 or not ref.startswith("accounts/"):
            raise _error(400, f"{field}: {json.dumps(ref)} is not a dataset resource name")
        _, account, _, dataset_id = ref.split("/")
        record = dataset_of(account, dataset_id)
        if record["state"] != "READY" or record["file_id"] is None:
            raise _error(412, f"{field}: dataset {ref} is not READY (validate its upload first)")
        return str(record["file_id"])

    async def create_job(request: Request) -> Any:
        account, collection = request.path_params["account_id"], request.path_params["collection"]
        if collection not in COLLECTIONS:
            raise _error(404, f"No such collection: {collection}")
        method, id_param = COLLECTIONS[collection]
        body = await body_of(request)
        if not isinstance(body, dict):
            raise _error(400, "The request body must be a JSON object")
        unknown = set(body) - BODY_FIELDS[collection]
        if unknown:
            raise _error(400, f"Unknown field(s) for {collection}: {', '.join(sorted(unknown))}")
        training = body.get("trainingConfig") if collection != "supervisedFineTuningJobs" else body
        if not isinstance(training, dict):
            raise _error(400, "trainingConfig must be an object")
        if collection != "supervisedFineTuningJobs":
            extra = set(training) - _TRAINING
            if extra:
                raise _error(400, f"Unknown field(s) in trainingConfig: {', '.join(sorted(extra))}")
        _check_types(body, "")
        _check_types(training, "trainingConfig." if training is not body else "")
        if method == "reinforcement" and not body.get("evaluator"):
            raise _error(400, "evaluator is required for a reinforcement fine-tuning job")
        if not training.get("baseModel") and not training.get("warmStartFrom"):
            raise _error(400, "one of baseModel or warmStartFrom is required")
        job_id = query(request, id_param) or "j" + secrets.token_hex(10)
        key = job_key(account, collection, job_id)
        if store.get("fw_job", key) is not None:
            raise _error(409, f"Job accounts/{account}/{collection}/{job_id} already exists")
        training_file = dataset_file(body.get("dataset"), "dataset")
        validation_file = (
            dataset_file(body["evaluationDataset"], "evaluationDataset") if body.get("evaluationDataset") else None
        )
        hyperparameters: dict[str, Any] = {}
        if isinstance(training.get("epochs"), int):
            hyperparameters["n_epochs"] = max(1, min(50, training["epochs"]))
        block: dict[str, Any] = {"hyperparameters": hyperparameters} if hyperparameters else {}
        if method == "reinforcement":
            block["grader"] = _EVALUATOR_GRADER
        sim_body: dict[str, Any] = {
            "model": SIM_BASE[method],
            "training_file": training_file,
            "method": {"type": method, method: block},
        }
        if validation_file:
            sim_body["validation_file"] = validation_file
        try:
            rendered = jobs.create(sim_body)
        except APIError as exc:
            raise _error(exc.status, exc.message) from None
        output = training.get("outputModel") or job_id
        record = {
            "id": key,
            "account": account,
            "collection": collection,
            "job_id": job_id,
            "sim_id": rendered["id"],
            "body": body,
            "created": clock(),
            "output_model": output if "/" in str(output) else f"accounts/{account}/models/{output}",
        }
        store.save("fw_job", record)
        return render_job(record)

    async def list_jobs(request: Request) -> Any:
        account, collection = request.path_params["account_id"], request.path_params["collection"]
        if collection not in COLLECTIONS:
            raise _error(404, f"No such collection: {collection}")
        mine = [
            r for r in store.records("fw_job").values() if r["account"] == account and r["collection"] == collection
        ]
        mine.reverse()  # newest first
        size = int(query(request, "pageSize") or 50)
        start = int(query(request, "pageToken") or 0)
        page = mine[start : start + size]
        token = str(start + size) if start + size < len(mine) else ""
        return {collection: [render_job(r) for r in page], "nextPageToken": token, "totalSize": len(mine)}

    async def job_action(request: Request) -> Any:
        account, collection = request.path_params["account_id"], request.path_params["collection"]
        if collection not in COLLECTIONS:
            raise _error(404, f"No such collection: {collection}")
        job_id, _, action = request.path_params["job_ref"].partition(":")
        record = job_of(account, collection, job_id)
        if request.method == "GET" and not action:
            return render_job(record)
        if request.method == "DELETE" and not action:
            # Deleting is not cancelling: the record goes; a job still running is refused.
            if jobs.get(record["sim_id"]).snapshot(clock()).status not in ("succeeded", "failed", "cancelled"):
                raise _error(412, f"Job {job_id} is still running: cancel it first")
            store.delete("fw_job", record["id"])
            return {}
        if request.method != "POST" or action not in ("cancel", "resume"):
            raise _error(404, f"No such method: {request.method} {request.url.path}")
        await body_of(request)
        try:
            getattr(jobs, action)(record["sim_id"])
        except APIError as exc:
            raise _error(412 if exc.status in (400, 409) else exc.status, exc.message) from None
        return {}

    # -- inference ---------------------------------------------------------------------------------------

    async def chat_completion(request: Request) -> Any:
        body = await body_of(request)
        if not isinstance(body, dict):
            raise _error(400, "The request body must be a JSON object")
        name = body.get("model")
        model = SIM_BASE["supervised"] if isinstance(name, str) and name.startswith("accounts/fireworks/") else name
        for record in store.records("fw_job").values():
            if record["output_model"] == name:
                sim = jobs.get(record["sim_id"])
                if sim.snapshot(clock()).status != "succeeded":
                    raise _error(404, f"Model {name} is not ready: its job has not completed")
                model = sim.fine_tuned_model()
        try:
            answer = emulator.inference.chat_completion({**body, "model": model})
        except APIError as exc:
            raise _error(exc.status, exc.message) from None
        return {**answer, "model": name}

    prefix = "/v1/accounts/{account_id}"
    table: list[tuple[str, str, Callable[[Request], Awaitable[Any]]]] = [
        ("POST", "/datasets", create_dataset),
        ("GET", "/datasets", list_datasets),
        ("GET", "/datasets/{dataset_ref}", dataset_action),
        ("POST", "/datasets/{dataset_ref}", dataset_action),
        ("DELETE", "/datasets/{dataset_ref}", dataset_action),
        ("POST", "/{collection}", create_job),
        ("GET", "/{collection}", list_jobs),
        ("GET", "/{collection}/{job_ref}", job_action),
        ("POST", "/{collection}/{job_ref}", job_action),
        ("DELETE", "/{collection}/{job_ref}", job_action),
    ]
    routes = [
        Route(prefix + path, wrap(f"{method} {prefix}{path}", handler), methods=[method])
        for method, path, handler in table
    ]
    chat = "/inference/v1/chat/completions"
    routes.append(Route(chat, wrap(f"POST {chat}", chat_completion), methods=["POST"]))
    routes.append(Route("/_emulator/fireworks/signed/{token}", signed_put, methods=["PUT"]))
    return routes
