"""The emulator's ASGI app: the API under ``/v1``, Azure's dialects under ``/openai``, admin under ``/_emulator``.

The API is the fine-tuning, files and uploads API of the spec, plus ``/v1/models`` and
``/v1/chat/completions``. With ``EmulatorConfig.ignore_metadata_filter`` the jobs list ignores its
``metadata[...]`` filter, as some gateways and older API versions do.

The same trainer, files and jobs are also served in Azure OpenAI's dialects (``../shared/azure-spec``;
details in :mod:`airflow_provider_finetune.emulator.dialects.azure`), with the server's root as the Azure endpoint:

* authoring: ``{endpoint}/openai/fine_tuning/jobs...``, ``{endpoint}/openai/files...``,
  ``{endpoint}/openai/uploads...`` with ``?api-version=2024-10-21`` or ``?api-version=2025-04-01-preview``
  (required) and the ``api-key`` header (the preview also takes ``Authorization: Bearer <API key>``);
* v1: ``{endpoint}/openai/v1/fine_tuning/jobs...``, ``{endpoint}/openai/v1/files...`` with an optional
  ``api-version`` (``v1`` or ``preview``) and the ``api-key`` header or ``Authorization: Bearer``.

Their answers carry ``apim-request-id`` and their errors have Azure's shapes.

AWS Bedrock's control plane and runtime are served under ``/bedrock`` and ``/bedrock-runtime`` (boto3's
``endpoint_url``), with SigV4 checked by botocore and AWS's errors
(:mod:`airflow_provider_finetune.emulator.dialects.bedrock`).

Fireworks AI's own dialect is served too (:mod:`airflow_provider_finetune.emulator.dialects.fireworks`), with the
server's root as the SDK's base URL: ``/v1/accounts/{account_id}/datasets...``, ``.../supervisedFineTuningJobs``,
``.../dpoJobs``, ``.../reinforcementFineTuningJobs`` (``:cancel``, ``:resume``) and
``/inference/v1/chat/completions``; its errors are ``{"code": <gRPC code>, "message", "details": []}``.

Together AI's dialect is served under ``/together/v1`` (its SDK's base URL is ``{root}/together/v1``; details in
:mod:`airflow_provider_finetune.emulator.dialects.together`), with the presigned upload addresses under
``/together/storage`` and ``POST /_emulator/together/account`` to make its price estimate refuse jobs.

Google Vertex AI's tuning dialect is served under ``/vertex`` (``google-genai``'s base URL in Vertex mode is
``{root}/vertex/``; details in :mod:`airflow_provider_finetune.emulator.dialects.vertex`):
``/vertex/{v1|v1beta1}/projects/{project}/locations/{location}/tuningJobs...`` (create, get, list with ``filter``,
``:cancel``) and ``.../endpoints/{endpoint}:generateContent``, with ``Authorization: Bearer <API key>``, Google's
errors ``{"error": {"code", "message", "status"}}``, and training data read from the Cloud Storage emulator at
``EmulatorConfig.gcs_endpoint`` (``STORAGE_EMULATOR_HOST``).

Every answer carries ``x-request-id``; every error has the API's shape
``{"error": {"message", "type", "param", "code"}}``. Requests authenticate with
``Authorization: Bearer <key>`` or ``api-key: <key>``; the checkpoint permission endpoints need the admin
key when one is configured.

Admin endpoints (not part of the API; same authentication as the API, except ``health``):

* ``GET /_emulator/health``: ``{"status": "ok"}``, without authentication, for readiness checks;
* ``GET /_emulator/counters``: requests served by route template (``"POST /openai/fine_tuning/jobs"``...),
  answers by status, jobs and files created, faults injected, distinct client connections
  (``(host, port)`` pairs) of ``/v1`` and ``/openai`` requests;
* ``POST /_emulator/reset``: sets the counters back to zero;
* ``GET /_emulator/faults`` and ``POST /_emulator/faults``: read or change the fault settings (a JSON
  object of :class:`~airflow_provider_finetune.emulator.config.FaultConfig` fields; the fault generator
  restarts from the seed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airflow_provider_finetune.emulator.config import EmulatorConfig
from airflow_provider_finetune.emulator.core import Emulator
from airflow_provider_finetune.emulator.dialects.azure import azure_error, azure_routes, surface_of
from airflow_provider_finetune.emulator.dialects.bedrock import bedrock_routes, is_bedrock_path
from airflow_provider_finetune.emulator.dialects.fireworks import fireworks_error_body, fireworks_routes
from airflow_provider_finetune.emulator.dialects.together import together_routes
from airflow_provider_finetune.emulator.dialects.vertex import vertex_routes
from airflow_provider_finetune.emulator.errors import APIError, error_body_for_path, invalid_request
from airflow_provider_finetune.emulator.faults import RAW_SEND_KEY, FaultMiddleware, is_api_path
from airflow_provider_finetune.emulator.graders import run_grader, validate_grader
from airflow_provider_finetune.emulator.params import parse_body
from airflow_provider_finetune.models import CreateFileRequest

__all__ = ["DIALECTS", "Dialect", "DialectKit", "EmulatorApp", "create_app", "register_dialect"]

logger = logging.getLogger(__name__)

_Handler = Callable[[Request], Awaitable[Any]]
_ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class EmulatorApp:
    """The ASGI app :func:`create_app` returns.

    It stamps ``x-request-id`` on every answer (``apim-request-id`` on those under ``/openai``,
    ``x-amzn-RequestId`` on Bedrock's), counts API answers (every dialect's API paths,
    :func:`~airflow_provider_finetune.emulator.faults.is_api_path`) by status and the connections API requests
    come over, then hands the request to the fault injector and the routes.

    :param app: the app behind (fault injection and routes).
    :param emulator: the state, reachable as :attr:`emulator` (tests look at it).
    """

    def __init__(self, app: _ASGIApp, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = b"req_" + secrets.token_hex(16).encode()
        api = is_api_path(scope["path"])
        azure = surface_of(scope["path"]) is not None
        aws = is_bedrock_path(scope["path"])
        statuses = self.emulator.counters.statuses if api else None
        if api:
            self.emulator.counters.connection(scope.get("client"))
        scope[RAW_SEND_KEY] = send

        async def stamped_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-request-id", request_id)]
                if azure:
                    headers.append((b"apim-request-id", request_id[len(b"req_") :]))
                if aws:
                    headers.append(
                        (b"x-amzn-RequestId", str(uuid.UUID(bytes=bytes.fromhex(request_id[4:].decode()))).encode())
                    )
                message = {**message, "headers": headers}
                if statuses is not None:
                    statuses[str(message["status"])] += 1
            await send(message)

        await self.app(scope, receive, stamped_send)


@dataclass(frozen=True)
class DialectKit:
    """What the app lends a dialect to build its routes with.

    :param endpoint: makes an endpoint of a handler: counts the route, checks the key, renders the result
        (a ``Response`` as is, anything else as JSON) and an ``APIError`` in the OpenAI shape.
    :param json: renders a payload as a JSON answer.
    :param body: reads a request's JSON body.
    :param query: reads one query parameter.
    :param form: reads a request's form.
    :param form_file: reads one file of a form: its name and bytes.
    """

    endpoint: Callable[[str, _Handler], _Handler]
    json: Callable[..., Response]
    body: Callable[[Request], Awaitable[Any]]
    query: Callable[[Request, str], str | None]
    form: Callable[[Request], Awaitable[Any]]
    form_file: Callable[[Any, str], Awaitable[tuple[str, bytes]]]


#: A dialect: the routes one service's API is served on, built over the emulator's shared state.
Dialect = Callable[[Emulator, DialectKit], list[Route]]

#: Every dialect the app mounts, by name, in mount order. A new service's dialect adds itself with
#: :func:`register_dialect`; nothing else of the emulator changes.
DIALECTS: dict[str, Dialect] = {}


def register_dialect(name: str, dialect: Dialect) -> None:
    """Mount ``dialect``'s routes in every app made from now on (a name registered again is replaced)."""
    DIALECTS[name] = dialect


