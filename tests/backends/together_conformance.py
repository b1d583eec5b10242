"""Every request the Together backend sends, checked against Together's published request types.

Two references, each request checked against both:

* the installed ``together`` SDK: its routes (the path templates in its resources), ``FinetuneRequest`` (the
  create body, and ``create_finetune_request``'s rule of a model or a checkpoint, not both), the ``TypedDict``
  of the price estimate, and the form of ``POST /files``;
* Together's published OpenAPI description (``together_openapi.yaml``, trimmed from
  github.com/togethercomputer/openapi; its header says from which commit): the operation of each request, its
  JSON body or form (no field the description does not declare), its query and its key. Where the
  description lags what the SDK sends, :data:`LAGS` patches it, each patch with a note of what the SDK sends
  and where; a test proves each lag is still one.

:class:`TogetherConformance` is an httpx request hook: put on the backend's clients, it sees every request the
backend sends, the ones of the upload's auth flow included.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args
from urllib.parse import quote

import httpx
import together
import yaml
from jsonschema import Draft202012Validator
from pydantic import TypeAdapter, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from together.lib.types.fine_tuning import FinetuneRequest
from together.types import fine_tuning_estimate_price_params as estimate_params
from together.types.file_purpose import FilePurpose
from together.types.file_type import FileType

from tests.conformance import _openapi30_compat

SDK = Path(together.__file__).parent

#: The SDK's routes the backend may use: (method, path template as the SDK spells it, where the SDK has it).
ROUTES: list[tuple[str, str, str]] = [
    ("POST", "/fine-tunes", "resources/fine_tuning.py"),
    ("GET", "/fine-tunes", "resources/fine_tuning.py"),
    ("GET", "/fine-tunes/{id}", "resources/fine_tuning.py"),
    ("POST", "/fine-tunes/{id}/cancel", "resources/fine_tuning.py"),
    ("GET", "/fine-tunes/{id}/events", "resources/fine_tuning.py"),
    ("GET", "/fine-tunes/{id}/checkpoints", "resources/fine_tuning.py"),
    ("POST", "/fine-tunes/estimate-price", "resources/fine_tuning.py"),
    ("POST", "/files", "resources/files.py"),
    ("GET", "/files", "resources/files.py"),
    ("GET", "/files/{id}", "resources/files.py"),
    ("DELETE", "/files/{id}", "resources/files.py"),
    ("GET", "/files/{id}/content", "resources/files.py"),
    ("POST", "/files/{id}/preprocess", "lib/resources/files.py"),
    ("POST", "/files/multipart/initiate", "lib/resources/files.py"),
    ("POST", "/files/multipart/complete", "lib/resources/files.py"),
    ("POST", "/files/multipart/abort", "lib/resources/files.py"),
]

#: The fields of each multipart request's JSON body, as the SDK's ``MultipartUploadManager`` sends them.
MULTIPART_FIELDS: dict[str, set[str]] = {
    "/files/multipart/initiate": {"file_name", "file_size", "num_parts", "purpose", "file_type", "checksum"},
    "/files/multipart/complete": {"upload_id", "file_id", "parts"},
    "/files/multipart/abort": {"upload_id", "file_id"},
}


def sdk_spells(template: str, where: str) -> bool:
    """Whether the SDK's source has the route (``/files/{id}/preprocess`` is built as ``{url}/{file_id}/...``)."""
    text = (SDK / where).read_text()
    handed = 'upload_manager.upload("/files"' in (SDK / "resources/files.py").read_text()
    if template.endswith("/preprocess"):  # the upload manager is handed "/files" and appends the rest
        return handed and 'f"{url}/{file_id}/preprocess"' in text
    if template.startswith("/files/multipart/"):
        return handed and f'f"{{url}}/multipart/{template.rsplit("/", 1)[-1]}"' in text
    return f'"{template}"' in text


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", template) + "$")


def _keys_of(typed_dict: Any) -> tuple[set[str], set[str]]:
    hints = typed_dict.__annotations__
    return set(hints), set(getattr(typed_dict, "__required_keys__", set()))


