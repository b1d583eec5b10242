"""The Azure OpenAI dialects of the fine-tuning API, served over the same trainer, files and jobs as ``/v1``.

Two surfaces, as published in ``../shared/azure-spec`` (its README tabulates every difference from OpenAI):

* **authoring** (versioned), under ``/openai``: ``/openai/fine_tuning/jobs...``, ``/openai/files...``,
  ``/openai/uploads...``. The ``api-version`` query parameter is required: ``2024-10-21`` (stable) or
  ``2025-04-01-preview``. A request without it is refused ``400 invalidPayload`` (a required parameter is
  missing; target ``api-version``); any other value is ``404 notFound`` (no such operation in that version),
  the same answer as the preview-only ``pause``/``resume`` on ``2024-10-21``. Authentication: the
  ``api-key`` header; ``2024-10-21`` declares no other scheme, so a bearer token alone is ``401``; the
  preview also declares OAuth2 (Entra ID), and the emulator accepts ``Authorization: Bearer <API key>``
  there (it has no token issuer: the API key stands in for the token).
  Answers use Azure's words and shapes: create job ``201`` with ``Location``, statuses ``pending`` (for
  ``validating_files`` and ``queued``), ``running``, ``succeeded``, ``failed``, ``cancelled``; the preview
  adds ``paused`` and ``resuming`` (a resumed job waiting to train again); ``2024-10-21`` has no word for
  a job paused through another surface and reports it ``pending``. Jobs carry ``organisation_id`` and
  ``suffix``, no ``metadata``; hyperparameters are numbers, ``-1`` standing for the service's default
  (``"auto"`` is refused). The create body takes only the version's fields (unknown ones, ``metadata``
  included, are ``400 invalidPayload``), ``suffix`` at most 40 characters of ``a-z A-Z 0-9 - _``. Event
  level ``warning`` instead of ``warn``; the checkpoints page has no ``first_id``/``last_id``; the files
  page has no ``has_more``; ``DELETE`` of an ended job ``204`` (a job that has not ended is ``409
  unexpectedEntityState``: cancel it first); ``POST /files`` ``201`` with ``Location``. Fields without a
  value are left out (the authoring schemas declare no ``null``). Errors:
  ``{"error": {"code": <camelCase>, "message", "target", "details": [], "innererror": {...}}}``.
* **v1**, under ``/openai/v1``: OpenAI's shapes (create ``200``, ``metadata`` on create and job), with
  ``api-version`` optional (``v1`` or ``preview``; other values ``400``), the ``api-key`` header or
  ``Authorization: Bearer``, no metadata filter on the jobs list (``metadata[...]`` is ignored), no job
  ``DELETE`` (``405``), no ``/uploads`` (``404``), and a file upload that requires ``expires_after``
  (``expires_after[seconds]`` and ``expires_after[anchor]=created_at``) besides ``file`` and ``purpose``.
  A paused job is reported ``paused``, although the v1 status enum lists only OpenAI's six values: its
  README asks clients to parse statuses leniently, and this is what pause produces. Errors:
  ``{"error": {"code", "message", "param", "type": "error", "inner_error"}}``.

Every answer under ``/openai`` carries ``apim-request-id`` (stamped by the app).
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airflow_provider_finetune.emulator.errors import (
    APIError,
    azure_error_body,
    check_accept,
    invalid_request,
    not_found,
)
from airflow_provider_finetune.emulator.trainer import SimJob

__all__ = [
    "AUTHORING_PREFIX",
    "AUTHORING_VERSIONS",
    "V1_PREFIX",
    "V1_VERSIONS",
    "AuthoringVersion",
    "authoring_status",
    "azure_routes",
    "event_level",
    "surface_of",
]

#: Path prefix of the authoring surface.
AUTHORING_PREFIX = "/openai"
#: Path prefix of the v1 surface.
V1_PREFIX = "/openai/v1"
#: The values of ``api-version`` the v1 surface takes (it is optional there).
V1_VERSIONS = ("v1", "preview")

_SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
_INTEGER_HYPERPARAMETERS = frozenset({"n_epochs", "batch_size"})
_INT32 = 2**31 - 1


@dataclass(frozen=True)
class AuthoringVersion:
    """What one ``api-version`` of the authoring surface has.

    :param name: the ``api-version`` value.
    :param preview: whether it is the preview (pause/resume, ``integrations`` and ``method`` on create,
        bearer tokens, ``paused``/``resuming`` statuses, file ``expires_after``, files paging).
    :param create_fields: the fields the create-job body may hold.
    :param file_purposes: the purposes ``POST /files`` takes.
    """

    name: str
    preview: bool
    create_fields: frozenset[str]
    file_purposes: tuple[str, ...]


_STABLE_FIELDS = frozenset({"model", "training_file", "validation_file", "hyperparameters", "suffix", "seed"})
_STABLE_PURPOSES = ("fine-tune", "fine-tune-results", "assistants", "assistants_output", "batch")

#: The authoring versions the emulator serves.
AUTHORING_VERSIONS: dict[str, AuthoringVersion] = {
    "2024-10-21": AuthoringVersion("2024-10-21", False, _STABLE_FIELDS, _STABLE_PURPOSES),
    "2025-04-01-preview": AuthoringVersion(
        "2025-04-01-preview",
        True,
        _STABLE_FIELDS | {"integrations", "method"},
        (*_STABLE_PURPOSES, "batch_output", "evals", "evals_output"),
    ),
}

_V1_FILE_PURPOSES = ("assistants", "batch", "fine-tune", "evals")


def surface_of(path: str) -> str | None:
    """Which Azure surface a request path belongs to: ``"v1"``, ``"authoring"`` or ``None`` (not Azure)."""
    if path == V1_PREFIX or path.startswith(V1_PREFIX + "/"):
        return "v1"
    if path == AUTHORING_PREFIX or path.startswith(AUTHORING_PREFIX + "/"):
        return "authoring"
    return None


def authoring_status(status: str, *, preview: bool, resuming: bool = False) -> str:
    """Azure's word for a job status of the trainer (OpenAI's words).

    :param status: the trainer's status.
    :param preview: whether the answer is for the preview (which has ``paused``, ``pausing``, ``resuming``).
    :param resuming: whether a ``queued`` job is waiting to train again after a resume.
    """
    if status in ("validating_files", "queued"):
        return "resuming" if preview and resuming else "pending"
    if status in ("paused", "pausing"):
        # 2024-10-21 has no word for it: the job waits, it is neither active nor ended.
        return status if preview else "pending"
    return status


def event_level(level: str) -> str:
    """Azure authoring's event level: ``warning`` for OpenAI's ``warn``."""
    return "warning" if level == "warn" else level


def _drop_nulls(value: Any) -> Any:
    """Leave out fields without a value: the authoring schemas are Swagger/OpenAPI 3.0 without ``null``."""
    if isinstance(value, dict):
        return {key: _drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_drop_nulls(item) for item in value]
    return value


def _defaults_as_minus_one(hyperparameters: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: -1 if value == "auto" else value for key, value in (hyperparameters or {}).items()}


# ---------------------------------------------------------------------------------------------------------
# Authentication and api-version
# ---------------------------------------------------------------------------------------------------------


def _bearer(headers: Mapping[str, str], *, raw: bool = False) -> str | None:
    authorization = headers.get("authorization", "").strip()
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    # v1 declares an apiKey scheme named "authorization": the key itself as the header's value.
    return authorization if raw and " " not in authorization else None


def _api_key_header(headers: Mapping[str, str]) -> str | None:
    value = headers.get("api-key", "").strip()
    return value or None


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="unauthorized")


def _check_key(config: Any, key: str) -> None:
    api_key, admin_key = config.api_key, config.admin_key
    good = api_key is None or hmac.compare_digest(key.encode(), api_key.encode())
    good = good or (admin_key is not None and hmac.compare_digest(key.encode(), admin_key.encode()))
    if not good:
        # The key is never echoed, not even in part.
        raise _unauthorized(
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
            "key for an active subscription and use a correct regional API endpoint for your resource."
        )


_MISSING_KEY = (
    "Access denied due to missing subscription key. Make sure to include the subscription key when making "
    "requests to an API."
)


def _authoring_version(request: Request) -> AuthoringVersion:
    """Authenticate an authoring request and return its api-version (required)."""
    headers = request.headers
    api_key, bearer = _api_key_header(headers), _bearer(headers)
    if api_key is None and bearer is None:
        raise _unauthorized(_MISSING_KEY)
    value = request.query_params.get("api-version")
    if not value:
        raise invalid_request("Missing required query parameter 'api-version'.", param="api-version")
    version = AUTHORING_VERSIONS.get(value)
    if version is None:
        raise not_found(
            f"API version not supported: {value}. Supported versions: {', '.join(AUTHORING_VERSIONS)}.",
            param="api-version",
        )
    if api_key is not None:
        _check_key(request.app.state.emulator.config, api_key)
    elif not version.preview:
        raise _unauthorized(
            f"api-version {value} accepts only the 'api-key' header; bearer tokens need 2025-04-01-preview."
        )
    else:
        assert bearer is not None
        _check_key(request.app.state.emulator.config, bearer)
    return version


def _v1_version(request: Request) -> str:
    """Authenticate a v1 request and return its api-version (optional, ``v1`` by default)."""
    key = _api_key_header(request.headers) or _bearer(request.headers, raw=True)
    if key is None:
        raise _unauthorized(_MISSING_KEY)
    _check_key(request.app.state.emulator.config, key)
    value = request.query_params.get("api-version")
    if value is None:
        return "v1"
    if value not in V1_VERSIONS:
        raise invalid_request(
            f"API version not supported: {value!r}. This endpoint takes api-version 'v1' or 'preview'.",
            param="api-version",
            code="BadRequest",
        )
    return value


# ---------------------------------------------------------------------------------------------------------
# Request translation (authoring -> the emulator's OpenAI bodies)
# ---------------------------------------------------------------------------------------------------------


def _numbers(block: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    """Check a hyperparameters object: numbers only (``-1`` = the default, left out); no ``"auto"``."""
    if not isinstance(block, dict):
        raise invalid_request(f"'{where}' must be an object.", param=where)
    result: dict[str, Any] = {}
    for name, value in block.items():
        if name not in allowed:
            raise invalid_request(f"Unknown field '{where}.{name}'.", param=f"{where}.{name}")
        integer = name in _INTEGER_HYPERPARAMETERS
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            expected = "an integer" if integer else "a number"
            raise invalid_request(
                f"'{where}.{name}' must be {expected} (-1 for the default), got {value!r}.", param=f"{where}.{name}"
            )
        if value != -1:
            result[name] = value
    return result


def authoring_create_body(body: Any, version: AuthoringVersion) -> dict[str, Any]:
    """Check a create-job body the authoring way and return the equivalent OpenAI body.

    :raises APIError: 400 for a field the version does not have, a suffix longer than 40 characters or of
        other characters, a hyperparameter that is not a number.
    """
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    unknown = sorted(set(body) - version.create_fields)
    if unknown:
        raise invalid_request(
            f"Unknown field '{unknown[0]}': api-version {version.name} does not accept it "
            f"(accepted: {', '.join(sorted(version.create_fields))}).",
            param=unknown[0],
        )
    result = dict(body)
    suffix = body.get("suffix")
    if suffix is not None and not (isinstance(suffix, str) and _SUFFIX.match(suffix)):
        raise invalid_request("'suffix' must be 1 to 40 characters of a-z, A-Z, 0-9, '-' and '_'.", param="suffix")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _INT32):
        raise invalid_request(f"'seed' must be an integer from 0 to {_INT32}.", param="seed")
    if "hyperparameters" in body:
        hyperparameters = _numbers(body["hyperparameters"], _HYPERPARAMETERS, "hyperparameters")
        result.pop("hyperparameters")
        if hyperparameters:
            result["hyperparameters"] = hyperparameters
    method = body.get("method")
    if method is not None:
        if not isinstance(method, dict) or method.get("type") not in ("supervised", "dpo"):
            raise invalid_request("'method.type' must be 'supervised' or 'dpo'.", param="method.type")
        kind = method["type"]
        extra = sorted(set(method) - {"type", kind})
        if extra:
            raise invalid_request(f"Unknown field 'method.{extra[0]}'.", param=f"method.{extra[0]}")
        block = method.get(kind) or {}
        if not isinstance(block, dict) or set(block) - {"hyperparameters"}:
            raise invalid_request(f"'method.{kind}' takes only 'hyperparameters'.", param=f"method.{kind}")
        allowed = (*_HYPERPARAMETERS, "beta", "l2_multiplier") if kind == "dpo" else _HYPERPARAMETERS
        where = f"method.{kind}.hyperparameters"
        hyperparameters = _numbers(block.get("hyperparameters") or {}, allowed, where)
        # The simulated trainer has no L2 regularisation: the value is checked, then not used.
        hyperparameters.pop("l2_multiplier", None)
        result["method"] = {"type": kind, kind: {"hyperparameters": hyperparameters}}
    return result


# ---------------------------------------------------------------------------------------------------------
# Answer translation (the emulator's OpenAI objects -> authoring)
# ---------------------------------------------------------------------------------------------------------


def _resuming(job: SimJob, now: float) -> bool:
    """Whether the job waits in a hold that a resume started (a ``queued`` hold after a ``paused`` one)."""
    holds = job.record["holds"]
    if not holds:
        return False
    start, end, status = holds[-1]
    return bool(status == "queued" and start <= now and (end is None or now < end))


def authoring_job(job: dict[str, Any], version: AuthoringVersion, *, resuming: bool = False) -> dict[str, Any]:
    """An OpenAI ``fine_tuning.job`` as the authoring surface shows it."""
    result: dict[str, Any] = {
        "object": "fine_tuning.job",
        "id": job["id"],
        "created_at": job["created_at"],
        "status": authoring_status(job["status"], preview=version.preview, resuming=resuming),
        "model": job["model"],
        "fine_tuned_model": job["fine_tuned_model"],
        "training_file": job["training_file"],
        "validation_file": job["validation_file"],
        "result_files": job["result_files"],
        "finished_at": job["finished_at"],
        "organisation_id": job["organization_id"],
        "trained_tokens": job["trained_tokens"],
        "error": job["error"],
        "estimated_finish": job["estimated_finish"],
        "hyperparameters": _defaults_as_minus_one(job["hyperparameters"]),
        "suffix": job.get("user_provided_suffix"),
        "seed": job["seed"],
    }
    if version.preview:
        result["integrations"] = job.get("integrations") or []
        method = job.get("method") or {}
        kind = method.get("type", "supervised")
        block = method.get(kind) or {}
        result["method"] = {
            "type": kind,
            kind: {"hyperparameters": _defaults_as_minus_one(block.get("hyperparameters"))},
        }
    return dict(_drop_nulls(result))


def authoring_file(record: dict[str, Any], version: AuthoringVersion) -> dict[str, Any]:
    """An OpenAI ``file`` as the authoring surface shows it (``expires_at`` only in the preview)."""
    result = {key: record.get(key) for key in ("object", "id", "created_at", "bytes", "filename", "purpose", "status")}
    if version.preview:
        result["expires_at"] = record.get("expires_at")
    return dict(_drop_nulls(result))


def authoring_event(event: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``fine_tuning.job.event`` as the authoring surface shows it (``warning``, not ``warn``)."""
    return dict(_drop_nulls({**event, "level": event_level(str(event["level"]))}))