def create_app(config: EmulatorConfig | None = None) -> EmulatorApp:
    """Build the emulator's ASGI app (serve it with uvicorn, or with :class:`EmulatorServer`).

    :param config: the settings; the defaults when ``None``.
    """
    config = config or EmulatorConfig()
    emulator = Emulator(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        emulator.close()

    kit = DialectKit(
        endpoint=lambda key, handler: _endpoint(emulator, key, handler, admin=False, counted=True),
        json=_json,
        body=_body,
        query=_query,
        form=_form,
        form_file=_form_file,
    )
    routes = [route for dialect in DIALECTS.values() for route in dialect(emulator, kit)]
    router = Starlette(routes=routes, exception_handlers={HTTPException: _http_error}, lifespan=lifespan)
    router.state.emulator = emulator
    faults = FaultMiddleware(router, config.faults, emulator.counters)
    emulator.faults = faults
    return EmulatorApp(faults, emulator)


# ---------------------------------------------------------------------------------------------------------
# Plumbing
# ---------------------------------------------------------------------------------------------------------


def _json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    content = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(content, status_code=status, media_type="application/json", headers=dict(headers or {}))


def _error(exc: APIError) -> Response:
    return _json(exc.body(), exc.status, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    if status == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif status == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(getattr(exc, "detail", "")) or "Error"
    return _json(error_body_for_path(request.url.path, status, message, "invalid_request_error"), status)


def _endpoint(emulator: Emulator, key: str, handler: _Handler, *, admin: bool, counted: bool) -> _Handler:
    """Wrap a handler: count the route, authenticate, and turn its result or error into an answer."""

    async def endpoint(request: Request) -> Response:
        if counted:
            emulator.counters.requests[key] += 1
        try:
            emulator.authenticate(request.headers, admin=admin)
            result = await handler(request)
        except APIError as exc:
            return _error(exc)
        except Exception:
            logger.exception("Error while handling %s", key)
            return _error(APIError(500, "The emulator failed to handle the request.", error_type="server_error"))
        return result if isinstance(result, Response) else _json(result)

    return endpoint


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid_request(
            "We could not parse the JSON body of your request. Send a JSON object with "
            "'Content-Type: application/json'."
        ) from None


def _query(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return value if value not in (None, "") else None


async def _form(request: Request) -> Any:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise invalid_request("This endpoint takes a multipart/form-data body")
    try:
        return await request.form(max_part_size=1024 * 1024)
    except Exception as exc:  # python-multipart's errors have no common base across versions
        raise invalid_request(f"The multipart body could not be read: {exc}") from None


async def _form_file(form: Any, name: str) -> tuple[str, bytes]:
    item = form.get(name)
    if item is None:
        raise invalid_request(f"Missing required parameter: '{name}'", param=name)
    if isinstance(item, UploadFile) or hasattr(item, "read"):
        return str(getattr(item, "filename", None) or name), await item.read()
    return name, str(item).encode()


# ---------------------------------------------------------------------------------------------------------
# API routes
# ---------------------------------------------------------------------------------------------------------


def _api_routes(emulator: Emulator) -> list[Route]:
    files, jobs, permissions, inference = emulator.files, emulator.jobs, emulator.permissions, emulator.inference

    async def create_file(request: Request) -> Any:
        form = await _form(request)
        try:
            filename, data = await _form_file(form, "file")
            fields: dict[str, Any] = {}
            if form.get("purpose") is not None:
                fields["purpose"] = form.get("purpose")
            else:
                raise invalid_request("Missing required parameter: 'purpose'", param="purpose")
            seconds = form.get("expires_after[seconds]")
            if seconds is not None or form.get("expires_after[anchor]") is not None:
                fields["expires_after"] = {
                    "anchor": form.get("expires_after[anchor]"),
                    "seconds": int(seconds) if isinstance(seconds, str) and seconds.isdigit() else seconds,
                }
            request_model = parse_body(CreateFileRequest, fields)
        finally:
            await form.close()
        record = files.create(
            filename=filename,
            purpose=request_model.purpose,
            data=data,
            expires_after=request_model.expires_after.seconds if request_model.expires_after else None,
        )
        return files.render(record)

    async def list_files(request: Request) -> Any:
        return files.list(
            purpose=_query(request, "purpose"),
            limit=_query(request, "limit"),
            order=_query(request, "order"),
            after=_query(request, "after"),
        )

    async def retrieve_file(request: Request) -> Any:
        return files.render(files.get(request.path_params["file_id"]))

    async def delete_file(request: Request) -> Any:
        return files.delete(request.path_params["file_id"])

    async def file_content(request: Request) -> Any:
        return Response(files.content(request.path_params["file_id"]), media_type="application/octet-stream")

    async def create_upload(request: Request) -> Any:
        return files.create_upload(await _body(request))

    async def add_upload_part(request: Request) -> Any:
        form = await _form(request)
        try:
            _, data = await _form_file(form, "data")
        finally:
            await form.close()
        return files.add_part(request.path_params["upload_id"], data)

    async def complete_upload(request: Request) -> Any:
        return files.complete_upload(request.path_params["upload_id"], await _body(request))

    async def cancel_upload(request: Request) -> Any:
        return files.cancel_upload(request.path_params["upload_id"])

    async def create_job(request: Request) -> Any:
        return jobs.create(await _body(request))

    async def list_jobs(request: Request) -> Any:
        metadata: dict[str, str] | None = None
        # Some gateways and older API versions drop the filter: the emulator can be told to do the same.
        ignored = emulator.config.ignore_metadata_filter
        for name, value in [] if ignored else request.query_params.multi_items():
            if name.startswith("metadata[") and name.endswith("]"):
                metadata = metadata or {}
                metadata[name[len("metadata[") : -1]] = value
            elif name == "metadata" and value == "null":
                metadata = metadata or {}
        return jobs.list(after=_query(request, "after"), limit=_query(request, "limit"), metadata=metadata)

    async def retrieve_job(request: Request) -> Any:
        return jobs.retrieve(request.path_params["fine_tuning_job_id"])

    async def cancel_job(request: Request) -> Any:
        return jobs.cancel(request.path_params["fine_tuning_job_id"])

    async def pause_job(request: Request) -> Any:
        return jobs.pause(request.path_params["fine_tuning_job_id"])

    async def resume_job(request: Request) -> Any:
        return jobs.resume(request.path_params["fine_tuning_job_id"])

    async def list_events(request: Request) -> Any:
        return jobs.events(
            request.path_params["fine_tuning_job_id"], after=_query(request, "after"), limit=_query(request, "limit")
        )

    async def list_checkpoints(request: Request) -> Any:
        return jobs.checkpoints(
            request.path_params["fine_tuning_job_id"], after=_query(request, "after"), limit=_query(request, "limit")
        )

    async def list_permissions(request: Request) -> Any:
        return permissions.list(
            request.path_params["fine_tuned_model_checkpoint"],
            project_id=_query(request, "project_id"),
            after=_query(request, "after"),
            limit=_query(request, "limit"),
            order=_query(request, "order"),
        )

    async def create_permissions(request: Request) -> Any:
        return permissions.create(request.path_params["fine_tuned_model_checkpoint"], await _body(request))

    async def delete_permission(request: Request) -> Any:
        return permissions.delete(
            request.path_params["fine_tuned_model_checkpoint"], request.path_params["permission_id"]
        )

    async def run_grader_endpoint(request: Request) -> Any:
        return run_grader(await _body(request), seed=emulator.store.seed)

    async def validate_grader_endpoint(request: Request) -> Any:
        return validate_grader(await _body(request))

    async def list_models(request: Request) -> Any:
        return inference.list_models()

    async def retrieve_model(request: Request) -> Any:
        return inference.retrieve_model(request.path_params["model"])

    async def chat_completion(request: Request) -> Any:
        return inference.chat_completion(await _body(request))

    job = "/fine_tuning/jobs/{fine_tuning_job_id}"
    permissions_path = "/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions"
    table: list[tuple[str, str, _Handler, bool]] = [
        ("POST", "/files", create_file, False),
        ("GET", "/files", list_files, False),
        ("GET", "/files/{file_id}", retrieve_file, False),
        ("DELETE", "/files/{file_id}", delete_file, False),
        ("GET", "/files/{file_id}/content", file_content, False),
        ("POST", "/uploads", create_upload, False),
        ("POST", "/uploads/{upload_id}/parts", add_upload_part, False),
        ("POST", "/uploads/{upload_id}/complete", complete_upload, False),
        ("POST", "/uploads/{upload_id}/cancel", cancel_upload, False),
        ("POST", "/fine_tuning/jobs", create_job, False),
        ("GET", "/fine_tuning/jobs", list_jobs, False),
        ("GET", job, retrieve_job, False),
        ("POST", job + "/cancel", cancel_job, False),
        ("POST", job + "/pause", pause_job, False),
        ("POST", job + "/resume", resume_job, False),
        ("GET", job + "/events", list_events, False),
        ("GET", job + "/checkpoints", list_checkpoints, False),
        ("GET", permissions_path, list_permissions, True),
        ("POST", permissions_path, create_permissions, True),
        ("DELETE", permissions_path + "/{permission_id}", delete_permission, True),
        ("POST", "/fine_tuning/alpha/graders/run", run_grader_endpoint, False),
        ("POST", "/fine_tuning/alpha/graders/validate", validate_grader_endpoint, False),
        ("GET", "/models", list_models, False),
        ("GET", "/models/{model}", retrieve_model, False),
        ("POST", "/chat/completions", chat_completion, False),
    ]
    return [
        Route(
            "/v1" + path,
            _endpoint(emulator, f"{method} /v1{path}", handler, admin=admin, counted=True),
            methods=[method],
        )
        for method, path, handler, admin in table
    ]


# ---------------------------------------------------------------------------------------------------------
# Azure routes
# ---------------------------------------------------------------------------------------------------------


def _azure_routes(emulator: Emulator) -> list[Route]:
    """The Azure surfaces' routes: each handler authenticates and checks ``api-version`` itself."""

    def wrap(key: str, handler: _Handler) -> _Handler:
        async def endpoint(request: Request) -> Response:
            emulator.counters.requests[key] += 1
            try:
                result = await handler(request)
            except APIError as exc:
                return _json(azure_error(request.url.path, exc), exc.status, exc.headers)
            except Exception:
                logger.exception("Error while handling %s", key)
                failure = APIError(500, "The emulator failed to handle the request.", error_type="server_error")
                return _json(azure_error(request.url.path, failure), 500)
            return result if isinstance(result, Response) else _json(result)

        return endpoint

    helpers = {"body": _body, "query": _query, "form": _form, "form_file": _form_file}
    return azure_routes(emulator, wrap, _json, helpers)


# ---------------------------------------------------------------------------------------------------------
# Fireworks routes
# ---------------------------------------------------------------------------------------------------------


def _fireworks_routes(emulator: Emulator) -> list[Route]:
    """Fireworks' routes (``/v1/accounts/{account_id}/...``): Bearer keys, gateway-shaped errors."""

    def wrap(key: str, handler: _Handler) -> _Handler:
        async def endpoint(request: Request) -> Response:
            emulator.counters.requests[key] += 1
            try:
                emulator.authenticate(request.headers)
                result = await handler(request)
            except APIError as exc:
                return _json(fireworks_error_body(exc), exc.status, exc.headers)
            except Exception:
                logger.exception("Error while handling %s", key)
                failure = APIError(500, "The emulator failed to handle the request.", error_type="server_error")
                return _json(fireworks_error_body(failure), 500)
            return result if isinstance(result, Response) else _json(result)

        return endpoint

    helpers = {"body": _body, "query": _query, "form": _form, "form_file": _form_file}
    return fireworks_routes(emulator, wrap, helpers)


# ---------------------------------------------------------------------------------------------------------
# Together routes
# ---------------------------------------------------------------------------------------------------------


def _together_routes(emulator: Emulator) -> list[Route]:
    """Together AI's dialect under ``/together/v1`` (:mod:`airflow_provider_finetune.emulator.dialects.together`)."""

    def endpoint(key: str, handler: _Handler) -> _Handler:
        return _endpoint(emulator, key, handler, admin=False, counted=True)

    helpers = {"body": _body, "query": _query, "form": _form, "json": _json}
    routes, emulator.together = together_routes(emulator, endpoint, helpers)
    return routes


# ---------------------------------------------------------------------------------------------------------
# Admin routes
# ---------------------------------------------------------------------------------------------------------


def _admin_routes(emulator: Emulator) -> list[Route]:
    async def health(request: Request) -> Response:
        return _json({"status": "ok"})

    async def counters(request: Request) -> Any:
        return emulator.counters.as_dict()

    async def reset(request: Request) -> Any:
        emulator.counters.reset()
        return emulator.counters.as_dict()

    async def get_faults(request: Request) -> Any:
        assert emulator.faults is not None
        return emulator.faults.config.as_dict()

    async def set_faults(request: Request) -> Any:
        assert emulator.faults is not None
        body = await _body(request)
        if not isinstance(body, dict):
            raise invalid_request("The request body must be a JSON object of fault settings")
        try:
            config = emulator.faults.config.updated(body)
        except (ValueError, TypeError) as exc:
            raise invalid_request(str(exc)) from None
        emulator.faults.configure(config)
        emulator.jobs.faults = config
        return config.as_dict()

    def admin(key: str, handler: _Handler) -> _Handler:
        return _endpoint(emulator, key, handler, admin=False, counted=False)

    return [
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/_emulator/counters", admin("counters", counters), methods=["GET"]),
        Route("/_emulator/reset", admin("reset", reset), methods=["POST"]),
        Route("/_emulator/faults", admin("faults", get_faults), methods=["GET"]),
        Route("/_emulator/faults", admin("faults", set_faults), methods=["POST"]),
    ]


register_dialect("openai", lambda emulator, kit: _api_routes(emulator))
register_dialect("azure", lambda emulator, kit: _azure_routes(emulator))
register_dialect("fireworks", lambda emulator, kit: _fireworks_routes(emulator))
register_dialect("together", lambda emulator, kit: _together_routes(emulator))
register_dialect("admin", lambda emulator, kit: _admin_routes(emulator))
register_dialect("bedrock", lambda emulator, kit: bedrock_routes(emulator))
register_dialect("vertex", vertex_routes)
