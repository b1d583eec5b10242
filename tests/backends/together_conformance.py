"""Every request the Together backend sends, checked against Together's published request types.

The reference is the installed ``together`` SDK, generated from Together's OpenAPI document: its routes (the
path templates in its resources), ``FinetuneRequest`` (the create body), the ``TypedDict`` of the price
estimate, and the form of ``POST /files``. :class:`TogetherConformance` is an httpx request hook: put on the
backend's clients, it sees every request the backend sends, the ones of the upload's auth flow included.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import httpx
import together
from pydantic import TypeAdapter, ValidationError
from together.lib.types.fine_tuning import FinetuneRequest
from together.types import fine_tuning_estimate_price_params as estimate_params
from together.types.file_purpose import FilePurpose
from together.types.file_type import FileType

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
    method = body.get("training_method") or {}
    if method.get("method") not in ("sft", "dpo"):
        problems.append(f"create: training_method.method {method.get('method')!r}")
    if (body.get("training_type") or {}).get("type") not in ("Lora", "Full"):
        problems.append("create: training_type.type must be Lora or Full")
    return problems


def upload_form_problems(request: httpx.Request) -> list[str]:
    """``POST /files``: the multipart form of the SDK's ``get_upload_url`` (and no content)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return ["files: not multipart/form-data"]
    parts = dict(re.findall(rb'name="([^"]+)"\r\n\r\n(.*?)\r\n', request.content, flags=re.S))
    form = {k.decode(): v.decode() for k, v in parts.items()}
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


@dataclass
class TogetherConformance:
    """Checks each request; ``problems`` lists what does not conform, ``seen`` the SDK routes used."""

    base_path: str
    api_origin: str
    problems: list[str] = field(default_factory=list)
    seen: set[tuple[str, str]] = field(default_factory=set)

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

    def _body_problems(self, method: str, template: str, request: httpx.Request) -> list[str]:
        import json

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