# ---------------------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------------------

_Handler = Callable[[Request], Awaitable[Any]]
_Wrap = Callable[[str, _Handler], Callable[[Request], Awaitable[Response]]]
_Json = Callable[..., Response]


def azure_routes(emulator: Any, wrap: _Wrap, json_response: _Json, helpers: Mapping[str, Any]) -> list[Route]:
    """The routes of both Azure surfaces.

    :param emulator: the emulator's state.
    :param wrap: makes an endpoint of a handler: counts the route (its key), renders results and errors.
    :param json_response: renders a JSON answer (payload, status, headers).
    :param helpers: the app's request readers: ``body``, ``query``, ``form``, ``form_file``.
    """
    files, jobs, clock = emulator.files, emulator.jobs, emulator.config.clock
    body_of, query, form_of, form_file = helpers["body"], helpers["query"], helpers["form"], helpers["form_file"]

    # -- authoring ---------------------------------------------------------------------------------------

    def authoring_job_of(job_id: str, version: AuthoringVersion, rendered: dict[str, Any] | None = None) -> Any:
        job = jobs.get(job_id)
        now = clock()
        return authoring_job(rendered or jobs.render(job, now), version, resuming=_resuming(job, now))

    async def a_create_file(request: Request) -> Any:
        version = _authoring_version(request)
        form = await form_of(request)
        try:
            filename, data = await form_file(form, "file")
            purpose = form.get("purpose")
            if purpose is None:
                raise invalid_request("Missing required parameter: 'purpose'", param="purpose")
            if purpose not in version.file_purposes:
                raise invalid_request(
                    f"'purpose' must be one of {', '.join(version.file_purposes)}; got {purpose!r}.", param="purpose"
                )
            seconds = form.get("expires_after.seconds", form.get("expires_after[seconds]"))
            anchor = form.get("expires_after.anchor", form.get("expires_after[anchor]"))
        finally:
            await form.close()
        expires_after = None
        if seconds is not None or anchor is not None:
            if not version.preview:
                raise invalid_request(
                    f"api-version {version.name} does not take 'expires_after'.", param="expires_after"
                )
            expires_after = _expiry(seconds, anchor, minimum=1_209_600, maximum=2_592_000)
        record = files.create(filename=filename, purpose=str(purpose), data=data, expires_after=expires_after)
        location = f"{request.base_url}openai/files/{record['id']}?api-version={version.name}"
        return json_response(authoring_file(files.render(record), version), 201, {"Location": location})

    async def a_list_files(request: Request) -> Any:
        version = _authoring_version(request)
        if version.preview:
            page = files.list(
                purpose=query(request, "purpose"),
                limit=query(request, "limit"),
                order=query(request, "order"),
                after=query(request, "after"),
            )
        else:
            page = files.list(purpose=query(request, "purpose"), limit=None, order=None, after=None)
        return {"object": "list", "data": [authoring_file(item, version) for item in page["data"]]}

    async def a_retrieve_file(request: Request) -> Any:
        version = _authoring_version(request)
        return authoring_file(files.render(files.get(request.path_params["file_id"])), version)

    async def a_delete_file(request: Request) -> Any:
        _authoring_version(request)
        return files.delete(request.path_params["file_id"])

    async def a_file_content(request: Request) -> Any:
        _authoring_version(request)
        # The authoring descriptions declare both types for this answer (JSON for its errors).
        check_accept(request.headers.get("accept"), "application/octet-stream", "application/json")
        return Response(files.content(request.path_params["file_id"]), media_type="application/octet-stream")

    def authoring_upload(upload: dict[str, Any], version: AuthoringVersion) -> dict[str, Any]:
        file_record = upload.get("file")
        result = {**upload, "file": authoring_file(file_record, version) if file_record else None}
        return dict(_drop_nulls(result))

    async def a_create_upload(request: Request) -> Any:
        version = _authoring_version(request)
        body = await body_of(request)
        if isinstance(body, dict) and "expires_after" in body:
            raise invalid_request("Unknown field 'expires_after'.", param="expires_after")
        upload = files.create_upload(body)
        location = f"{request.base_url}openai/uploads/{upload['id']}?api-version={version.name}"
        return json_response(authoring_upload(upload, version), 200, {"Location": location})

    async def a_add_upload_part(request: Request) -> Any:
        _authoring_version(request)
        form = await form_of(request)
        try:
            _, data = await form_file(form, "data")
        finally:
            await form.close()
        part = files.add_part(request.path_params["upload_id"], data)
        # Azure stores parts as blocks of a blob: the part names its block.
        part["azure_block_id"] = base64.b64encode(part["id"].encode()).decode()
        return part

    async def a_complete_upload(request: Request) -> Any:
        version = _authoring_version(request)
        return authoring_upload(
            files.complete_upload(request.path_params["upload_id"], await body_of(request)), version
        )

    async def a_cancel_upload(request: Request) -> Any:
        version = _authoring_version(request)
        return authoring_upload(files.cancel_upload(request.path_params["upload_id"]), version)

    async def a_create_job(request: Request) -> Any:
        version = _authoring_version(request)
        body = authoring_create_body(await body_of(request), version)
        rendered = jobs.create(body, dialect="azure")
        location = f"{request.base_url}openai/fine_tuning/jobs/{rendered['id']}?api-version={version.name}"
        return json_response(authoring_job_of(rendered["id"], version, rendered), 201, {"Location": location})

    async def a_list_jobs(request: Request) -> Any:
        version = _authoring_version(request)
        page = jobs.list(after=query(request, "after"), limit=query(request, "limit"), metadata=None)
        data = [authoring_job_of(item["id"], version, item) for item in page["data"]]
        return {"object": "list", "data": data, "has_more": page["has_more"]}

    async def a_retrieve_job(request: Request) -> Any:
        version = _authoring_version(request)
        return authoring_job_of(request.path_params["fine_tuning_job_id"], version)

    async def a_delete_job(request: Request) -> Any:
        _authoring_version(request)
        jobs.delete(request.path_params["fine_tuning_job_id"])
        return Response(status_code=204)

    def transition(action: str, *, preview_only: bool) -> _Handler:
        async def handler(request: Request) -> Any:
            version = _authoring_version(request)
            if preview_only and not version.preview:
                raise not_found(
                    f"The {action} operation does not exist in api-version {version.name}; it needs "
                    "2025-04-01-preview or later."
                )
            job_id = request.path_params["fine_tuning_job_id"]
            return authoring_job_of(job_id, version, getattr(jobs, action)(job_id))

        return handler

    async def a_events(request: Request) -> Any:
        _authoring_version(request)
        page = jobs.events(
            request.path_params["fine_tuning_job_id"], after=query(request, "after"), limit=query(request, "limit")
        )
        return {
            "object": "list",
            "data": [authoring_event(item) for item in page["data"]],
            "has_more": page["has_more"],
        }

    async def a_checkpoints(request: Request) -> Any:
        _authoring_version(request)
        page = jobs.checkpoints(
            request.path_params["fine_tuning_job_id"], after=query(request, "after"), limit=query(request, "limit")
        )
        return {"object": "list", "data": page["data"], "has_more": page["has_more"]}

    # -- v1 ----------------------------------------------------------------------------------------------

    async def v_create_file(request: Request) -> Any:
        _v1_version(request)
        form = await form_of(request)
        try:
            filename, data = await form_file(form, "file")
            purpose = form.get("purpose")
            seconds = form.get("expires_after[seconds]", form.get("expires_after.seconds"))
            anchor = form.get("expires_after[anchor]", form.get("expires_after.anchor"))
        finally:
            await form.close()
        if purpose is None:
            raise invalid_request("Missing required parameter: 'purpose'", param="purpose")
        if purpose not in _V1_FILE_PURPOSES:
            raise invalid_request(
                f"'purpose' must be one of {', '.join(_V1_FILE_PURPOSES)}; got {purpose!r}.", param="purpose"
            )
        if seconds is None or anchor is None:
            raise invalid_request(
                "Missing required parameter: 'expires_after' (send expires_after[seconds] and "
                "expires_after[anchor]=created_at).",
                param="expires_after",
            )
        expires_after = _expiry(seconds, anchor, minimum=1, maximum=_INT32)
        record = files.create(filename=filename, purpose=str(purpose), data=data, expires_after=expires_after)
        return files.render(record)

    async def v_list_files(request: Request) -> Any:
        _v1_version(request)
        return files.list(purpose=query(request, "purpose"), limit=None, order=None, after=None)

    async def v_retrieve_file(request: Request) -> Any:
        _v1_version(request)
        return files.render(files.get(request.path_params["file_id"]))

    async def v_delete_file(request: Request) -> Any:
        _v1_version(request)
        return files.delete(request.path_params["file_id"])

    async def v_file_content(request: Request) -> Any:
        _v1_version(request)
        check_accept(request.headers.get("accept"), "application/octet-stream")
        return Response(files.content(request.path_params["file_id"]), media_type="application/octet-stream")

    async def v_create_job(request: Request) -> Any:
        _v1_version(request)
        return jobs.create(await body_of(request), dialect="azure")

    async def v_list_jobs(request: Request) -> Any:
        _v1_version(request)
        # v1 lists by after and limit only: a metadata[...] filter is not part of it and is ignored.
        return jobs.list(after=query(request, "after"), limit=query(request, "limit"), metadata=None)

    def v_job(action: str) -> _Handler:
        async def handler(request: Request) -> Any:
            _v1_version(request)
            job_id = request.path_params["fine_tuning_job_id"]
            if action == "events":
                return jobs.events(job_id, after=query(request, "after"), limit=query(request, "limit"))
            if action == "checkpoints":
                return jobs.checkpoints(job_id, after=query(request, "after"), limit=query(request, "limit"))
            return getattr(jobs, action)(job_id)

        return handler

    async def a_chat(request: Request) -> Any:
        # Azure serves a model under a deployment of it; here every model is deployed under its own name.
        _authoring_version(request)
        body = await body_of(request)
        return emulator.inference.chat_completion({**body, "model": request.path_params["deployment_id"]})

    async def v_chat(request: Request) -> Any:
        _v1_version(request)
        return emulator.inference.chat_completion(await body_of(request))

    job = "/fine_tuning/jobs/{fine_tuning_job_id}"
    # Each endpoint with its authoring handler and its v1 handler (None where that surface does not serve it).
    table: list[tuple[str, str, _Handler | None, _Handler | None]] = [
        ("POST", "/files", a_create_file, v_create_file),
        ("GET", "/files", a_list_files, v_list_files),
        ("GET", "/files/{file_id}", a_retrieve_file, v_retrieve_file),
        ("DELETE", "/files/{file_id}", a_delete_file, v_delete_file),
        ("GET", "/files/{file_id}/content", a_file_content, v_file_content),
        ("POST", "/uploads", a_create_upload, None),
        ("POST", "/uploads/{upload_id}/parts", a_add_upload_part, None),
        ("POST", "/uploads/{upload_id}/complete", a_complete_upload, None),
        ("POST", "/uploads/{upload_id}/cancel", a_cancel_upload, None),
        ("POST", "/fine_tuning/jobs", a_create_job, v_create_job),
        ("GET", "/fine_tuning/jobs", a_list_jobs, v_list_jobs),
        ("GET", job, a_retrieve_job, v_job("retrieve")),
        ("DELETE", job, a_delete_job, None),
        ("POST", job + "/cancel", transition("cancel", preview_only=False), v_job("cancel")),
        ("POST", job + "/pause", transition("pause", preview_only=True), v_job("pause")),
        ("POST", job + "/resume", transition("resume", preview_only=True), v_job("resume")),
        ("GET", job + "/events", a_events, v_job("events")),
        ("GET", job + "/checkpoints", a_checkpoints, v_job("checkpoints")),
        ("POST", "/deployments/{deployment_id}/chat/completions", a_chat, None),
        ("POST", "/chat/completions", None, v_chat),
    ]
    authoring = [(method, path, handler) for method, path, handler, _ in table if handler is not None]
    v1 = [(method, path, handler) for method, path, _, handler in table if handler is not None]
    routes = []
    # v1 first: its paths would otherwise be taken for authoring paths with an id "v1".
    for prefix, served in ((V1_PREFIX, v1), (AUTHORING_PREFIX, authoring)):
        for method, path, handler in served:
            template = prefix + path
            routes.append(Route(template, wrap(f"{method} {template}", handler), methods=[method]))
    return routes


def _expiry(seconds: Any, anchor: Any, *, minimum: int, maximum: int) -> int:
    """Read ``expires_after`` form fields; return the seconds."""
    if anchor != "created_at":
        raise invalid_request("'expires_after.anchor' must be 'created_at'.", param="expires_after.anchor")
    if not (isinstance(seconds, str) and seconds.isdigit() and minimum <= int(seconds) <= maximum):
        raise invalid_request(
            f"'expires_after.seconds' must be an integer from {minimum} to {maximum}.", param="expires_after.seconds"
        )
    return int(seconds)


def azure_error(path: str, exc: APIError) -> dict[str, Any]:
    """The body of an error answer on an Azure path, in that surface's shape."""
    return azure_error_body(
        surface_of(path) or "authoring",
        exc.status,
        exc.message,
        code=exc.code,
        param=exc.param,
        error_type=exc.error_type,
    )
