"""Spec-driven conformance checks for the HTTP traffic of the fine-tuning provider.

The published OpenAPI document (``openapi_finetuning.yaml``, the fine-tuning, files and uploads paths of the
OpenAI spec) is the single source of truth: every request a hook sends can be handed to
:func:`validate_request`, which finds the operation by method and path template and checks the query string,
the headers that matter and the body against what the spec declares.  :func:`validate_response` checks a
decoded JSON answer against the operation's response schema, for the emulator tests.

The spec is OpenAPI 3.1 but still carries OpenAPI 3.0 idioms; a pre-processed copy is used for validation:

* ``nullable: true`` is turned into a JSON Schema 2020-12 null alternative (``type: [t, "null"]``, ``null``
  added to an ``enum``, or an ``anyOf`` with ``{"type": "null"}`` when there is no ``type``);
* the boolean ``exclusiveMinimum: true`` / ``exclusiveMaximum: true`` (3.0 style) is turned into the numeric
  2020-12 form: left as it is, jsonschema compares numbers with ``True`` and refuses e.g.
  ``learning_rate_multiplier: 1.0``;
* vendor keys (``x-stainless-const``, ``x-oaiTypeLabel``, ``x-oaiMeta``), ``deprecated`` and ``example`` are
  annotations and are ignored by jsonschema.

The spec file is found next to the repository (``../shared/openai-spec``) unless the environment variable
``FINETUNE_OPENAPI_SPEC_DIR`` names the directory that holds it.
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import functools
import json
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import httpx
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = [
    "AZURE_SPECS",
    "EXTRA_JOB_STATUSES",
    "SPEC_DIR_ENV",
    "SPEC_FILENAME",
    "azure_spec_dir",
    "load_spec",
    "operation_ids",
    "spec_path",
    "validate_request",
    "validate_response",
]

SPEC_FILENAME = "openapi_finetuning.yaml"
SPEC_DIR_ENV = "FINETUNE_OPENAPI_SPEC_DIR"
#: The Azure OpenAI documents (``../shared/azure-spec``) ``spec=`` may name, beside ``"openai"``: the trimmed
#: stable and preview authoring files, the trimmed v1 file, and the whole v1 file (its chat completions).
AZURE_SPECS = {
    "azure-2024-10-21": "azureopenai-authoring-2024-10-21.finetuning.json",
    "azure-2025-04-01-preview": "azureopenai-authoring-2025-04-01-preview.finetuning.yaml",
    "azure-v1": "azureopenai-v1.finetuning.yaml",
    "azure-v1-full": "azureopenai-v1.yaml",
}
#: Job statuses real services answer that the spec's ``FineTuningJob.status`` enum does not list.
EXTRA_JOB_STATUSES = ("pausing", "paused")

_SPEC_URI = "urn:airflow-provider-finetune:openapi-finetuning"
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_PARAM_SEGMENT = re.compile(r"^\{([^{}/]+)\}$")
_FORM_NAME = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_PLACEHOLDER_TOKENS = frozenset({"none", "null", "undefined"})
# Service-level query parameters of Azure OpenAI, accepted on requests that authenticate the Azure way
# (``api-key`` header); with Entra ID bearer tokens pass ``extra_query_params`` instead.
_AZURE_QUERY_PARAMS = frozenset({"api-version"})
_MAX_MESSAGE = 300

# Not in the spec (which declares only 200 answers); the envelope the README documents for errors:
# {"error": {"message", "type", "param", "code"}}. Only ``message`` is required: Azure leaves out type/param.
_ERROR_ENVELOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}


# --------------------------------------------------------------------------------------------------
# Loading


def spec_path() -> Path:
    """Return the path of the OpenAPI document, honouring ``FINETUNE_OPENAPI_SPEC_DIR``."""
    directory = os.environ.get(SPEC_DIR_ENV)
    if directory:
        return Path(directory).expanduser().resolve() / SPEC_FILENAME
    return Path(__file__).resolve().parents[2] / "shared" / "openai-spec" / SPEC_FILENAME


def azure_spec_dir() -> Path:
    """Return the directory of the Azure OpenAI documents: ``azure-spec`` beside the OpenAI spec's directory."""
    return spec_path().parent.parent / "azure-spec"


def _spec_file(spec: str) -> Path:
    """The document ``spec`` names: ``"openai"`` or a key of :data:`AZURE_SPECS`."""
    if spec == "openai":
        return spec_path()
    if spec not in AZURE_SPECS:
        raise AssertionError(f"unknown spec {spec!r}; known: openai, {', '.join(AZURE_SPECS)}")
    return azure_spec_dir() / AZURE_SPECS[spec]


