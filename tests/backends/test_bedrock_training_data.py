"""Bedrock's training data formats, per model family and customization type; errors name the line and the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_finetune.training_data.bedrock import BedrockDataError, data_format, validate_lines
from tests.backends.bedrock_fake import service_model


def conversation(last: str = "assistant", **extra: Any) -> dict[str, Any]:
    turns = [{"role": "user", "content": [{"text": "What is 2 + 2?"}]}]
    if last == "assistant":
        turns.append({"role": "assistant", "content": [{"text": "4"}]})
    return {"schemaVersion": "bedrock-conversation-2024", "system": [{"text": "You add."}], "messages": turns, **extra}


def lines(*records: Any) -> list[str]:
    return [r if isinstance(r, str) else json.dumps(r) for r in records]


@pytest.mark.parametrize(
    ("model", "kind", "expected"),
    [
        ("amazon.nova-micro-v1:0:128k", "FINE_TUNING", "conversation"),
        ("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0:300k", "FINE_TUNING", "conversation"),
        ("anthropic.claude-3-haiku-20240307-v1:0:200k", "FINE_TUNING", "claude_messages"),
        ("meta.llama3-1-8b-instruct-v1:0", "FINE_TUNING", "prompt_completion"),
        ("amazon.titan-text-express-v1", "CONTINUED_PRE_TRAINING", "text"),
        ("amazon.nova-micro-v1:0:128k", "DISTILLATION", "prompts"),
        ("amazon.nova-lite-v1:0:300k", "REINFORCEMENT_FINE_TUNING", "rft"),
    ],
)
def test_the_format_follows_the_model_family_and_customization_type(model: str, kind: str, expected: str) -> None:
    assert data_format(model, kind) == expected


def test_every_customization_type_but_imported_has_a_format() -> None:
    kinds = set(service_model().shape_for("CustomizationType").enum) - {"IMPORTED"}
    for kind in kinds:
        assert data_format("amazon.nova-micro-v1:0:128k", kind)


@pytest.mark.parametrize(
    ("fmt", "good"),
    [
        ("conversation", conversation()),
        (
            "claude_messages",
            {
                "system": "Be brief.",
                "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
            },
        ),
        ("prompt_completion", {"prompt": "2 + 2 =", "completion": "4"}),
        ("text", {"input": "Brightwave bulbs last 25,000 hours."}),
        ("prompts", conversation(last="user")),
        ("rft", conversation(last="user", reference_answer="4")),
    ],
)
def test_a_good_record_of_each_format(fmt: Any, good: dict[str, Any]) -> None:
    summary = validate_lines(lines(good, good), fmt)
    assert summary.records == 2


@pytest.mark.parametrize(
    ("fmt", "bad", "message"),
    [
        ("conversation", "{not json", "line 2: not valid JSON"),
        ("conversation", conversation(last="user"), "line 2: the last turn must be 'assistant'"),
        ("conversation", {**conversation(), "schemaVersion": "v1"}, "line 2: 'schemaVersion' must be"),
        ("conversation", {**conversation(), "extra": 1}, "line 2: unexpected field 'extra'"),
        (
            "conversation",
            {**conversation(), "messages": [{"role": "assistant", "content": [{"text": "x"}]}]},
            "line 2: messages[0].role is 'assistant': turns alternate, starting with 'user'",
        ),
        (
            "conversation",
            {
                **conversation(),
                "messages": [
                    {"role": "user", "content": [{"image": {"format": "bmp"}}]},
                    {"role": "assistant", "content": [{"text": "x"}]},
                ],
            },
            "line 2: messages[0].content[0].image.format must be one of",
        ),
        ("prompt_completion", {"prompt": "x"}, "line 2: 'completion' must be a non-empty string"),
        ("text", {"input": ""}, "line 2: 'input' must be a non-empty string"),
        (
            "claude_messages",
            {"messages": [{"role": "user", "content": [{"text": "x"}]}, {"role": "assistant", "content": "y"}]},
            "line 2: messages[0].content must be a non-empty string",
        ),
        ("rft", conversation(), "line 2: the last turn must be 'user'"),
    ],
)
def test_a_bad_record_names_its_line_and_field(fmt: Any, bad: Any, message: str) -> None:
    good = {
        "conversation": conversation(),
        "prompt_completion": {"prompt": "a", "completion": "b"},
        "text": {"input": "a"},
        "claude_messages": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        "rft": conversation(last="user"),
    }[fmt]
    with pytest.raises(BedrockDataError) as err:
        validate_lines(lines(good, bad, good), fmt)
    assert str(err.value).startswith(message)
    assert err.value.line == 2


def test_lines_are_read_lazily_and_bytes_are_fine() -> None:
    read: list[int] = []

    def stream() -> Any:
        for n in range(3):
            read.append(n)
            yield json.dumps({"input": "text"}).encode()
        yield b"{broken"
        read.append(99)

    with pytest.raises(BedrockDataError, match="line 4"):
        validate_lines(stream(), "text")
    assert read == [0, 1, 2]  # stopped at the bad line: nothing after it was read


def test_too_few_records() -> None:
    with pytest.raises(BedrockDataError, match="at least 8"):
        validate_lines(lines({"input": "a"}), "text", min_records=8)
