"""Training data checked by Vertex AI's own JSONL formats for Gemini (``rules=VERTEX_RULES``), each error naming its
line and field."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from google.genai import types as genai

from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.training_data import TrainingDataError, validate_file, validate_jsonl
from airflow_provider_finetune.training_data.vertex import PART_FIELDS, VERTEX_ROLES
from airflow_provider_finetune.training_data.vertex import RULES as VERTEX_RULES

SUPERVISED = {
    "systemInstruction": {"role": "system", "parts": [{"text": "You are a pirate dog named Captain Barktholomew."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "Argh! What brings ye to my ship?"}]},
        {"role": "user", "parts": [{"text": "What's your name?"}]},
        {"role": "model", "parts": [{"text": "I be Captain Barktholomew."}]},
    ],
}
MULTIMODAL = {
    "contents": [
        {
            "role": "user",
            "parts": [
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://acme-tuning/images/cat.jpg"}},
                {"text": "What is this?"},
            ],
        },
        {"role": "model", "parts": [{"text": "A cat."}]},
    ]
}
FUNCTION_CALLING = {
    "contents": [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]},
        {"role": "model", "parts": [{"text": "21 degrees."}]},
    ],
    "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "The weather of a city"}]}],
}
PREFERENCE = {
    "system_instruction": {"parts": [{"text": "You are a chat bot."}]},
    "contents": [{"role": "user", "parts": [{"text": "What is my favorite fruit?"}]}],
    "completions": [
        {"score": 1, "completion": {"role": "model", "parts": [{"text": "Apple! Apple! Apple!"}]}},
        {"score": 0, "completion": {"role": "model", "parts": [{"text": "Your favorite fruit is apple."}]}},
    ],
}


def _file(*lines: Any) -> io.BytesIO:
    return io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))


def _issues(*lines: Any, method: Any = "supervised") -> list[tuple[int | None, str | None, str]]:
    with pytest.raises(TrainingDataError) as raised:
        validate_file(_file(*lines), method=method, min_examples=1, rules=VERTEX_RULES)
    return [(issue.line, issue.field, issue.message) for issue in raised.value.issues]


@pytest.mark.parametrize(
    ("example", "method", "fmt"),
    [
        (SUPERVISED, "supervised", "chat"),
        (MULTIMODAL, "supervised", "chat"),
        (FUNCTION_CALLING, "supervised", "chat"),
        (PREFERENCE, "dpo", "preference"),
    ],
    ids=["text", "file-data", "function-calling", "preference"],
)
def test_vertex_formats_are_taken(example: dict[str, Any], method: Any, fmt: str) -> None:
    report = validate_file(_file(*[example] * 3), method=method, min_examples=1, rules=VERTEX_RULES)
    assert (report.examples, report.format, report.method) == (3, fmt, method)
    assert report.tokens > 0


@pytest.mark.parametrize("example", [SUPERVISED, MULTIMODAL, FUNCTION_CALLING], ids=["text", "file-data", "functions"])
def test_what_is_taken_is_googles_content_type(example: dict[str, Any]) -> None:
    """Each turn a valid example holds is a ``Content`` of Google's SDK (camelCase, unknown fields refused)."""
    for turn in example["contents"]:
        genai.Content.model_validate(turn)
    if "systemInstruction" in example:
        genai.Content.model_validate(example["systemInstruction"])
    assert {name for turn in example["contents"] for part in turn["parts"] for name in part} <= set(PART_FIELDS)
    assert {turn["role"] for turn in example["contents"]} <= set(VERTEX_ROLES)


