"""The AWS Bedrock dialect: model customization, custom models, on-demand deployments and Converse.

Served by the same emulator process, over the same store, trainer and counters as the OpenAI dialect,
conforming to botocore's service models (``bedrock`` 2023-04-20 and ``bedrock-runtime`` 2023-09-30):

* control plane, ``endpoint_url=<root>/bedrock``: ``CreateModelCustomizationJob`` (201),
  ``GetModelCustomizationJob``, ``ListModelCustomizationJobs``, ``StopModelCustomizationJob``,
  ``GetCustomModel``, ``ListCustomModels``, ``CreateCustomModelDeployment`` (202),
  ``GetCustomModelDeployment``, ``ListCustomModelDeployments``, ``DeleteCustomModelDeployment``;
* runtime, ``endpoint_url=<root>/bedrock-runtime``: ``Converse`` (``POST /model/{modelId}/converse``)
  with a deployment's ARN (or a foundation model's id) as ``modelId``.

Every request is authenticated first (:mod:`~airflow_provider_finetune.emulator.dialects.bedrock.auth`: SigV4
checked by botocore, or a Bedrock API key as ``Authorization: Bearer``); its body and query are checked
against the operation's shapes (:mod:`~airflow_provider_finetune.emulator.dialects.bedrock.shapes`). Errors are
``restJson1``'s: the status, ``x-amzn-ErrorType`` and ``{"message": ...}``; answers carry
``x-amzn-RequestId`` (stamped by the app). A deployment is ``Creating`` for
``BedrockConfig.deployment_seconds`` (divided by the speed), then ``Active``. botocore is optional for the
package: without it every Bedrock request is answered ``500 InternalServerException`` saying that the dialect
needs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airflow_provider_finetune.emulator.dialects.bedrock.auth import SignedRequest, authenticate, botocore_missing
from airflow_provider_finetune.emulator.dialects.bedrock.data import example_pairs
from airflow_provider_finetune.emulator.dialects.bedrock.errors import (
    BEDROCK_PREFIX,
    RUNTIME_PREFIX,
    AWSError,
    not_found,
    validation,
)
from airflow_provider_finetune.emulator.dialects.bedrock.jobs import BedrockJobs, iso, list_answer, listed, short_id
from airflow_provider_finetune.emulator.dialects.bedrock.s3 import S3Error, S3Storage
from airflow_provider_finetune.emulator.dialects.bedrock.shapes import check_input, check_uri, read_query
from airflow_provider_finetune.emulator.inference import answer_from
from airflow_provider_finetune.emulator.store import Record

if TYPE_CHECKING:
    from airflow_provider_finetune.emulator.core import Emulator

__all__ = ["BedrockDialect", "bedrock_routes"]

logger = logging.getLogger(__name__)

DEPLOYMENT_KIND = "bedrock-deployment"
_NO_BOTOCORE = (
    "The emulator's Bedrock dialect needs botocore, which is not installed: "
    "pip install 'airflow-provider-finetune[amazon]' (or botocore)."
)


class BedrockDialect:
    """The Bedrock dialect's state: its jobs and models, deployments, S3 access, and the inference it reuses.

    :param emulator: the emulator it is part of (config, store, counters).
    """

    def __init__(self, emulator: Emulator) -> None:
        config = emulator.config
        self.config = config.bedrock
        self._emulator = emulator
        self._clock = config.clock
        self._speed = config.speed
        self._store = emulator.store
        self.jobs = BedrockJobs(emulator.store, config, emulator.counters)
        self.s3 = S3Storage(config.bedrock)
        self._pairs: dict[str, dict[str, str]] = {}
        self._deployment_tokens = {
            record["client_token"]: record["id"]
            for record in self._store.records(DEPLOYMENT_KIND).values()
            if record.get("client_token")
        }

    # -- jobs --------------------------------------------------------------------------------------------

    async def create_job(self, body: dict[str, Any]) -> str:
        """Create a customization job (reading its data from S3 in a worker thread); return its ARN."""
        check_input("bedrock", "CreateModelCustomizationJob", body)
        prepared = self.jobs.prepare(body)
        if isinstance(prepared, str):
            return prepared
        self.s3.connect()
        training = await asyncio.to_thread(self._read, body["trainingDataConfig"]["s3Uri"])
        validators = (body.get("validationDataConfig") or {}).get("validators") or []
        checked = await asyncio.to_thread(self._read, validators[0]["s3Uri"]) if validators else None
        return self.jobs.create(prepared, training, checked)

    def _read(self, uri: str) -> bytes | S3Error:
        try:
            return self.s3.read(uri)
        except S3Error as exc:
            return exc

    async def write_outputs(self) -> None:
        """Write the metrics files of jobs that have completed since the last look, to their output S3 URI.

        Each job's files are tried once: a location that cannot be written is logged, not retried on every read.
        """
        for job, files in self.jobs.pending_outputs():
            self.s3.connect()
            self.jobs.outputs_written(job)
            try:
                for uri, data in files.items():
                    await asyncio.to_thread(self.s3.write, uri, data)
            except S3Error as exc:
                logger.warning("The metrics of Bedrock job %s could not be written: %s", job.id, exc)

    # -- deployments -------------------------------------------------------------------------------------

    def create_deployment(self, body: dict[str, Any]) -> str:
        """``CreateCustomModelDeployment``: a deployment of a completed job's model; return its ARN."""
        check_input("bedrock", "CreateCustomModelDeployment", body)
        client_token = body.get("clientRequestToken")
        if client_token and client_token in self._deployment_tokens:
            repeated = self._store.get(DEPLOYMENT_KIND, self._deployment_tokens[client_token])
            if repeated is not None:
                return str(repeated["arn"])
        job = self.jobs.find_model(body["modelArn"])
        if any(item["name"] == body["modelDeploymentName"] for item in self._store.records(DEPLOYMENT_KIND).values()):
            raise validation("The provided deployment name is currently in use.")
        now = self._clock()
        deployment_id = short_id(self._store.seed, "deployment", self._store.new_id("bedrock-deployment-"))
        record: Record = {
            "id": deployment_id,
            "arn": f"arn:aws:bedrock:{self.config.region}:{self.config.account_id}:"
            f"custom-model-deployment/{deployment_id}",
            "name": body["modelDeploymentName"],
            "model_arn": job.record["model_arn"],
            "job_id": job.id,
            "description": body.get("description"),
            "client_token": client_token,
            "created_at": now,
            "active_at": now + self.config.deployment_seconds / self._speed,
        }
        self._store.save(DEPLOYMENT_KIND, record)
        if client_token:
            self._deployment_tokens[client_token] = deployment_id
        return str(record["arn"])

    def find_deployment(self, identifier: str) -> Record:
        """The deployment an ARN or name names; ``ResourceNotFoundException`` otherwise."""
        for record in self._store.records(DEPLOYMENT_KIND).values():
            if identifier in (record["arn"], record["name"]):
                return record
        raise not_found(f"Could not find custom model deployment {identifier}.")

    def describe_deployment(self, record: Record, *, summary: bool = False) -> dict[str, Any]:
        """A deployment as ``GetCustomModelDeployment`` (or, ``summary``, the list) shows it."""
        active = self._clock() >= record["active_at"]
        answer: dict[str, Any] = {
            "customModelDeploymentArn": record["arn"],
            "customModelDeploymentName" if summary else "modelDeploymentName": record["name"],
            "modelArn": record["model_arn"],
            "createdAt": iso(record["created_at"]),
            "status": "Active" if active else "Creating",
            "lastUpdatedAt": iso(record["active_at"] if active else record["created_at"]),
        }
        if record.get("description") and not summary:
            answer["description"] = record["description"]
        return answer

    def list_deployments(self, query: Mapping[str, Any]) -> dict[str, Any]:
        """``ListCustomModelDeployments``: filtered, sorted and paged."""
        chosen = []
        for record in self._store.records(DEPLOYMENT_KIND).values():
            shown = self.describe_deployment(record, summary=True)
            created = record["created_at"]
            equal = {"statusEquals": shown["status"], "modelArnEquals": record["model_arn"]}
            if listed(query, created, record["name"], window=("createdAfter", "createdBefore"), equal=equal):
                chosen.append((created, shown["customModelDeploymentArn"], shown))
        return list_answer(
            query,
            chosen,
            member="modelDeploymentSummaries",
            summary=lambda _, shown: shown,
            what="deployments",
        )

    def delete_deployment(self, identifier: str) -> None:
        """``DeleteCustomModelDeployment``: the deployment is gone; its ARN no longer answers."""
        record = self.find_deployment(identifier)
        self._store.delete(DEPLOYMENT_KIND, record["id"])
        if record.get("client_token"):
            self._deployment_tokens.pop(record["client_token"], None)

    # -- runtime -----------------------------------------------------------------------------------------

    def converse(self, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``Converse``: the deployed custom model (or a foundation model) answers the conversation."""
        started = time.monotonic()
        check_input("bedrock-runtime", "Converse", body)
        messages = body.get("messages") or []
        if not messages or messages[0]["role"] != "user":
            raise validation(
                "A conversation must start with a user message. "
                "Try again with a conversation that starts with a user message."
            )
        chat = [_chat_message(message) for message in messages]
        examples: Mapping[str, str] = {}
        if ":custom-model-deployment/" in model_id:
            record = self.find_deployment(model_id)
            if self._clock() < record["active_at"]:
                raise AWSError(
                    429, "ModelNotReadyException", f"The deployment {model_id} is not active yet (Creating)."
                )
            examples = self._examples(str(record["job_id"]))
        elif ":custom-model/" in model_id:
            raise validation(
                "The provided model identifier is invalid: a custom model is invoked through a custom model "
                "deployment (use its ARN as modelId)."
            )
        elif not re.fullmatch(r"[a-z0-9-]{1,63}\.[a-z0-9.:-]{1,128}", model_id.split("/")[-1]):
            raise validation(f"The provided model identifier is invalid: {model_id}")
        answer = answer_from(examples, chat, seed=self._store.seed, model=model_id)
        limit = (body.get("inferenceConfig") or {}).get("maxTokens")
        stop_reason = "end_turn"
        if isinstance(limit, int) and limit > 0 and _tokens(answer) > limit:
            answer, stop_reason = answer[: limit * 4], "max_tokens"
        system = " ".join(block.get("text", "") for block in body.get("system") or [] if isinstance(block, dict))
        input_tokens = _tokens(system) + sum(_tokens(str(message["content"])) + 4 for message in chat)
        output_tokens = _tokens(answer)
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": answer}]}},
            "stopReason": stop_reason,
            "usage": {
                "inputTokens": input_tokens,
                "outputTokens": output_tokens,
                "totalTokens": input_tokens + output_tokens,
            },
            "metrics": {"latencyMs": max(1, int((time.monotonic() - started) * 1000))},
        }

    def _examples(self, job_id: str) -> dict[str, str]:
        if job_id not in self._pairs:
            job = self.jobs.by_id(job_id)
            self._pairs[job_id] = example_pairs(self.jobs.training_data(job)) if job is not None else {}
        return self._pairs[job_id]


def _chat_message(message: dict[str, Any]) -> dict[str, Any]:
    """A Converse message as a chat message: its text blocks joined."""
    texts = [block["text"] for block in message["content"] if isinstance(block.get("text"), str)]
    return {"role": message["role"], "content": " ".join(texts)}


def _tokens(text: str) -> int:
    return max(1, -(-len(text) // 4)) if text else 0


# ---------------------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------------------


async def _create_job(dialect: BedrockDialect, request: Request, params: dict[str, str], body: Any) -> tuple[int, Any]:
    return 201, {"jobArn": await dialect.create_job(body)}


async def _get_job(dialect: BedrockDialect, request: Request, params: dict[str, str], body: Any) -> tuple[int, Any]:
    return 200, dialect.jobs.describe(dialect.jobs.find(params["jobIdentifier"]))


async def _list_jobs(dialect: BedrockDialect, request: Request, params: dict[str, str], body: Any) -> tuple[int, Any]:
    return 200, dialect.jobs.list_jobs(read_query("bedrock", "ListModelCustomizationJobs", request.query_params))


async def _stop_job(dialect: BedrockDialect, request: Request, params: dict[str, str], body: Any) -> tuple[int, Any]:
    dialect.jobs.stop(params["jobIdentifier"])
    return 200, {}


async def _get_model(dialect: BedrockDialect, request: Request, params: dict[str, str], body: Any) -> tuple[int, Any]:
    return 200, dialect.jobs.describe_model(dialect.jobs.find_model(params["modelIdentifier"]))


async def _list_models(dialect: BedrockDialect, request: Request, params: dict[str, str], body: Any) -> tuple[int, Any]:
    return 200, dialect.jobs.list_models(read_query("bedrock", "ListCustomModels", request.query_params))


async def _create_deployment(
    dialect: BedrockDialect, request: Request, params: dict[str, str], body: Any
) -> tuple[int, Any]:
    return 202, {"customModelDeploymentArn": dialect.create_deployment(body)}


async def _get_deployment(
    dialect: BedrockDialect, request: Request, params: dict[str, str], body: Any
) -> tuple[int, Any]:
    return 200, dialect.describe_deployment(dialect.find_deployment(params["customModelDeploymentIdentifier"]))


async def _list_deployments(
    dialect: BedrockDialect, request: Request, params: dict[str, str], body: Any
) -> tuple[int, Any]:
    return 200, dialect.list_deployments(read_query("bedrock", "ListCustomModelDeployments", request.query_params))


async def _delete_deployment(
    dialect: BedrockDialect, request: Request, params: dict[str, str], body: Any
) -> tuple[int, Any]:
    dialect.delete_deployment(params["customModelDeploymentIdentifier"])
    return 200, {}


async def _converse(dialect: BedrockDialect, request: Request, params: dict[str, str], body: Any) -> tuple[int, Any]:
    return 200, dialect.converse(params["modelId"], body)


_DialectHandler = Callable[[BedrockDialect, Request, dict[str, str], Any], Awaitable[tuple[int, Any]]]
#: The operations that show jobs or custom models: completed jobs' metrics files are written before they answer.
_SHOWING_JOBS = frozenset(
    {"GetModelCustomizationJob", "ListModelCustomizationJobs", "GetCustomModel", "ListCustomModels"}
)
_DEPLOYMENTS = "/model-customization/custom-model-deployments"

#: (prefix, method, path template, operation, handler): each endpoint is data.
OPERATIONS: tuple[tuple[str, str, str, str, _DialectHandler], ...] = (
    (BEDROCK_PREFIX, "POST", "/model-customization-jobs", "CreateModelCustomizationJob", _create_job),
    (BEDROCK_PREFIX, "GET", "/model-customization-jobs", "ListModelCustomizationJobs", _list_jobs),
    (BEDROCK_PREFIX, "GET", "/model-customization-jobs/{jobIdentifier}", "GetModelCustomizationJob", _get_job),
    (BEDROCK_PREFIX, "POST", "/model-customization-jobs/{jobIdentifier}/stop", "StopModelCustomizationJob", _stop_job),
    (BEDROCK_PREFIX, "GET", "/custom-models", "ListCustomModels", _list_models),
    (BEDROCK_PREFIX, "GET", "/custom-models/{modelIdentifier}", "GetCustomModel", _get_model),
    (BEDROCK_PREFIX, "POST", _DEPLOYMENTS, "CreateCustomModelDeployment", _create_deployment),
    (BEDROCK_PREFIX, "GET", _DEPLOYMENTS, "ListCustomModelDeployments", _list_deployments),
    (
        BEDROCK_PREFIX,
        "GET",
        _DEPLOYMENTS + "/{customModelDeploymentIdentifier}",
        "GetCustomModelDeployment",
        _get_deployment,
    ),
    (
        BEDROCK_PREFIX,
        "DELETE",
        _DEPLOYMENTS + "/{customModelDeploymentIdentifier}",
        "DeleteCustomModelDeployment",
        _delete_deployment,
    ),
    (RUNTIME_PREFIX, "POST", "/model/{modelId}/converse", "Converse", _converse),
)


def _match(template: str, segments: list[str]) -> dict[str, str] | None:
    parts = template.strip("/").split("/")
    if len(parts) != len(segments):
        return None
    params: dict[str, str] = {}
    for part, segment in zip(parts, segments, strict=True):
        if part.startswith("{") and part.endswith("}"):
            params[part[1:-1]] = unquote(segment)
        elif part != segment:
            return None
    return params


def _answer(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    content = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(content, status_code=status, media_type="application/json", headers=dict(headers or {}))


def _error(exc: AWSError) -> Response:
    return _answer(exc.status, exc.body(), exc.headers())


def bedrock_routes(emulator: Emulator) -> list[Route]:
    """The routes of both Bedrock services, under :data:`BEDROCK_PREFIX` and :data:`RUNTIME_PREFIX`.

    :param emulator: the emulator (its config, store and counters). The app stamps ``x-amzn-RequestId``.
    """
    dialect: BedrockDialect | None = None
    counters = emulator.counters

    async def endpoint(request: Request) -> Response:
        nonlocal dialect
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else str(raw_path)
        prefix = RUNTIME_PREFIX if path.startswith(RUNTIME_PREFIX + "/") else BEDROCK_PREFIX
        segments = path[len(prefix) :].strip("/").split("/")
        found = None
        for candidate_prefix, method, template, operation, handler in OPERATIONS:
            if candidate_prefix == prefix and method == request.method:
                params = _match(template, segments)
                if params is not None:
                    found = (template, operation, handler, params)
                    break
        counters.requests[f"{request.method} {prefix}{found[0] if found else '/{unknown}'}"] += 1
        try:
            if botocore_missing():
                raise AWSError(500, "InternalServerException", _NO_BOTOCORE)
            if dialect is None:
                dialect = BedrockDialect(emulator)
            raw = await request.body()
            query = request.scope.get("query_string", b"").decode("latin-1")
            authenticate(dialect.config, SignedRequest(request.method, path, query, request.headers, raw))
            if found is None:
                raise AWSError(
                    404, "UnknownOperationException", f"No operation {request.method} {path[len(prefix) :]}."
                )
            _, operation, handler, params = found
            check_uri("bedrock-runtime" if prefix == RUNTIME_PREFIX else "bedrock", operation, params)
            body = _json_body(raw)
            if operation in _SHOWING_JOBS:
                await dialect.write_outputs()
            status, payload = await handler(dialect, request, params, body)
        except AWSError as exc:
            return _error(exc)
        except Exception:
            logger.exception("Error while handling a Bedrock request")
            return _error(AWSError(500, "InternalServerException", "The emulator failed to handle the request."))
        return _answer(status, payload)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    return [
        Route(BEDROCK_PREFIX + "/{rest:path}", endpoint, methods=methods),
        Route(RUNTIME_PREFIX + "/{rest:path}", endpoint, methods=methods),
    ]


def _json_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise AWSError(400, "SerializationException", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise AWSError(400, "SerializationException", "The request body must be a JSON object.")
    return body
