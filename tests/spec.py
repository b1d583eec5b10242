"""Test helpers that read the published OpenAPI spec of the fine-tuning API (../shared/openai-spec).

Spec discovery: ``FINETUNE_OPENAPI_SPEC_DIR`` when set, else ``<repo>/../shared/openai-spec``.

``lenient_json`` reads the spec's hand-written response examples, which are not valid JSON.
Other helpers may be added to this module; the ones below are self-contained.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SPEC_DIR_ENV = "FINETUNE_OPENAPI_SPEC_DIR"
OPENAPI_FILE = "openapi_finetuning.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def openapi_spec_dir() -> Path:
    """Directory holding the reference spec: $FINETUNE_OPENAPI_SPEC_DIR, else <repo>/../shared/openai-spec."""
    override = os.environ.get(SPEC_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "shared" / "openai-spec"


def openapi_spec_path() -> Path:
    return openapi_spec_dir() / OPENAPI_FILE


@functools.cache
def load_openapi_spec() -> dict[str, Any]:
    with openapi_spec_path().open(encoding="utf-8") as handle:
        spec = yaml.safe_load(handle)
    assert isinstance(spec, dict), f"{openapi_spec_path()} is not an OpenAPI document"
    return spec


# --- lenient_json --------------------------------------------------------------------------------------
#
# The spec's examples are written by hand and are not JSON. What they contain, and how it is read:
#   - trailing commas (`"purpose": "fine-tune",\n}`) and missing commas between members
#     (`"id": "ftevent-abc123"\n  "created_at": ...`): commas are optional separators here;
#   - Python literals `None`, `True`, `False`: read as null, true, false;
#   - `{ ... }` placeholders for "more elements": dropped from the enclosing list;
#   - a Python triple-quoted string (the PythonGrader example's `source`): read with `ast.literal_eval`,
#     so its escapes (`\"""`) mean what Python says they mean;
#   - a parenthesised concatenation of string literals (the ScoreModel example's `text`): joined, as Python
#     would join them.
# Everything is handled by the tokenizer and the parser below; no example needed a special case.
# Text that is valid JSON is read by `json.loads`, untouched.

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<triple>\"\"\"(?:\\.|[^\\])*?\"\"\")
    | (?P<string>"(?:\\.|[^"\\])*")
    | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<word>[A-Za-z_][A-Za-z_0-9]*)
    | (?P<ellipsis>\.\.\.)
    | (?P<punct>[{}\[\]:,()])
    """,
    re.VERBOSE | re.DOTALL,
)
_WORDS: dict[str, Any] = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}
_PLACEHOLDER = object()