def test_snake_case_spellings_are_read_as_the_proto_json_reads_them() -> None:
    snake = {
        "system_instruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"file_data": {"mime_type": "image/png", "file_uri": "gs://b-1/x.png"}}]},
            {"role": "model", "parts": [{"text": "A chart."}]},
        ],
    }
    assert validate_file(_file(snake), min_examples=1, rules=VERTEX_RULES).examples == 1


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        ({"contents": []}, "contents", "non-empty list"),
        ({"systemInstruction": SUPERVISED["systemInstruction"]}, "contents", "required"),
        ({**SUPERVISED, "messages": []}, "messages", "unknown key"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "contents[0].role", "user or model"),
        ({"contents": [{"role": "user", "parts": [{"text": "only a question"}]}]}, "contents", "no model turn"),
        (
            {"contents": [*SUPERVISED["contents"], {"role": "user", "parts": [{"text": "and?"}]}]},
            "contents[4].role",
            "end with the model's turn",
        ),
        ({"contents": [{"role": "model", "parts": []}]}, "contents[0].parts", "non-empty list"),
        ({"contents": [{"role": "model", "parts": [{"text": ""}]}]}, "contents[0].parts[0].text", "must not be empty"),
        ({"contents": [{"role": "model", "parts": [{"text": 3}]}]}, "contents[0].parts[0].text", "must be a string"),
        (
            {"contents": [{"role": "model", "parts": [{"text": "a", "fileData": {}}]}]},
            "contents[0].parts[0]",
            "exactly one",
        ),
        (
            {"contents": [{"role": "model", "parts": [{"inlineData": {}}]}]},
            "contents[0].parts[0].inlineData",
            "unknown key",
        ),
        (
            {
                "contents": [
                    {"role": "model", "parts": [{"fileData": {"mimeType": "image/png", "fileUri": "https://x/y.png"}}]}
                ]
            },
            "contents[0].parts[0].fileData.fileUri",
            "gs://",
        ),
        (
            {"contents": [{"role": "model", "parts": [{"functionCall": {"args": {}}}]}]},
            "contents[0].parts[0].functionCall",
            "name",
        ),
        ({**SUPERVISED, "systemInstruction": "Be brief."}, "systemInstruction", "object with parts"),
        ({**SUPERVISED, "tools": {}}, "tools", "list of tools"),
        ({"contents": [{"role": "model", "parts": [{"text": "x"}], "text": "y"}]}, "contents[0].text", "unknown key"),
    ],
)
def test_a_bad_supervised_line_names_its_line_and_field(bad: dict[str, Any], field: str, message: str) -> None:
    issues = _issues(SUPERVISED, bad)
    assert any(line == 2 and where == field and message in text for line, where, text in issues), issues
    assert all(line == 2 for line, _, _ in issues)


def test_an_openai_chat_line_is_told_what_vertex_takes() -> None:
    openai_chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    ((line, field, message),) = _issues(openai_chat)
    assert (line, field) == (1, None)
    assert "OpenAI chat example" in message
    assert "contents" in message


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        (
            {**PREFERENCE, "completions": PREFERENCE["completions"][:1]},
            "completions",
            "exactly two completions (1 given)",
        ),
        (
            {**PREFERENCE, "completions": [PREFERENCE["completions"][0]] * 2},
            "completions",
            "one preferred completion (score 1) and one dispreferred (score 0)",
        ),
        (
            {
                **PREFERENCE,
                "completions": [{**PREFERENCE["completions"][0], "score": 0.5}, PREFERENCE["completions"][1]],
            },
            "completions[0].score",
            "1 (preferred) or 0",
        ),
        (
            {
                **PREFERENCE,
                "completions": [
                    {"score": 1, "completion": {"role": "user", "parts": [{"text": "x"}]}},
                    PREFERENCE["completions"][1],
                ],
            },
            "completions[0].completion.role",
            "must be model",
        ),
        (
            {**PREFERENCE, "completions": [{"score": 1}, PREFERENCE["completions"][1]]},
            "completions[0].completion",
            "required",
        ),
        (
            {**PREFERENCE, "contents": [*PREFERENCE["contents"], {"role": "model", "parts": [{"text": "x"}]}]},
            "contents[1].role",
            "end with the user's turn",
        ),
        (
            {**PREFERENCE, "contents": MULTIMODAL["contents"][:1]},
            "contents[0].parts[0].fileData",
            "text only",
        ),
        ({**PREFERENCE, "input": {}}, "input", "unknown key"),
    ],
)
def test_a_bad_preference_line_names_its_line_and_field(bad: dict[str, Any], field: str, message: str) -> None:
    issues = _issues(PREFERENCE, bad, method="dpo")
    assert any(line == 2 and where == field and message in text for line, where, text in issues), issues


def test_a_supervised_line_in_a_preference_file_and_back() -> None:
    ((_, _, message),) = _issues(SUPERVISED, method="dpo")
    assert "looks like a supervised example" in message
    ((_, _, message),) = _issues(PREFERENCE)
    assert "looks like a preference (dpo) example" in message


def test_every_problem_of_a_file_is_named_with_its_line() -> None:
    lines = [json.dumps(SUPERVISED), "not json", json.dumps({"contents": [{"role": "bot", "parts": [{"text": "x"}]}]})]
    with pytest.raises(TrainingDataError) as raised:
        validate_jsonl(lines, min_examples=1, rules=VERTEX_RULES, name="train.jsonl")
    text = str(raised.value)
    assert text.startswith("train.jsonl is not valid supervised training data: line 2: not valid JSON")
    assert "line 3: contents[0].role: must be user or model, not 'bot'" in text


def test_vertex_has_no_reinforcement_rules_here() -> None:
    with pytest.raises(InvalidRequestError, match="Vertex AI has no reinforcement fine-tuning"):
        validate_jsonl([json.dumps(SUPERVISED)], method="reinforcement", min_examples=1, rules=VERTEX_RULES)


def test_the_vertex_backend_checks_files_by_these_rules() -> None:
    from airflow_provider_finetune.backends.vertex import VertexBackend

    assert VertexBackend.training_data_rules == VERTEX_RULES == "vertex"
