"""Training data checked by Together's own JSONL formats (``rules=TOGETHER_RULES``), each error naming its line."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.training_data import TrainingDataError, validate_file
from airflow_provider_finetune.training_data.together import RULES as TOGETHER_RULES

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
PREFERENCE = {
    "input": {"messages": [{"role": "user", "content": "Hi"}]},
    "preferred_output": [{"role": "assistant", "content": "Hello!"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
}


def _file(*lines: Any) -> io.BytesIO:
    return io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))


@pytest.mark.parametrize(
    ("example", "method", "fmt"),
    [
        (CHAT, "supervised", "chat"),
        ({"prompt": "Translate: chat", "completion": "cat"}, "supervised", "prompt_completion"),
        ({"text": "Brightwave bulbs connect to 2.4 GHz Wi-Fi."}, "supervised", "text"),
        (PREFERENCE, "dpo", "preference"),
    ],
    ids=["conversational", "instruction", "generic-text", "preference"],
)
def test_together_formats_are_taken(example: dict[str, Any], method: Any, fmt: str) -> None:
    report = validate_file(_file(*[example] * 3), method=method, min_examples=1, rules=TOGETHER_RULES)
    assert (report.examples, report.format) == (3, fmt)


def test_generic_text_is_not_openai_training_data() -> None:
    with pytest.raises(TrainingDataError, match="line 1"):
        validate_file(_file({"text": "x"}), min_examples=1)


@pytest.mark.parametrize(
    ("bad", "method", "message"),
    [
        ({"text": 3}, "supervised", "text: must be a string"),
        ({"prompt": "only a prompt"}, "supervised", "completion"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "supervised", "role"),
        ({"messages": [{"role": "user", "content": "no answer"}]}, "supervised", "assistant"),
        (PREFERENCE, "supervised", "preference"),
        ({**PREFERENCE, "preferred_output": []}, "dpo", "preferred_output"),
        ({**PREFERENCE, "non_preferred_output": [{"role": "user", "content": "x"}]}, "dpo", "assistant"),
        (CHAT, "dpo", "input"),
    ],
)
def test_a_bad_line_is_named(bad: dict[str, Any], method: Any, message: str) -> None:
    good = CHAT if method == "supervised" else PREFERENCE
    with pytest.raises(TrainingDataError) as info:
        validate_file(_file(good, bad, good), method=method, min_examples=1, rules=TOGETHER_RULES)
    assert "line 2:" in str(info.value)
    assert message in str(info.value)
    assert "line 1:" not in str(info.value)


def test_reinforcement_is_not_a_together_method() -> None:
    with pytest.raises(InvalidRequestError, match="Together") as info:
        validate_file(_file(CHAT), method="reinforcement", min_examples=1, rules=TOGETHER_RULES)
    assert info.value.field == "method"