@dataclass(frozen=True)
class _Token:
    kind: str  # "value" (a scalar, already decoded), "ellipsis" or a punctuation character
    value: Any
    offset: int


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"lenient_json: cannot read {text[position : position + 30]!r} at offset {position}")
        kind, raw = match.lastgroup, match.group()
        if kind == "triple":
            tokens.append(_Token("value", ast.literal_eval(raw), position))
        elif kind == "string":
            tokens.append(_Token("value", json.loads(raw, strict=False), position))
        elif kind == "number":
            tokens.append(_Token("value", json.loads(raw), position))
        elif kind == "word":
            if raw not in _WORDS:
                raise ValueError(f"lenient_json: unknown word {raw!r} at offset {position}")
            tokens.append(_Token("value", _WORDS[raw], position))
        elif kind == "ellipsis":
            tokens.append(_Token("ellipsis", None, position))
        elif kind == "punct":
            tokens.append(_Token(raw, None, position))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, kind: str | None = None) -> _Token:
        token = self.peek()
        if token is None:
            raise ValueError("lenient_json: unexpected end of text")
        if kind is not None and token.kind != kind:
            raise ValueError(f"lenient_json: expected {kind!r} at offset {token.offset}, found {token.kind!r}")
        self.index += 1
        return token

    def value(self) -> Any:
        token = self.take()
        if token.kind == "value":
            return token.value
        if token.kind == "{":
            return self.members()
        if token.kind == "[":
            return self.elements()
        if token.kind == "(":
            return self.concatenation()
        raise ValueError(f"lenient_json: unexpected {token.kind!r} at offset {token.offset}")

    def members(self) -> Any:
        result: dict[str, Any] = {}
        placeholder = False
        while True:
            token = self.peek()
            if token is None:
                raise ValueError("lenient_json: unclosed object")
            if token.kind == "}":
                self.take()
                return _PLACEHOLDER if placeholder and not result else result
            if token.kind == ",":
                self.take()
            elif token.kind == "ellipsis":
                self.take()
                placeholder = True
            else:
                key = self.take("value").value
                if not isinstance(key, str):
                    raise ValueError(f"lenient_json: object key {key!r} at offset {token.offset} is not a string")
                self.take(":")
                result[key] = self.value()

    def elements(self) -> list[Any]:
        result: list[Any] = []
        while True:
            token = self.peek()
            if token is None:
                raise ValueError("lenient_json: unclosed array")
            if token.kind == "]":
                self.take()
                return result
            if token.kind in (",", "ellipsis"):
                self.take()
                continue
            item = self.value()
            if item is not _PLACEHOLDER:
                result.append(item)

    def concatenation(self) -> str:
        parts: list[str] = []
        while (token := self.take()).kind != ")":
            if token.kind != "value" or not isinstance(token.value, str):
                raise ValueError(f"lenient_json: only string literals may be parenthesised (offset {token.offset})")
            parts.append(token.value)
        return "".join(parts)


def lenient_json(text: str) -> Any:
    """Read JSON as the spec's hand-written examples write it (see the notes above this function)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    parser = _Parser(_tokens(text))
    result = parser.value()
    if parser.peek() is not None:
        raise ValueError(f"lenient_json: text after the value at offset {parser.take().offset}")
    if result is _PLACEHOLDER:
        raise ValueError("lenient_json: the whole text is a placeholder")
    return result


# --- examples of the spec ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecExample:
    """One response example of the spec.

    :param example_id: a readable id: the operationId (and the example's title), or ``schema:<Name>``.
    :param schema_name: the component schema the example is an instance of; None when the operation's
        200 answer has no JSON object schema (``downloadFile``: a file's bytes).
    :param text: the example as written in the spec.
    """

    example_id: str
    schema_name: str | None
    text: str


def _response_schema_name(operation: dict[str, Any]) -> str | None:
    for status in ("200", "201"):
        content = operation.get("responses", {}).get(status, {}).get("content", {})
        schema = content.get("application/json", {}).get("schema", {})
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return ref.rsplit("/", 1)[-1]
    return None


def iter_operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """Yield (path, method, operationId, operation) for every operation of the spec."""
    for path, item in spec.get("paths", {}).items():
        for method in HTTP_METHODS:
            operation = item.get(method)
            if isinstance(operation, dict):
                yield path, method, operation["operationId"], operation


def operation_response_examples(operation_id: str, operation: dict[str, Any]) -> list[SpecExample]:
    """The response examples of one operation: ``examples.response``, or each ``examples[i].response``."""
    examples = operation.get("x-oaiMeta", {}).get("examples")
    if isinstance(examples, dict):
        examples = [examples]
    schema_name = _response_schema_name(operation)
    found = []
    for example in examples or []:
        text = example.get("response")
        if not text:
            continue  # a request-only example (runGrader has some)
        title = example.get("title")
        example_id = f"{operation_id}[{title}]" if title and len(examples) > 1 else operation_id
        found.append(SpecExample(example_id, schema_name, text))
    return found


def schema_examples(spec: dict[str, Any]) -> list[SpecExample]:
    """The ``x-oaiMeta.example`` of every component schema that has one."""
    found = []
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        text = schema.get("x-oaiMeta", {}).get("example")
        if text:
            found.append(SpecExample(f"schema:{name}", name, text))
    return found
