"""Bedrock's dataset formats: what a customization job's validation checks, and what a deployed model knows.

The examples a deployed custom model answers from come from the same records.

One JSON object a line, the shape depending on the customization type and the base model:

* ``FINE_TUNING`` of a model trained on text pairs (Titan Text, Llama 3.1): ``{"prompt", "completion"}``;
* ``FINE_TUNING`` of a conversational model (Nova, Claude 3 Haiku): ``{"schemaVersion":
  "bedrock-conversation-2024", "system": [{"text"}], "messages": [{"role", "content": [{"text"}]}]}``,
  user and assistant in turn, from a user message to an assistant message (Claude's older form, with
  string contents, is accepted too);
* ``DISTILLATION``: conversations whose assistant answers are optional (the teacher writes them);
* ``CONTINUED_PRE_TRAINING``: ``{"input": "<text>"}``;
* ``REINFORCEMENT_FINE_TUNING``: ``{"messages": [...]}`` ending with a user message, any other key being
  data for the grader (``reference_answer``...).

A problem is reported as Bedrock reports it in ``failureMessage``: the file, the line and the reason.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from airflow_provider_finetune.training_data import estimate_text_tokens, iter_lines

__all__ = ["DataCheck", "DataError", "check_dataset", "example_pairs"]

#: The ``schemaVersion`` of Bedrock's conversation records.
CONVERSATION_SCHEMA = "bedrock-conversation-2024"
#: Most lines a dataset may hold (Bedrock's quota for most models).
MAX_RECORDS = 20_000


class DataError(Exception):
    """A dataset does not have the shape its customization type needs; the message names the line."""


@dataclass(frozen=True)
class DataCheck:
    """What a valid dataset holds.

    :param records: its records (lines).
    :param tokens: an estimate of its tokens.
    """

    records: int
    tokens: int


def check_dataset(data: bytes, *, customization_type: str, data_format: str, name: str) -> DataCheck:
    """Check a dataset for a customization type; return its counts or raise :class:`DataError`.

    :param data: the file's bytes.
    :param customization_type: ``FINE_TUNING``, ``CONTINUED_PRE_TRAINING``, ``DISTILLATION`` or
        ``REINFORCEMENT_FINE_TUNING``.
    :param data_format: the base model's record format for fine-tuning: ``prompt_completion`` or
        ``conversation``.
    :param name: how the message names the file (its S3 URI).
    """
    records = tokens = 0
    for number, record in _records(data, name):
        try:
            tokens += _check_record(record, customization_type, data_format)
        except DataError as exc:
            raise DataError(f"{name}: line {number}: {exc}") from None
        records += 1
        if records > MAX_RECORDS:
            raise DataError(f"{name}: the file holds more than {MAX_RECORDS} records")
    if records == 0:
        raise DataError(f"{name}: the file holds no records")
    return DataCheck(records, tokens)


def _records(data: bytes, name: str) -> Iterator[tuple[int, Any]]:
    for number, raw in enumerate(iter_lines(io.BytesIO(data)), start=1):
        line = raw.rstrip(b"\r\n")
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise DataError(f"{name}: line {number}: not valid JSON (the file must be JSON Lines)") from None
        if not isinstance(record, dict):
            raise DataError(f"{name}: line {number}: a record must be a JSON object")
        yield number, record


def _check_record(record: dict[str, Any], customization_type: str, data_format: str) -> int:
    if customization_type == "CONTINUED_PRE_TRAINING":
        _only(record, {"input"})
        return estimate_text_tokens(_string(record, "input"))
    if customization_type == "REINFORCEMENT_FINE_TUNING":
        messages = _messages(record.get("messages"), "messages")
        if messages[-1][0] != "user":
            raise DataError("the last message must be a user message (the model writes the answer)")
        return sum(estimate_text_tokens(text) for _, text in messages)
    if data_format == "prompt_completion":
        _only(record, {"prompt", "completion"})
        return estimate_text_tokens(_string(record, "prompt")) + estimate_text_tokens(_string(record, "completion"))
    return _check_conversation(record, answers_required=customization_type == "FINE_TUNING")


def _check_conversation(record: dict[str, Any], *, answers_required: bool) -> int:
    _only(record, {"schemaVersion", "system", "messages"})
    schema = record.get("schemaVersion")
    if schema is not None and schema != CONVERSATION_SCHEMA:
        raise DataError(f"'schemaVersion' must be '{CONVERSATION_SCHEMA}', got {schema!r}")
    tokens = 0
    system = record.get("system")
    if system is not None:
        tokens += estimate_text_tokens(_content(system, "system"))
    messages = _messages(record.get("messages"), "messages")
    for index, (role, _) in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise DataError(f"'messages[{index}].role' must be '{expected}' (user and assistant take turns)")
    if answers_required and messages[-1][0] != "assistant":
        raise DataError("the last message must be an assistant message (the answer to learn)")
    return tokens + sum(estimate_text_tokens(text) for _, text in messages)


def _only(record: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(record) - allowed)
    if unknown:
        raise DataError(f"unexpected key '{unknown[0]}' (a record has {', '.join(sorted(allowed))})")


def _string(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise DataError(f"'{key}' is required and must be a string")
    if not value.strip():
        raise DataError(f"'{key}' must not be empty")
    return value


def _messages(value: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"'{where}' is required and must be a non-empty list")
    result: list[tuple[str, str]] = []
    for index, message in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(message, dict):
            raise DataError(f"'{at}' must be an object")
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise DataError(f"'{at}.role' must be 'user' or 'assistant', got {role!r}")
        result.append((str(role), _content(message.get("content"), f"{at}.content")))
    # A leading system message (OpenAI's form, used for reinforcement data) is part of the prompt.
    return result[1:] if len(result) > 1 and result[0][0] == "system" else result


def _content(value: Any, where: str) -> str:
    """The text of a content: a string, or a list of ``{"text": ...}`` blocks."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value:
        texts = []
        for index, block in enumerate(value):
            if not isinstance(block, dict) or not isinstance(block.get("text"), str):
                raise DataError(f"'{where}[{index}]' must be an object with a 'text' string")
            texts.append(block["text"])
        return " ".join(texts)
    raise DataError(f"'{where}' must be a non-empty string or a non-empty list of text blocks")


def example_pairs(data: bytes) -> dict[str, str]:
    """The (last user text -> answer) pairs of a dataset, for a model trained on it to answer from."""
    pairs: dict[str, str] = {}
    for raw in iter_lines(io.BytesIO(data)):
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
            pairs.setdefault(record["prompt"].strip(), record["completion"].strip())
            continue
        try:
            messages = _messages(record.get("messages"), "messages")
        except DataError:
            continue
        answers = [index for index, (role, _) in enumerate(messages) if role == "assistant"]
        if answers and answers[-1] > 0 and messages[answers[-1] - 1][0] == "user":
            pairs.setdefault(messages[answers[-1] - 1][1].strip(), messages[answers[-1]][1].strip())
    return pairs
