"""Training data for AWS Bedrock model customization: the JSONL format each model family and customization type takes.

As AWS documents them ("Prepare your training datasets"):

* **Amazon Nova** (fine-tuning): the conversation schema, one record a line::

      {"schemaVersion": "bedrock-conversation-2024", "system": [{"text": "..."}],
       "messages": [{"role": "user", "content": [{"text": "..."}]},
                    {"role": "assistant", "content": [{"text": "..."}]}]}

  turns alternate, starting with ``user`` and ending with ``assistant``; a content block is ``text``, ``image`` or
  ``video`` (the media read from ``s3Location``).
* **Anthropic Claude 3 Haiku**: ``{"system": "...", "messages": [{"role": "user", "content": "..."}, ...]}``, text
  content, alternating turns ending with ``assistant``.
* **Other text models** (Amazon Titan Text, Meta Llama, Cohere Command): ``{"prompt": "...", "completion": "..."}``.
* **Continued pre-training**: ``{"input": "..."}`` (unlabelled text).
* **Distillation**: the conversation schema with prompts only: the last turn is ``user`` (the teacher answers it);
  an ``assistant`` turn may be given as a golden answer.
* **Reinforcement fine-tuning**: the conversation schema ending with the ``user`` turn to answer; any other field of
  the record (a reference answer, say) is passed to the Lambda grader as it is.

:func:`validate_lines` reads any iterable of lines (a local file, or an S3 object streamed line by line) and raises
:class:`BedrockDataError` naming the first bad line. No Airflow import, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from airflow_provider_finetune.exceptions import InvalidRequestError

__all__ = [
    "CONVERSATION_SCHEMA",
    "BedrockDataError",
    "BedrockDataFormat",
    "DataSummary",
    "data_format",
    "validate_lines",
]

#: The ``schemaVersion`` of the conversation format.
CONVERSATION_SCHEMA = "bedrock-conversation-2024"

BedrockDataFormat = Literal["conversation", "claude_messages", "prompt_completion", "text", "prompts", "rft"]

_MEDIA_FORMATS = {"image": ("png", "jpeg", "gif", "webp"), "video": ("mov", "mkv", "mp4", "webm")}


class BedrockDataError(InvalidRequestError):
    """A training file that Bedrock would refuse; names the line and the field.

    :param line: the 1-based line number.
    """

    def __init__(self, message: str, *, line: int, field: str | None = None) -> None:
        super().__init__(f"line {line}: {message}", field=field)
        self.line = line


@dataclass(frozen=True)
class DataSummary:
    """What a valid file holds.

    :param format: the format it was checked against.
    :param records: how many records.
    :param characters: characters of text (a rough size of the data).
    """

    format: BedrockDataFormat
    records: int
    characters: int


def data_format(model: str, customization_type: str = "FINE_TUNING") -> BedrockDataFormat:
    """The format a model family takes for a customization type."""
    name = model.rsplit("/", 1)[-1]
    if customization_type == "CONTINUED_PRE_TRAINING":
        return "text"
    if customization_type == "DISTILLATION":
        return "prompts"
    if customization_type == "REINFORCEMENT_FINE_TUNING":
        return "rft"
    if customization_type != "FINE_TUNING":
        raise InvalidRequestError(f"customization_type: {customization_type!r} takes no training file here")
    if "amazon.nova" in name:
        return "conversation"
    if "anthropic.claude" in name:
        return "claude_messages"
    return "prompt_completion"


def validate_lines(
    lines: Iterable[str | bytes], fmt: BedrockDataFormat, *, min_records: int = 1, max_records: int | None = None
) -> DataSummary:
    """Check every line of a JSONL file against ``fmt``; the first fault raises, naming its line.

    :param lines: the file's lines, read lazily (an S3 object's ``iter_lines()``, a file).
    :param fmt: the format (see :func:`data_format`).
    :param min_records: fewest records the file must hold.
    :param max_records: most records it may hold, if bounded.
    """
    records = characters = 0
    number = 0
    for number, raw in enumerate(lines, start=1):
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise BedrockDataError(f"not valid JSON ({err.msg})", line=number) from None
        if not isinstance(record, dict):
            raise BedrockDataError("a record must be a JSON object", line=number)
        characters += _CHECKS[fmt](record, number)
        records += 1
        if max_records is not None and records > max_records:
            raise BedrockDataError(f"more than {max_records} records", line=number)
    if records < min_records:
        raise BedrockDataError(f"{records} records, at least {min_records} are needed", line=max(number, 1))
    return DataSummary(fmt, records, characters)


def _text(record: dict[str, Any], key: str, line: int) -> int:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BedrockDataError(f"{key!r} must be a non-empty string", line=line, field=key)
    return len(value)


def _only(record: dict[str, Any], allowed: set[str], line: int) -> None:
    extra = sorted(set(record) - allowed)
    if extra:
        raise BedrockDataError(
            f"unexpected field {extra[0]!r} (this format takes {', '.join(sorted(allowed))})", line=line, field=extra[0]
        )


def _prompt_completion(record: dict[str, Any], line: int) -> int:
    _only(record, {"prompt", "completion"}, line)
    return _text(record, "prompt", line) + _text(record, "completion", line)


def _continued(record: dict[str, Any], line: int) -> int:
    _only(record, {"input"}, line)
    return _text(record, "input", line)


def _claude(record: dict[str, Any], line: int) -> int:
    _only(record, {"system", "messages"}, line)
    size = 0
    if "system" in record:
        if not isinstance(record["system"], str):
            raise BedrockDataError("'system' must be a string", line=line, field="system")
        size += len(record["system"])
    messages = _turns(record, line, last="assistant")
    for index, message in enumerate(messages):
        where = f"messages[{index}].content"
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise BedrockDataError(f"{where} must be a non-empty string", line=line, field=where)
        size += len(message["content"])
    return size


def _turns(record: dict[str, Any], line: int, *, last: str | None) -> list[dict[str, Any]]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BedrockDataError("'messages' must be a non-empty list", line=line, field="messages")
    expected = "user"
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise BedrockDataError(f"{where} must be an object", line=line, field=where)
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise BedrockDataError(f"{where}.role must be 'user' or 'assistant', got {role!r}", line=line, field=where)
        if role != expected:
            raise BedrockDataError(
                f"{where}.role is {role!r}: turns alternate, starting with 'user'", line=line, field=f"{where}.role"
            )
        expected = "assistant" if role == "user" else "user"
    if last is not None and messages[-1].get("role") != last:
        raise BedrockDataError(
            f"the last turn must be {last!r}, got {messages[-1].get('role')!r}", line=line, field="messages"
        )
    return messages


def _blocks(content: Any, where: str, line: int) -> int:
    if not isinstance(content, list) or not content:
        raise BedrockDataError(f"{where} must be a non-empty list of content blocks", line=line, field=where)
    size = 0
    for index, block in enumerate(content):
        here = f"{where}[{index}]"
        if not isinstance(block, dict) or len(block) != 1:
            raise BedrockDataError(f"{here} must be one of {{'text'}}, {{'image'}}, {{'video'}}", line=line, field=here)
        ((kind, value),) = block.items()
        if kind == "text":
            if not isinstance(value, str) or not value.strip():
                raise BedrockDataError(f"{here}.text must be a non-empty string", line=line, field=f"{here}.text")
            size += len(value)
        elif kind in _MEDIA_FORMATS:
            _media(value, kind, f"{here}.{kind}", line)
        else:
            raise BedrockDataError(f"{here}: unknown content block {kind!r}", line=line, field=here)
    return size


def _media(value: Any, kind: str, where: str, line: int) -> None:
    if not isinstance(value, dict) or value.get("format") not in _MEDIA_FORMATS[kind]:
        raise BedrockDataError(
            f"{where}.format must be one of {', '.join(_MEDIA_FORMATS[kind])}", line=line, field=f"{where}.format"
        )
    location = (value.get("source") or {}).get("s3Location") if isinstance(value.get("source"), dict) else None
    if not isinstance(location, dict) or not str(location.get("uri", "")).startswith("s3://"):
        raise BedrockDataError(
            f"{where}.source.s3Location.uri must be an s3:// URI", line=line, field=f"{where}.source.s3Location.uri"
        )


def _conversation(record: dict[str, Any], line: int, *, last: str | None, extra: bool = False) -> int:
    if record.get("schemaVersion") != CONVERSATION_SCHEMA:
        raise BedrockDataError(
            f"'schemaVersion' must be {CONVERSATION_SCHEMA!r}, got {record.get('schemaVersion')!r}",
            line=line,
            field="schemaVersion",
        )
    if not extra:
        _only(record, {"schemaVersion", "system", "messages"}, line)
    size = 0
    if "system" in record:
        system = record["system"]
        if not isinstance(system, list) or not all(isinstance(b, dict) and set(b) == {"text"} for b in system):
            raise BedrockDataError("'system' must be a list of {'text': ...} blocks", line=line, field="system")
        size += sum(len(str(b["text"])) for b in system)
    for index, message in enumerate(_turns(record, line, last=last)):
        size += _blocks(message.get("content"), f"messages[{index}].content", line)
    return size


_CHECKS = {
    "conversation": lambda record, line: _conversation(record, line, last="assistant"),
    "claude_messages": _claude,
    "prompt_completion": _prompt_completion,
    "text": _continued,
    "prompts": lambda record, line: _conversation(record, line, last=None),
    "rft": lambda record, line: _conversation(record, line, last="user", extra=True),
}