def _typed_dict_problems(value: Any, options: tuple[Any, ...], where: str) -> list[str]:
    """Problems of ``value`` against a union of TypedDicts: it must match one exactly (no unknown keys)."""
    if not isinstance(value, dict):
        return [f"{where}: not an object"]
    for option in options:
        keys, required = _keys_of(option)
        if set(value) <= keys and required <= set(value):
            try:
                TypeAdapter(option).validate_python(value, strict=False)
            except ValidationError as err:
                return [f"{where}: {err.errors()[0]['msg']}"]
            return []
    return [f"{where}: {sorted(value)} matches none of {[o.__name__ for o in options]}"]


def estimate_problems(body: Any) -> list[str]:
    """``POST /fine-tunes/estimate-price`` against ``FineTuningEstimatePriceParams``."""
    params = estimate_params.FineTuningEstimatePriceParams
    keys, required = _keys_of(params)
    if not isinstance(body, dict):
        return ["estimate-price: the body is not an object"]
    problems = [f"estimate-price: unknown field {k!r}" for k in sorted(set(body) - keys)]
    problems += [f"estimate-price: missing {k!r}" for k in sorted(required - set(body))]
    if "training_method" in body:
        problems += _typed_dict_problems(
            body["training_method"], get_args(estimate_params.TrainingMethod), "training_method"
        )
    if body.get("training_type") is not None:
        problems += _typed_dict_problems(body["training_type"], get_args(estimate_params.TrainingType), "training_type")
    return problems