@functools.cache
def _load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        # JSON is YAML, but the C-less YAML parser is slow on big JSON files.
        document = json.load(handle) if path.suffix == ".json" else yaml.safe_load(handle)
    if not isinstance(document, dict) or "paths" not in document:
        raise AssertionError(f"{path} is not an OpenAPI document")
    if str(document.get("swagger", "")).startswith("2."):
        document = _swagger2_to_openapi3(document)
    return document


# Keys of a Swagger 2.0 non-body parameter that belong in an OpenAPI 3 parameter's ``schema``.
_SWAGGER_SCHEMA_KEYS = (
    "type",
    "format",
    "items",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "multipleOf",
)


def _swagger2_refs(node: Any) -> Any:
    """Point Swagger 2.0 refs at their OpenAPI 3 homes; ``x-nullable`` becomes ``nullable``."""
    if isinstance(node, list):
        return [_swagger2_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            value = value.replace("#/definitions/", "#/components/schemas/").replace(
                "#/parameters/", "#/components/parameters/"
            )
        elif key == "x-nullable":
            key = "nullable"
        out[key] = _swagger2_refs(value)
    if out.get("type") == "file":  # a file in a schema (formData or response): binary string
        out["type"], out["format"] = "string", "binary"
    return out


def _swagger2_parameter(param: dict[str, Any]) -> dict[str, Any]:
    """A query/path/header Swagger 2.0 parameter as an OpenAPI 3 one (its type keywords under ``schema``)."""
    if "$ref" in param or param.get("in") in ("body", "formData"):
        return param
    converted = {k: v for k, v in param.items() if k not in _SWAGGER_SCHEMA_KEYS and k != "collectionFormat"}
    converted["schema"] = {k: param[k] for k in _SWAGGER_SCHEMA_KEYS if k in param}
    return converted


def _swagger2_to_openapi3(source: dict[str, Any]) -> dict[str, Any]:
    """Convert what request and response validation read from a Swagger 2.0 document into OpenAPI 3.0 form.

    ``definitions`` become ``components.schemas`` (refs rewritten), global ``parameters`` become
    ``components.parameters``; in each operation an ``in: body`` parameter becomes the ``requestBody`` (one
    content entry per ``consumes`` media type), ``in: formData`` parameters become the properties of a
    ``multipart/form-data`` (or urlencoded) body schema (``type: file`` is a binary string), the other
    parameters keep their place with their type keywords moved under ``schema``; a response ``schema`` moves
    under ``content`` for each ``produces`` media type. Everything else (``security``, ``info``...) is kept.
    """
    document = _swagger2_refs(source)
    consumes_default = document.get("consumes") or ["application/json"]
    produces_default = document.get("produces") or ["application/json"]
    components: dict[str, Any] = {
        "schemas": document.pop("definitions", {}),
        "parameters": {name: _swagger2_parameter(param) for name, param in document.pop("parameters", {}).items()},
        "securitySchemes": document.pop("securityDefinitions", {}),
        "responses": document.pop("responses", {}),
    }
    document["components"] = components
    document["openapi"] = "3.0.0"
    document["x-converted-from"] = f"swagger {document.pop('swagger')}"
    for item in document["paths"].values():
        for method in _HTTP_METHODS:
            operation = item.get(method)
            if not isinstance(operation, dict):
                continue
            consumes = operation.pop("consumes", None) or consumes_default
            produces = operation.pop("produces", None) or produces_default
            parameters: list[Any] = []
            form: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
            for param in operation.get("parameters", []):
                where = param.get("in")
                if where == "body":
                    operation["requestBody"] = {
                        "required": bool(param.get("required")),
                        "content": {media: {"schema": param.get("schema", {})} for media in consumes},
                    }
                elif where == "formData":
                    keys = (*_SWAGGER_SCHEMA_KEYS, "description")
                    form["properties"][param["name"]] = {k: param[k] for k in keys if k in param}
                    if param.get("type") == "file":
                        form["properties"][param["name"]].update(type="string", format="binary")
                    if param.get("required"):
                        form["required"].append(param["name"])
                else:
                    parameters.append(_swagger2_parameter(param))
            if form["properties"]:
                if not form["required"]:
                    del form["required"]
                media = (
                    "application/x-www-form-urlencoded"
                    if consumes == ["application/x-www-form-urlencoded"]
                    else ("multipart/form-data")
                )
                operation["requestBody"] = {"required": "required" in form, "content": {media: {"schema": form}}}
            if "parameters" in operation:
                operation["parameters"] = parameters
            for response in operation.get("responses", {}).values():
                if isinstance(response, dict) and "schema" in response:
                    schema = response.pop("schema")
                    response["content"] = {media: {"schema": schema} for media in produces}
    return document


def load_spec(spec: str = "openai") -> dict[str, Any]:
    """Return the parsed OpenAPI document (cached; treat it as read-only); a Swagger 2.0 one comes converted."""
    return _load(_spec_file(spec))


def operation_ids(spec: str = "openai") -> list[str]:
    """Return every operationId the spec declares, in document order."""
    return [operation.operation_id for operation in _operations(_spec_file(spec))]


def _openapi30_compat(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 ``nullable`` and boolean exclusive bounds as JSON Schema 2020-12, in place."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            node[index] = _openapi30_compat(item)
        return node
    if not isinstance(node, dict):
        return node
    for key, value in node.items():
        node[key] = _openapi30_compat(value)
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        flag = node.get(exclusive)
        if flag is True and bound in node:
            node[exclusive] = node.pop(bound)
        elif isinstance(flag, bool):
            del node[exclusive]
    nullable = node.get("nullable")
    if not isinstance(nullable, bool):
        return node
    del node["nullable"]
    if not nullable:
        return node
    kind = node.get("type")
    if isinstance(kind, str):
        node["type"] = [kind, "null"]
    elif isinstance(kind, list):
        if "null" not in kind:
            node["type"] = [*kind, "null"]
    elif any(key in node for key in ("anyOf", "oneOf", "allOf", "$ref", "const", "not")):
        return {"anyOf": [{"type": "null"}, node]}
    if isinstance(node.get("enum"), list) and None not in node["enum"]:
        node["enum"] = [*node["enum"], None]
    return node


@functools.cache
def _compat_spec(path: Path, extra_statuses: bool) -> dict[str, Any]:
    document = _openapi30_compat(copy.deepcopy(_load(path)))
    if extra_statuses:
        status = (
            document.get("components", {})
            .get("schemas", {})
            .get("FineTuningJob", {})
            .get("properties", {})
            .get("status", {})
        )
        if isinstance(status.get("enum"), list):
            status["enum"] = [*status["enum"], *(s for s in EXTRA_JOB_STATUSES if s not in status["enum"])]
    return document


@functools.cache
def _registry(path: Path, extra_statuses: bool) -> Registry:
    resource = DRAFT202012.create_resource(_compat_spec(path, extra_statuses))
    return Registry().with_resource(_SPEC_URI, resource)


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


@functools.cache
def _validator(path: Path, extra_statuses: bool, pointer: str) -> Draft202012Validator:
    """Return a validator for the schema at ``pointer`` inside the (pre-processed) spec document."""
    schema = {"$ref": f"{_SPEC_URI}#{quote(pointer, safe='/~')}"}
    return Draft202012Validator(schema, registry=_registry(path, extra_statuses))


def _deref(document: Mapping[str, Any], node: Any) -> Any:
    """Follow local ``$ref`` chains (``#/...``) in ``document``."""
    seen: set[str] = set()
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if not ref.startswith("#/") or ref in seen:
            raise AssertionError(f"cannot resolve $ref {ref!r} in the spec")
        seen.add(ref)
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[unquote(part).replace("~1", "/").replace("~0", "~")]
        node = target
    return node


# --------------------------------------------------------------------------------------------------
# Operations


@dataclass(frozen=True)
class _Operation:
    operation_id: str
    method: str  # upper case
    template: str
    segments: tuple[str, ...]
    parameters: tuple[dict[str, Any], ...]  # $ref-resolved, path-level merged in
    parameter_pointers: tuple[str, ...]  # JSON pointer of each parameter's schema
    operation: dict[str, Any]
    pointer: str  # JSON pointer of the operation object

    @property
    def literal_segments(self) -> int:
        return sum(1 for segment in self.segments if not _PARAM_SEGMENT.match(segment))


@functools.cache
def _operations(path: Path) -> tuple[_Operation, ...]:
    document = _load(path)
    operations: list[_Operation] = []
    seen_ids: set[str] = set()
    for template, item in document["paths"].items():
        item = _deref(document, item)
        path_level = item.get("parameters", [])
        segments = tuple(template[1:].split("/")) if template.startswith("/") and template != "/" else ()
        for segment in segments:
            if ("{" in segment or "}" in segment) and not _PARAM_SEGMENT.match(segment):
                raise AssertionError(f"path template {template!r}: only whole-segment parameters are supported")
        for method in _HTTP_METHODS:
            if method not in item:
                continue
            operation = item[method]
            operation_id = operation.get("operationId") or f"{method.upper()} {template}"
            if operation_id in seen_ids:
                raise AssertionError(f"duplicate operationId {operation_id!r} in the spec")
            seen_ids.add(operation_id)
            op_pointer = _pointer("paths", template, method)
            merged: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
            for where, params in (("paths", path_level), ("op", operation.get("parameters", []))):
                for index, raw in enumerate(params):
                    param = _deref(document, raw)
                    base = _pointer("paths", template) if where == "paths" else op_pointer
                    if isinstance(raw, Mapping) and "$ref" in raw:
                        schema_pointer = raw["$ref"][1:] + "/schema"
                    else:
                        schema_pointer = f"{base}/parameters/{index}/schema"
                    merged[(param["name"], param["in"])] = (param, schema_pointer)
            declared_path_params = {name for (name, where) in merged if where == "path"}
            template_params = {m.group(1) for s in segments if (m := _PARAM_SEGMENT.match(s))}
            if declared_path_params != template_params:
                raise AssertionError(
                    f"{operation_id}: path parameters {sorted(declared_path_params)} do not match the "
                    f"template {template!r}"
                )
            operations.append(
                _Operation(
                    operation_id=operation_id,
                    method=method.upper(),
                    template=template,
                    segments=segments,
                    parameters=tuple(param for param, _ in merged.values()),
                    parameter_pointers=tuple(pointer for _, pointer in merged.values()),
                    operation=operation,
                    pointer=op_pointer,
                )
            )
    return tuple(operations)


def _operation_by_id(path: Path, operation_id: str) -> _Operation:
    for operation in _operations(path):
        if operation.operation_id == operation_id:
            return operation
    known = ", ".join(sorted(op.operation_id for op in _operations(path)))
    raise AssertionError(f"unknown operationId {operation_id!r}; the spec declares: {known}")


# --------------------------------------------------------------------------------------------------
# Helpers


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _schema_errors(validator: Draft202012Validator, instance: Any, where: str) -> list[str]:
    """Return one readable line per jsonschema error (with the closest sub-error for anyOf/oneOf)."""
    problems = []
    errors: Iterable[ValidationError] = validator.iter_errors(instance)
    for error in sorted(errors, key=lambda e: (e.json_path, e.message)):
        line = f"{where} {error.json_path}: {_shorten(error.message)}"
        if error.context:
            # For anyOf/oneOf, a branch of the right type explains more than "0 is not of type 'string'".
            informative = [sub for sub in error.context if sub.validator not in ("type", "enum", "const")]
            closest = best_match(informative or error.context)
            line += f" (closest: {closest.json_path}: {_shorten(closest.message)})"
        problems.append(line)
    return problems


def _schema_types(document: Mapping[str, Any], schema: Any) -> list[str]:
    schema = _deref(document, schema)
    if not isinstance(schema, Mapping):
        return []
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    types: list[str] = []
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, []):
            types.extend(t for t in _schema_types(document, branch) if t not in types)
    return types


def _coerce(document: Mapping[str, Any], schema: Any, text: str) -> Any:
    """Turn a query/form string into the declared scalar type; leave it alone (to be refused) if it won't."""
    types = _schema_types(document, schema)
    if "string" in types:
        return text
    if "integer" in types and _INTEGER.match(text):
        return int(text)
    if "number" in types and _NUMBER.match(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    if "boolean" in types and text in ("true", "false"):
        return text == "true"
    return text


def _sub_schema(document: Mapping[str, Any], schema: Any, key: str) -> Any:
    schema = _deref(document, schema)
    if not isinstance(schema, Mapping):
        return {}
    if key in schema.get("properties", {}):
        return schema["properties"][key]
    for composite in ("allOf", "anyOf", "oneOf"):
        for branch in schema.get(composite, []):
            found = _sub_schema(document, branch, key)
            if found:
                return found
    additional = schema.get("additionalProperties")
    return additional if isinstance(additional, Mapping) else {}


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _request_body(request: httpx.Request) -> bytes:
    try:
        return request.content
    except httpx.RequestNotRead:
        pass
    try:
        return request.read()
    except RuntimeError as exc:  # an async stream that was not read yet
        raise AssertionError(
            f"{request.method} {request.url}: the request body is an unread async stream; "
            "`await request.aread()` before calling validate_request"
        ) from exc


# --------------------------------------------------------------------------------------------------
# Requests


def _match_operation(request: httpx.Request, base_path: str, path: Path) -> tuple[_Operation, dict[str, str]]:
    where = f"{request.method} {request.url}"
    raw_path = request.url.raw_path.split(b"?", 1)[0].decode("ascii")
    base = "/" + base_path.strip("/") if base_path.strip("/") else ""
    if base:
        if raw_path != base and not raw_path.startswith(base + "/"):
            raise AssertionError(f"{where}: path {raw_path!r} is not under the base path {base!r}")
        raw_path = raw_path[len(base) :]
    if raw_path and not raw_path.startswith("/"):
        raise AssertionError(f"{where}: path {raw_path!r} does not continue the base path {base!r}")
    # No stripping: a trailing slash or a doubled slash shows up as an empty segment, which matches nothing.
    raw_segments = raw_path[1:].split("/") if raw_path else []
    try:
        segments = [unquote(segment, errors="strict") for segment in raw_segments]
    except UnicodeDecodeError as exc:
        raise AssertionError(f"{where}: path {raw_path!r} is not valid percent-encoded UTF-8") from exc

    candidates: list[tuple[_Operation, dict[str, str]]] = []
    for operation in _operations(path):
        if len(operation.segments) != len(segments):
            continue
        values: dict[str, str] = {}
        for template_segment, segment in zip(operation.segments, segments, strict=True):
            match = _PARAM_SEGMENT.match(template_segment)
            if match:
                values[match.group(1)] = segment
            elif template_segment != segment:
                break
        else:
            candidates.append((operation, values))
    if not candidates:
        known = ", ".join(sorted({op.template for op in _operations(path)}))
        raise AssertionError(f"{where}: no operation in the spec matches path {raw_path!r}; known paths: {known}")
    # A template with more literal segments wins (as OpenAPI requires concrete paths to match first).
    best = max(op.literal_segments for op, _ in candidates)
    candidates = [(op, values) for op, values in candidates if op.literal_segments == best]
    for operation, values in candidates:
        if operation.method == request.method.upper():
            return operation, values
    allowed = ", ".join(sorted({op.method for op, _ in candidates}))
    templates = ", ".join(sorted({op.template for op, _ in candidates}))
    raise AssertionError(f"{where}: method {request.method} is not declared for {templates} (declared: {allowed})")


def _check_path_params(operation: _Operation, values: Mapping[str, str], path: Path) -> list[str]:
    problems = []
    document = _compat_spec(path, False)
    for param, pointer in zip(operation.parameters, operation.parameter_pointers, strict=True):
        if param["in"] != "path":
            continue
        name = param["name"]
        value = values.get(name, "")
        if value == "":
            problems.append(f"path parameter {name!r} is empty")
            continue
        if "/" in value:
            problems.append(f"path parameter {name!r}={value!r} contains '/' (percent-encoded or not)")
            continue
        if "schema" in param:
            problems += _schema_errors(
                _validator(path, False, pointer), _coerce(document, param["schema"], value), f"path {name!r}"
            )
    return problems


def _check_query(
    request: httpx.Request,
    operation: _Operation,
    path: Path,
    extra_query_params: Collection[str],
    *,
    azure_style: bool = True,
) -> list[str]:
    problems: list[str] = []
    document = _compat_spec(path, False)
    if azure_style and request.headers.get("api-key"):
        extra_query_params = {*extra_query_params, *_AZURE_QUERY_PARAMS}
    raw_query = request.url.query.decode("ascii")
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"query string {raw_query!r} is malformed: {exc}"]

    declared = {
        param["name"]: (param, pointer)
        for param, pointer in zip(operation.parameters, operation.parameter_pointers, strict=True)
        if param["in"] == "query"
    }
    simple: dict[str, list[str]] = {}
    deep: dict[str, dict[str, list[str]]] = {}
    for key, value in pairs:
        match = _FORM_NAME.match(key)
        head, brackets = (match.group(1), match.group(2)) if match else (key, "")
        param = declared.get(head, (None, ""))[0]
        if key in extra_query_params:
            if value == "":
                problems.append(f"query parameter {key!r} is empty")
            continue
        if param is None:
            names = ", ".join(sorted(declared)) or "none"
            problems.append(f"query parameter {key!r} is not declared by {operation.operation_id} (declared: {names})")
            continue
        if param.get("style") == "deepObject":
            keys = re.findall(r"\[([^\[\]]*)\]", brackets)
            if len(keys) != 1 or keys[0] == "":
                problems.append(
                    f"query parameter {key!r}: {head!r} is a deepObject parameter, send it as {head}[key]=value"
                )
                continue
            deep.setdefault(head, {}).setdefault(keys[0], []).append(value)
        elif brackets:
            problems.append(f"query parameter {key!r}: {head!r} is not a deepObject parameter")
        else:
            simple.setdefault(head, []).append(value)

    for name, (param, pointer) in declared.items():
        schema = param.get("schema", {})
        validator = _validator(path, False, pointer)
        if name in deep:
            instance: dict[str, Any] = {}
            for sub_key, sub_values in deep[name].items():
                if len(sub_values) > 1:
                    problems.append(f"query parameter {name}[{sub_key}] is repeated")
                instance[sub_key] = _coerce(document, _sub_schema(document, schema, sub_key), sub_values[-1])
            problems += _schema_errors(validator, instance, f"query {name!r}")
        elif name in simple:
            values = simple[name]
            if len(values) > 1 and "array" not in _schema_types(document, schema):
                problems.append(f"query parameter {name!r} is repeated ({values!r})")
                continue
            if any(value == "" for value in values):
                problems.append(
                    f"query parameter {name!r} is empty (a None passed to httpx params is sent as '{name}=')"
                )
                continue
            if "array" in _schema_types(document, schema):
                items = _sub_schema(document, schema, "items") or _deref(document, schema).get("items", {})
                instance_value: Any = [_coerce(document, items, value) for value in values]
            else:
                instance_value = _coerce(document, schema, values[0])
            problems += _schema_errors(validator, instance_value, f"query {name!r}")
        elif param.get("required"):
            problems.append(f"required query parameter {name!r} is missing")
    return problems


def _check_headers(request: httpx.Request) -> list[str]:
    problems = []
    authorizations = request.headers.get_list("authorization")
    api_keys = request.headers.get_list("api-key")
    if len(authorizations) > 1:
        problems.append("more than one Authorization header")
    if len(api_keys) > 1:
        problems.append("more than one api-key header")
    for value in authorizations[:1]:
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer":
            problems.append(f"Authorization header must use the Bearer scheme (got scheme {scheme!r})")
        elif not token or any(c.isspace() for c in token) or token.lower() in _PLACEHOLDER_TOKENS:
            problems.append(f"Authorization header carries no usable bearer token ({value!r})")
    for value in api_keys[:1]:
        key = value.strip()
        if not key or any(c.isspace() for c in key) or key.lower() in _PLACEHOLDER_TOKENS:
            problems.append(f"api-key header carries no usable key ({value!r})")
    if not authorizations and not api_keys:
        problems.append("no credentials: send 'Authorization: Bearer <key>' (or 'api-key: <key>' for Azure)")
    return problems


def _usable_credential(value: str) -> bool:
    words = value.split()
    return bool(words) and words[-1].lower() not in _PLACEHOLDER_TOKENS


def _check_security(request: httpx.Request, path: Path, operation: _Operation) -> list[str]:
    """The credentials against the document's ``security`` requirements (one alternative must be met whole)."""
    document = _load(path)
    schemes = document.get("components", {}).get("securitySchemes", {})
    alternatives = operation.operation.get("security", document.get("security"))
    if not alternatives:
        return []
    problems: list[str] = []
    header_names = {"authorization"} | {
        str(scheme["name"]).lower()
        for scheme in schemes.values()
        if scheme.get("type") == "apiKey" and scheme.get("in") == "header"
    }
    for name in sorted(header_names):
        values = request.headers.get_list(name)
        if len(values) > 1:
            problems.append(f"more than one {name} header")
        elif values and not _usable_credential(values[0]):
            problems.append(f"{name} header carries no usable credential ({values[0]!r})")
    described = []
    for alternative in alternatives:
        met, parts = True, []
        for scheme_name in alternative:
            scheme = schemes.get(scheme_name, {})
            kind, where = scheme.get("type"), scheme.get("in")
            if kind == "apiKey" and where in ("header", "query"):
                name = str(scheme["name"])
                parts.append(f"{where} {name!r}")
                value = request.headers.get(name) if where == "header" else request.url.params.get(name)
                met = met and value is not None and _usable_credential(value)
            elif kind in ("oauth2", "openIdConnect") or (kind == "http" and scheme.get("scheme") == "bearer"):
                parts.append(f"'Authorization: Bearer <token>' ({scheme_name})")
                auth_scheme, _, token = (request.headers.get("authorization") or "").strip().partition(" ")
                met = met and auth_scheme.lower() == "bearer" and _usable_credential(token)
            else:
                parts.append(f"{scheme_name} (unsupported here)")
                met = False
        if met:
            return problems
        described.append(" + ".join(parts) or "none")
    problems.append(f"no credentials this spec accepts: send one of {'; '.join(described)}")
    return problems


def _check_header_params(request: httpx.Request, operation: _Operation, path: Path) -> list[str]:
    problems: list[str] = []
    document = _compat_spec(path, False)
    for param, pointer in zip(operation.parameters, operation.parameter_pointers, strict=True):
        if param["in"] != "header":
            continue
        name = param["name"]
        value = request.headers.get(name)
        if value is None:
            if param.get("required"):
                problems.append(f"required header {name!r} is missing")
            continue
        if "schema" in param:
            problems += _schema_errors(
                _validator(path, False, pointer), _coerce(document, param["schema"], value), f"header {name!r}"
            )
    return problems


def _check_api_version(request: httpx.Request, operation: _Operation, path: Path) -> list[str]:
    """A dated document describes one ``api-version``: a request naming another does not follow it."""
    document = _load(path)
    version = str(document.get("info", {}).get("version", ""))
    for param in operation.parameters:
        schema = _deref(document, param.get("schema", {}))
        # An enum (v1: ``v1`` or ``preview``) says itself which versions the document takes.
        if param["in"] == "query" and param["name"] == "api-version" and "enum" not in schema:
            sent = request.url.params.get("api-version")
            if sent is not None and version and sent != version:
                return [f"query parameter 'api-version'={sent!r}: this document describes api-version {version!r}"]
    return []


def _check_json_body(body: bytes, path: Path, pointer: str) -> list[str]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        if duplicated:
            raise ValueError(f"duplicate keys {duplicated}")
        return dict(pairs)

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        payload = json.loads(body.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError) as exc:
        return [f"request body is not valid JSON: {exc}"]
    return _schema_errors(_validator(path, False, pointer), payload, "body")


def _check_multipart_body(body: bytes, content_type: str, path: Path, schema: Any, pointer: str) -> list[str]:
    document = _compat_spec(path, False)
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if message.get_param("boundary") is None:
        return ["multipart Content-Type has no boundary parameter"]
    if not message.is_multipart():
        return ["request body is not a multipart/form-data message"]
    problems = [f"malformed multipart body: {type(defect).__name__}" for defect in message.defects]

    properties = _deref(document, schema).get("properties", {})
    binary = {
        name
        for name, prop in properties.items()
        if isinstance(_deref(document, prop), Mapping) and _deref(document, prop).get("format") == "binary"
    }
    form: dict[str, Any] = {}
    for part in message.iter_parts():
        if part.get_content_disposition() != "form-data":
            problems.append(f"multipart part without 'Content-Disposition: form-data' ({part.get_content_type()})")
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            problems.append("multipart part without a field name")
            continue
        payload = part.get_payload(decode=True) or b""
        match = _FORM_NAME.match(name)
        keys = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))] if match else [name]
        if any(key == "" for key in keys):
            problems.append(f"multipart field {name!r}: array-style ('[]') fields are not declared by the spec")
            continue
        if keys[0] in binary and len(keys) == 1:
            value: Any = f"<{len(payload)} bytes>"
        else:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(f"multipart field {name!r} is not UTF-8 text")
                continue
            field_schema: Any = schema
            for key in keys:
                field_schema = _sub_schema(document, field_schema, key)
            value = _coerce(document, field_schema, text)
        target = form
        for key in keys[:-1]:
            existing = target.setdefault(key, {})
            if not isinstance(existing, dict):
                problems.append(f"multipart field {name!r} conflicts with field {key!r}")
                break
            target = existing
        else:
            if keys[-1] in target:
                problems.append(f"multipart field {name!r} is sent more than once")
                continue
            target[keys[-1]] = value
    return problems + _schema_errors(_validator(path, False, pointer), form, "form")