def create_problems(body: Any) -> list[str]:
    """``POST /fine-tunes`` against the SDK's ``FinetuneRequest`` (no field it does not declare)."""
    if not isinstance(body, dict):
        return ["create: the body is not an object"]
    problems = [f"create: unknown field {k!r}" for k in sorted(set(body) - set(FinetuneRequest.model_fields))]
    try:
        FinetuneRequest.model_validate(body)
    except ValidationError as err:
        problems += [f"create: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
    if body.get("model") is not None and body.get("from_checkpoint") is not None:
        # create_finetune_request: "You must specify either a model or a checkpoint to start a job from, not both"
        problems.append("create: both model and from_checkpoint; the SDK sends one or the other")
    method = body.get("training_method") or {}
    if method.get("method") not in ("sft", "dpo"):
        problems.append(f"create: training_method.method {method.get('method')!r}")
    if (body.get("training_type") or {}).get("type") not in ("Lora", "Full"):
        problems.append("create: training_type.type must be Lora or Full")
    return problems


def form_fields(request: httpx.Request) -> dict[str, str]:
    """The text fields of a ``multipart/form-data`` request."""
    parts = dict(re.findall(rb'name="([^"]+)"\r\n\r\n(.*?)\r\n', request.content, flags=re.S))
    return {k.decode(): v.decode() for k, v in parts.items()}


def upload_form_problems(request: httpx.Request) -> list[str]:
    """``POST /files``: the multipart form of the SDK's ``get_upload_url`` (and no content)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return ["files: not multipart/form-data"]
    form = form_fields(request)
    problems = []
    if set(form) != {"purpose", "file_name", "file_type", "checksum"}:
        problems.append(f"files: form fields {sorted(form)}")
    if form.get("purpose") not in get_args(FilePurpose):
        problems.append(f"files: purpose {form.get('purpose')!r}")
    if form.get("file_type") not in get_args(FileType):
        problems.append(f"files: file_type {form.get('file_type')!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", form.get("checksum", "")):
        problems.append("files: checksum is not a SHA-256")
    return problems


# -- Together's published OpenAPI description -------------------------------------------------------------

#: Together's OpenAPI description, trimmed to the paths the backend uses (its header says from where).
DESCRIPTION = Path(__file__).with_name("together_openapi.yaml")
_URI = "urn:airflow-provider-finetune:together-openapi"
_HTTP_METHODS = ("get", "post", "put", "delete", "patch")


def _create_body(document: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = document["paths"]["/fine-tunes"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    return schema


def _model_or_checkpoint(document: dict[str, Any]) -> None:
    schema = _create_body(document)
    schema["required"] = [name for name in schema["required"] if name != "model"]
    schema["oneOf"] = [
        {"required": ["model"], "not": {"required": ["from_checkpoint"]}},
        {"required": ["from_checkpoint"], "not": {"required": ["model"]}},
    ]


def _sdk_only_fields(document: dict[str, Any]) -> None:
    _create_body(document)["properties"].update(
        {
            "early_stopping_enabled": {"type": "boolean"},
            "early_stopping_patience": {"type": "integer"},
            "early_stopping_min_delta": {"type": "number"},
            "early_stopping_warmup_evals": {"type": "integer"},
            "gradient_accumulation_steps": {"type": "integer"},
        }
    )


def _train_on_inputs_auto(document: dict[str, Any]) -> None:
    for schema in (
        document["components"]["schemas"]["TrainingMethodSFT"]["properties"]["train_on_inputs"],
        _create_body(document)["properties"]["train_on_inputs"],
    ):
        schema.pop("type")  # the oneOf beside it says boolean or "auto"


def _sdk_upload(document: dict[str, Any]) -> None:
    upload = copy.deepcopy(
        document["paths"]["/files/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    )
    del upload["properties"]["file"]
    upload["properties"]["checksum"] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
    upload["required"] = ["purpose", "file_name", "file_type", "checksum"]
    answered = {"302": {"description": "Location: where to PUT the content; X-Together-File-Id: the file's id"}}
    document["paths"]["/files"]["post"] = {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": upload}}},
        "responses": answered,
    }
    checked = {"200": {"description": "the file as checked", "content": _file_answer()}}
    document["paths"]["/files/{id}/preprocess"] = {"post": {"parameters": [_id()], "responses": checked}}


def _sdk_multipart(document: dict[str, Any]) -> None:
    ids = {"upload_id": {"type": "string"}, "file_id": {"type": "string"}}
    part = {
        "type": "object",
        "properties": {"part_number": {"type": "integer", "minimum": 1}, "etag": {"type": "string"}},
        "required": ["part_number", "etag"],
    }
    bodies = {
        "initiate": {
            "properties": {
                "file_name": {"type": "string"},
                "file_size": {"type": "integer", "minimum": 1},
                "num_parts": {"type": "integer", "minimum": 1, "maximum": 250},
                "purpose": {"$ref": "#/components/schemas/FilePurpose"},
                "file_type": {"$ref": "#/components/schemas/FileType"},
                "checksum": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
        },
        "complete": {"properties": {**ids, "parts": {"type": "array", "items": part, "minItems": 1}}},
        "abort": {"properties": ids},
    }
    for action, schema in bodies.items():
        body = {"type": "object", **schema, "required": sorted(schema["properties"])}
        document["paths"][f"/files/multipart/{action}"] = {
            "post": {
                "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                "responses": {"200": {"description": "as the SDK's MultipartUploadManager reads it"}},
            }
        }


def _id() -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _file_answer() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": "#/components/schemas/FileResponse"}}}


@dataclass(frozen=True)
class Lag:
    """Where Together's published description lags what its official SDK sends, and the patch that says it.

    :param where: the request, ``"POST /fine-tunes"``.
    :param note: what the SDK sends that the description does not say, and where the SDK has it.
    :param patch: makes the description say it (in place, on a copy).
    """

    where: str
    note: str
    patch: Callable[[dict[str, Any]], None]


#: Every place the description lags the SDK, as of the description's commit (``together_openapi.yaml``) and the
#: installed SDK; ``test_each_lag_of_the_description_is_still_one`` fails once Together's description catches up.
LAGS: dict[str, Lag] = {
    lag.patch.__name__.lstrip("_"): lag
    for lag in (
        Lag(
            "POST /fine-tunes",
            "The description requires model. The SDK's create_finetune_request takes a model or a checkpoint, "
            "not both, and FinetuneRequest is dumped without None: a job from a checkpoint is sent from_checkpoint "
            "and no model.",
            _model_or_checkpoint,
        ),
        Lag(
            "POST /fine-tunes",
            "The description does not declare early_stopping_enabled, early_stopping_patience, "
            "early_stopping_min_delta, early_stopping_warmup_evals or gradient_accumulation_steps; the SDK's "
            "FinetuneRequest (together/lib/types/fine_tuning.py) sends them (early_stopping_enabled always).",
            _sdk_only_fields,
        ),
        Lag(
            "POST /fine-tunes, POST /fine-tunes/estimate-price",
            'TrainingMethodSFT.train_on_inputs is "type: boolean" beside "oneOf: [boolean, \\"auto\\"]", which '
            'refuses "auto", the description\'s own default; the SDK sends "auto" when train_on_inputs is not '
            'set (create_finetune_request), and its types take bool or "auto".',
            _train_on_inputs_auto,
        ),
        Lag(
            "POST /files, POST /files/{id}/preprocess",
            "The description has one upload, POST /files/upload with the content in its form. The SDK's "
            "UploadManager (together/lib/resources/files.py) posts /files with purpose, file_name, file_type and "
            "checksum and no content, PUTs the content to the Location of the 302 answer, then posts "
            "/files/{id}/preprocess.",
            _sdk_upload,
        ),
        Lag(
            "POST /files/multipart/initiate, /complete, /abort",
            "Not in the description; the SDK's MultipartUploadManager (together/lib/resources/files.py) sends "
            "files larger than 5 GiB in parts through them.",
            _sdk_multipart,
        ),
    )
}


def _closed(node: Any) -> Any:
    """Every object schema that declares its properties refuses others (the checks ask for no field beyond them)."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    closed = {key: _closed(value) for key, value in node.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


@functools.cache
def description(lags: tuple[str, ...] = tuple(LAGS)) -> dict[str, Any]:
    """The description, OpenAPI 3.0 idioms made JSON Schema, closed, with the named ``lags`` patched in."""
    document: dict[str, Any] = yaml.safe_load(DESCRIPTION.read_text())
    for name in lags:
        LAGS[name].patch(document)
    closed: dict[str, Any] = _closed(_openapi30_compat(document))
    return closed


@dataclass(frozen=True)
class Operation:
    """One operation of the description."""

    method: str
    template: str
    spec: Mapping[str, Any]

    def matches(self, method: str, path: str) -> bool:
        """Whether a request of ``method`` to ``path`` (after the base URL's path) is this operation."""
        return method == self.method and re.fullmatch(re.sub(r"\{[^/}]+\}", "[^/]+", self.template), path) is not None


def operations(lags: tuple[str, ...] = tuple(LAGS)) -> list[Operation]:
    """The description's operations, the most literal path first (``/files/upload`` before ``/files/{id}``)."""
    found = [
        Operation(method.upper(), template, spec)
        for template, item in description(lags)["paths"].items()
        for method, spec in item.items()
        if method in _HTTP_METHODS
    ]
    return sorted(found, key=lambda op: -sum(1 for part in op.template.split("/") if not part.startswith("{")))


@functools.cache
def _validator(lags: tuple[str, ...], pointer: str) -> Draft202012Validator:
    resource = DRAFT202012.create_resource(description(lags))
    registry: Registry = Registry().with_resource(_URI, resource)
    return Draft202012Validator({"$ref": f"{_URI}#{quote(pointer, safe='/~')}"}, registry=registry)


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def _schema_problems(lags: tuple[str, ...], pointer: str, instance: Any, where: str) -> list[str]:
    errors = sorted(_validator(lags, pointer).iter_errors(instance), key=lambda e: list(e.absolute_path))
    problems = []
    for error in errors:
        # A failed oneOf/anyOf/not quotes the whole instance: the rule it broke says more.
        if error.validator in ("oneOf", "anyOf", "not"):
            message = f"fails {error.validator} {json.dumps(error.validator_value)[:240]}"
        else:
            message = error.message[:300]
        problems.append(f"{where}: {'.'.join(map(str, error.absolute_path)) or '(body)'}: {message}")
    return problems


def description_problems(
    method: str,
    path: str,
    *,
    json_body: Any = None,
    form: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    lags: tuple[str, ...] = tuple(LAGS),
) -> tuple[Operation | None, list[str]]:
    """One request against the description (with ``lags`` patched in): its operation, and what does not conform.

    :param method: the HTTP method.
    :param path: the path after the base URL's (``/fine-tunes/ft-1/cancel``).
    :param json_body: the decoded JSON body, if it has one.
    :param form: the fields of a ``multipart/form-data`` body, if it has one.
    :param query: the query parameters.
    """
    where = f"description: {method} {path}"
    operation = next((op for op in operations(lags) if op.matches(method, path)), None)
    if operation is None:
        return None, [f"{where}: no such operation"]
    problems = []
    declared = {p["name"] for p in operation.spec.get("parameters", []) if p.get("in") == "query"}
    problems += [f"{where}: query parameter {name!r} not declared" for name in sorted(set(query or {}) - declared)]
    content = (operation.spec.get("requestBody") or {}).get("content") or {}
    base = _pointer("paths", operation.template, operation.method.lower(), "requestBody", "content")
    if json_body is not None:
        if "application/json" not in content:
            return operation, [*problems, f"{where}: a JSON body the operation does not take"]
        problems += _schema_problems(lags, base + _pointer("application/json", "schema"), json_body, where)
    elif form is not None:
        if "multipart/form-data" not in content:
            return operation, [*problems, f"{where}: a form the operation does not take"]
        problems += _schema_problems(lags, base + _pointer("multipart/form-data", "schema"), dict(form), where)
    elif (operation.spec.get("requestBody") or {}).get("required"):
        problems.append(f"{where}: no body, but the operation requires one")
    return operation, problems


@dataclass
class TogetherConformance:
    """Checks each request against the SDK and the description; ``problems`` lists what does not conform.

    ``seen`` holds the SDK routes used, ``described`` the operations of the description (lags patched in) reached.
    """

    base_path: str
    api_origin: str
    problems: list[str] = field(default_factory=list)
    seen: set[tuple[str, str]] = field(default_factory=set)
    described: set[tuple[str, str]] = field(default_factory=set)

    def check(self, request: httpx.Request) -> None:
        """Check one request the backend sends."""
        request.read()
        if f"{request.url.scheme}://{request.url.netloc.decode()}" != self.api_origin or not (
            request.url.path.startswith(self.base_path + "/")
        ):
            self._check_presigned(request)
            return
        if request.headers.get("authorization") is None:
            self.problems.append(f"{request.method} {request.url.path}: no key")
        path = request.url.path[len(self.base_path) :]
        self._check_described(request, path)
        for method, template, _ in ROUTES:
            if method == request.method and _pattern(template).match(path):
                self.seen.add((method, template))
                self.problems += self._body_problems(method, template, request)
                return
        self.problems.append(f"{request.method} {path}: not a route of the SDK")

    def _check_presigned(self, request: httpx.Request) -> None:
        self.seen.add(("PUT", "presigned"))
        if request.method != "PUT":
            self.problems.append(f"{request.method} {request.url}: only the content goes elsewhere, by PUT")
        if "authorization" in request.headers:
            self.problems.append(f"PUT {request.url.path}: the API key was sent to the presigned address")

    def _check_described(self, request: httpx.Request, path: str) -> None:
        kind = request.headers.get("content-type", "")
        json_body = json.loads(request.content) if request.content and kind.startswith("application/json") else None
        form = form_fields(request) if kind.startswith("multipart/form-data") else None
        operation, problems = description_problems(
            request.method, path, json_body=json_body, form=form, query=dict(request.url.params)
        )
        if request.content and json_body is None and form is None:
            problems.append(f"description: {request.method} {path}: a body of {kind or 'no type'}")
        if operation is not None:
            self.described.add((operation.method, operation.template))
        self.problems += problems

    def _body_problems(self, method: str, template: str, request: httpx.Request) -> list[str]:
        if (method, template) == ("POST", "/fine-tunes"):
            return create_problems(json.loads(request.content))
        if (method, template) == ("POST", "/fine-tunes/estimate-price"):
            return estimate_problems(json.loads(request.content))
        if (method, template) == ("POST", "/files"):
            return upload_form_problems(request)
        if template in MULTIPART_FIELDS:
            body = json.loads(request.content)
            if set(body) != MULTIPART_FIELDS[template]:
                return [f"{template}: fields {sorted(body)}, not the SDK's {sorted(MULTIPART_FIELDS[template])}"]
            parts = body.get("parts", [])
            if any(set(part) != {"part_number", "etag"} for part in parts):
                return [f"{template}: parts are not part_number and etag each"]
            return []
        problems = []
        if request.content:
            problems.append(f"{method} {template}: a body the SDK does not send")
        if request.url.params:
            problems.append(f"{method} {template}: query {dict(request.url.params)} the SDK does not send")
        return problems

    def hooks(self) -> tuple[Callable[[httpx.Request], None], Callable[[httpx.Request], Any]]:
        """The sync and async request hooks."""

        async def acheck(request: httpx.Request) -> None:
            await request.aread()
            self.check(request)

        return self.check, acheck