def _check_body(request: httpx.Request, operation: _Operation, path: Path) -> list[str]:
    body = _request_body(request)
    request_body = _deref(_compat_spec(path, False), operation.operation.get("requestBody"))
    if not request_body:
        if body:
            return [f"{operation.operation_id} takes no request body, but {len(body)} bytes were sent"]
        return []
    if not body:
        return ["the request body is required but empty"] if request_body.get("required") else []

    content = request_body.get("content", {})
    content_type = request.headers.get("content-type")
    media_type = _media_type(content_type)
    if not content_type:
        return [f"a body is sent without a Content-Type header (declared: {', '.join(content)})"]
    if media_type not in content:
        return [f"Content-Type {content_type!r} does not match the declared media types: {', '.join(content)}"]
    schema = content[media_type].get("schema", {})
    pointer = operation.pointer + _pointer("requestBody", "content", media_type, "schema")
    if media_type == "application/json" or media_type.endswith("+json"):
        return _check_json_body(body, path, pointer)
    if media_type == "multipart/form-data":
        return _check_multipart_body(body, content_type, path, schema, pointer)
    return []  # other media types: presence and Content-Type are all we can say


def validate_request(
    request: httpx.Request,
    *,
    base_path: str = "/v1",
    extra_query_params: Collection[str] = (),
    spec: str = "openai",
) -> str:
    """Check that ``request`` conforms to the published OpenAPI spec and return the operationId it matched.

    ``base_path`` is the path prefix of the service's base URL (``/v1`` for api.openai.com, e.g.
    ``/openai/v1`` for Azure's v1 surface, ``""`` for none); it is stripped before matching path templates.
    ``extra_query_params`` names query parameters to accept beyond the declared ones; their values are only
    checked to be non-empty.  Azure's ``api-version`` is accepted that way without asking when the request
    authenticates with an ``api-key`` header (the Azure style); nothing else undeclared is.

    Checked: the operation (method + path template, path parameters percent-decoded, non-empty, no ``/``), the
    query string (only declared parameters, deepObject ``name[key]=value`` where declared, declared type and
    enum, no repeats, no empty values), the credentials (``Authorization: Bearer <key>`` or ``api-key``), the
    ``Content-Type`` against the declared media types, and the body against the requestBody schema (JSON
    Schema 2020-12 for ``application/json``; fields, types and enums for ``multipart/form-data``; empty for
    operations that declare no body).

    ``spec`` names the document: ``"openai"`` (the default) or an Azure OpenAI one (:data:`AZURE_SPECS`:
    ``"azure-2024-10-21"``, ``"azure-2025-04-01-preview"``, ``"azure-v1"``, ``"azure-v1-full"``; the Swagger 2.0
    file is converted on load). Against an Azure document ``api-version`` is a declared parameter like any
    other (required on authoring, where its value must be the document's own version; optional on v1, ``v1``
    or ``preview``), the credentials must meet one of the document's ``security`` alternatives (``api-key``;
    a bearer token where OAuth2 is declared; v1's ``authorization`` header), and declared header parameters
    are checked.

    Raises:
        AssertionError: with every problem found, one per line.
    """
    path = _spec_file(spec)
    operation, values = _match_operation(request, base_path, path)
    problems = _check_path_params(operation, values, path)
    if spec == "openai":
        problems += _check_query(request, operation, path, extra_query_params)
        problems += _check_headers(request)
    else:
        problems += _check_query(request, operation, path, extra_query_params, azure_style=False)
        problems += _check_api_version(request, operation, path)
        problems += _check_security(request, path, operation)
        problems += _check_header_params(request, operation, path)
    problems += _check_body(request, operation, path)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise AssertionError(
            f"{request.method} {request.url} does not conform to {operation.operation_id} "
            f"({operation.method} {operation.template}):\n{listing}"
        )
    return operation.operation_id


# --------------------------------------------------------------------------------------------------
# Responses


def validate_response(operation_id: str, status: int, payload: Any, *, allow_extra_statuses: bool = True) -> None:
    """Check a decoded JSON response body against the response schema the spec declares for the operation.

    A 2xx status uses the schema declared for that status, falling back to the ``200`` one (Azure answers
    ``201`` to creates; the spec declares only ``200``).  A 4xx/5xx status checks the error envelope
    ``{"error": {"message", "type", "param", "code"}}`` (not in the spec; only ``message`` is required).
    With ``allow_extra_statuses`` (the default), ``FineTuningJob.status`` also accepts ``pausing`` and
    ``paused``, which real services answer although the spec's enum lists six values.  ``bytes`` are
    accepted where the schema is a plain string (``downloadFile``).

    Raises:
        AssertionError: if the operation is unknown, the status has no schema or the payload does not conform.
    """
    path = spec_path()
    operation = _operation_by_id(path, operation_id)
    where = f"{operation_id} response {status}"
    if 400 <= status < 600:
        problems = _schema_errors(Draft202012Validator(_ERROR_ENVELOPE_SCHEMA), payload, "body")
    else:
        responses = operation.operation.get("responses", {})
        key = str(status)
        if key not in responses and 200 <= status < 300:
            key = next((k for k in (f"{str(status)[0]}XX", "200", "default") if k in responses), key)
        if key not in responses:
            raise AssertionError(f"{where}: the spec declares no response for status {status}")
        response = _deref(_load(path), responses[key])
        content = response.get("content") or {}
        if not content:
            if payload not in (None, b"", ""):
                raise AssertionError(f"{where}: the spec declares no body, got {type(payload).__name__}")
            return
        media_type = "application/json" if "application/json" in content else next(iter(content))
        pointer = operation.pointer + _pointer("responses", key, "content", media_type, "schema")
        schema = _deref(_load(path), content[media_type].get("schema", {}))
        if isinstance(payload, (bytes, bytearray)) and isinstance(schema, Mapping) and schema.get("type") == "string":
            payload = bytes(payload).decode("utf-8", errors="replace")
        problems = _schema_errors(_validator(path, allow_extra_statuses, pointer), payload, "body")
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise AssertionError(f"{where} does not conform to the spec:\n{listing}")
