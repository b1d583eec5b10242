from __future__ import annotations

import contextlib
import io
import json
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.training_data import (
    METHODS,
    TOKENS_PER_EXAMPLE,
    TOKENS_PER_IMAGE,
    TOKENS_PER_MESSAGE,
    TrainingDataError,
    TrainingFileReport,
    TrainingIssue,
    estimate_text_tokens,
    iter_lines,
    validate_file,
    validate_jsonl,
)

# --- fixtures built in the test ------------------------------------------------------------------------


def chat_example(i: int = 0) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": f"Answer {i}."},
        ]
    }


def prompt_completion_example(i: int = 0) -> dict[str, Any]:
    return {"prompt": f"Question {i}?", "completion": f" Answer {i}."}


def dpo_example(i: int = 0) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": f"Question {i}?"}]},
        "preferred_output": [{"role": "assistant", "content": f"Answer {i}."}],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    }


def rft_example(i: int = 0) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "developer", "content": "Count the donors."},
            {"role": "user", "content": f"CCN{i}"},
        ],
        "reference_answer": {"donors": i},
    }


VALID = {
    "supervised": chat_example,
    "dpo": dpo_example,
    "reinforcement": rft_example,
}


def dumps(value: Any) -> str:
    return json.dumps(value)


def lines_of(build: Any = chat_example, n: int = 10) -> list[str]:
    return [dumps(build(i)) for i in range(n)]


def file_bytes(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def with_bad_line(method: str, bad: str | bytes | dict[str, Any], at: int = 3) -> list[str | bytes]:
    """Ten valid lines of the method, with ``bad`` inserted as line ``at``."""
    lines: list[str | bytes] = list(lines_of(VALID[method]))
    lines.insert(at - 1, dumps(bad) if isinstance(bad, dict) else bad)
    return lines


def refuse(lines: Any, **kwargs: Any) -> TrainingDataError:
    with pytest.raises(TrainingDataError) as info:
        validate_jsonl(lines, **kwargs)
    return info.value


def user(content: Any = "Hi") -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any = "Hello", **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **extra}


def chat(*messages: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages), **extra}


TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"c":1}'}}
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}},
}

# --- valid files -------------------------------------------------------------------------------------------

VALID_CASES = [
    pytest.param("supervised", chat_example, "chat", id="chat"),
    pytest.param("supervised", prompt_completion_example, "prompt_completion", id="prompt-completion"),
    pytest.param("dpo", dpo_example, "preference", id="dpo"),
    pytest.param("reinforcement", rft_example, "reinforcement", id="reinforcement"),
    pytest.param(
        "supervised",
        lambda i: chat(
            user("Weather in Paris?"),
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
            assistant("It is 21C.", weight=1),
            tools=[TOOL],
            parallel_tool_calls=False,
        ),
        "chat",
        id="chat-tool-calls",
    ),
    pytest.param(
        "supervised",
        lambda i: chat(
            user("Weather?"),
            {"role": "assistant", "function_call": {"name": "get_weather", "arguments": "{}"}},
            {"role": "function", "name": "get_weather", "content": "21C"},
            assistant("21C."),
            functions=[{"name": "get_weather", "parameters": {"type": "object"}}],
        ),
        "chat",
        id="chat-legacy-functions",
    ),
    pytest.param(
        "supervised",
        lambda i: chat(
            {"role": "developer", "content": [{"type": "text", "text": "Describe."}]},
            user(
                [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}},
                ]
            ),
            assistant([{"type": "text", "text": "A cat."}]),
        ),
        "chat",
        id="chat-content-parts-and-image",
    ),
    pytest.param(
        "supervised",
        lambda i: chat(user(), assistant("first try", weight=0), user("again"), assistant("better", weight=1)),
        "chat",
        id="chat-weights",
    ),
    pytest.param(
        "dpo",
        lambda i: {
            **dpo_example(i),
            "input": {"messages": [user()], "tools": [TOOL], "parallel_tool_calls": True},
        },
        "preference",
        id="dpo-with-tools",
    ),
    pytest.param(
        "reinforcement",
        lambda i: {**rft_example(i), "tools": [TOOL], "anything": [1, 2], "nested": {"x": None}},
        "reinforcement",
        id="reinforcement-grader-item-keys",
    ),
    pytest.param(
        "reinforcement",
        lambda i: chat(user("a"), assistant("b"), user("c")),
        "reinforcement",
        id="reinforcement-multi-turn",
    ),
]


@pytest.mark.parametrize(("method", "build", "fmt"), VALID_CASES)
def test_valid_files_are_accepted(method: Any, build: Any, fmt: str) -> None:
    report = validate_jsonl(lines_of(build), method=method)
    assert report.method == method
    assert report.format == fmt
    assert report.examples == 10
    assert report.tokens > 0
    assert 0 < report.max_example_tokens <= report.tokens


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([line.encode() for line in lines_of()], id="bytes-without-newlines"),
        pytest.param([line + "\n" for line in lines_of()], id="str-with-newlines"),
        pytest.param([line.encode() + b"\r\n" for line in lines_of()], id="crlf"),
        pytest.param(file_bytes(lines_of()).split(b"\n"), id="split-leaves-final-empty-item"),
        pytest.param(file_bytes(lines_of()).splitlines(), id="splitlines"),
        pytest.param([b"\xef\xbb\xbf" + lines_of()[0].encode(), *lines_of()[1:]], id="bom-on-line-1"),
        pytest.param(["\ufeff" + lines_of()[0], *lines_of()[1:]], id="str-bom-on-line-1"),
    ],
)
def test_line_shapes_accepted(lines: list[Any]) -> None:
    assert validate_jsonl(lines).examples == 10


# --- every rule: the line and the reason the user sees -------------------------------------------------

LONG_LINE = dumps(chat(user("x" * 300), assistant()))

BAD_LINES = [
    # Text, lines and JSON
    pytest.param(
        "supervised", b'{"messages": "\xff"}', {}, 3, "not UTF-8 text (byte 0xff at column 15)", id="not-utf8"
    ),
    pytest.param(
        "supervised",
        b"\xef\xbb\xbf" + dumps(chat_example()).encode(),
        {},
        3,
        "not valid JSON",
        id="bom-not-on-line-1",
    ),
    pytest.param("supervised", "", {}, 3, "empty line", id="empty-line-in-the-middle"),
    pytest.param("supervised", " \t ", {}, 3, "empty line", id="whitespace-only-line"),
    pytest.param("supervised", "\n", {}, 3, "empty line", id="newline-only-line"),
    pytest.param(
        "supervised",
        LONG_LINE,
        {"max_line_bytes": 300},
        3,
        f"line is {len(LONG_LINE)} bytes; at most 300",
        id="line-too-long",
    ),
    pytest.param(
        "supervised",
        '{"messages": [1 2]}',
        {},
        3,
        "not valid JSON (Expecting ',' delimiter: column 17)",
        id="not-json",
    ),
    pytest.param("supervised", "hello", {}, 3, "not valid JSON (Expecting value: column 1)", id="not-json-text"),
    pytest.param("supervised", '{"prompt": NaN, "completion": "x"}', {}, 3, "NaN is not a JSON value", id="nan"),
    pytest.param("supervised", "[1, 2]", {}, 3, "must be a JSON object, not array", id="json-array"),
    pytest.param("dpo", "null", {}, 3, "must be a JSON object, not null", id="json-null"),
    pytest.param("supervised", "[" * 100_000, {}, 3, "not valid JSON", id="nested-too-deeply"),
    pytest.param(
        "supervised",
        dumps(chat_example()) + "\n" + dumps(chat_example()),
        {},
        3,
        "line break",
        id="two-lines-in-one-item",
    ),
    # supervised chat
    pytest.param(
        "supervised",
        chat(user(), {"role": "robot", "content": "x"}, assistant()),
        {},
        3,
        "messages[1].role: 'robot' is not one of system, developer, user, assistant, tool, function",
        id="unknown-role",
    ),
    pytest.param("supervised", chat({"content": "x"}, assistant()), {}, 3, "messages[0].role: required", id="no-role"),
    pytest.param("supervised", {"tools": [TOOL]}, {}, 3, "messages: required", id="no-messages"),
    pytest.param("supervised", chat(), {}, 3, "messages: must not be empty", id="empty-messages"),
    pytest.param("supervised", {"messages": "hi"}, {}, 3, "messages: must be an array", id="messages-not-array"),
    pytest.param(
        "supervised",
        chat("hi", assistant()),
        {},
        3,
        "messages[0]: must be a message object",
        id="message-not-object",
    ),
    pytest.param(
        "supervised",
        chat({"role": "user"}, assistant()),
        {},
        3,
        "messages[0].content: required",
        id="user-no-content",
    ),
    pytest.param(
        "supervised",
        chat(user(None), assistant()),
        {},
        3,
        "messages[0].content: must not be null",
        id="user-null-content",
    ),
    pytest.param(
        "supervised",
        chat(user(42), assistant()),
        {},
        3,
        "messages[0].content: must be a string or an array",
        id="content-number",
    ),
    pytest.param(
        "supervised",
        chat(user([]), assistant()),
        {},
        3,
        "messages[0].content: must not be an empty array",
        id="content-empty-parts",
    ),
    pytest.param(
        "supervised",
        chat(user([{"type": "text"}]), assistant()),
        {},
        3,
        "messages[0].content[0].text: required",
        id="text-part-no-text",
    ),
    pytest.param(
        "supervised",
        chat(user([{"type": "text", "text": 1}]), assistant()),
        {},
        3,
        "content[0].text: must be a string",
        id="text-part-not-string",
    ),
    pytest.param(
        "supervised",
        chat(user([{"type": "video"}]), assistant()),
        {},
        3,
        "content[0].type: 'video' is not allowed here",
        id="unknown-part-type",
    ),
    pytest.param(
        "supervised",
        chat(user([{"type": "input_audio", "input_audio": {}}]), assistant()),
        {},
        3,
        "'input_audio' content is not supported for fine-tuning",
        id="audio-part",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant([{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}])),
        {},
        3,
        "messages[1].content[0].type: 'image_url' is not allowed here; an assistant message takes text or "
        "refusal parts",
        id="image-in-assistant",
    ),
    pytest.param(
        "supervised",
        chat(
            {
                "role": "system",
                "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}],
            },
            user(),
            assistant(),
        ),
        {},
        3,
        "'image_url' is not allowed here; a system message takes text parts",
        id="image-in-system",
    ),
    pytest.param(
        "supervised",
        chat(user([{"type": "image_url", "image_url": {"url": "ftp://x"}}]), assistant()),
        {},
        3,
        "image_url.url: must be an http(s) URL or a data:image/ URL, not 'ftp://x'",
        id="image-bad-url",
    ),
    pytest.param(
        "supervised",
        chat(
            user([{"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "max"}}]),
            assistant(),
        ),
        {},
        3,
        "image_url.detail: 'max' is not one of auto, low, high",
        id="image-bad-detail",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(None)),
        {},
        3,
        "messages[1].content: required in an assistant message without tool_calls or function_call",
        id="assistant-null-content-no-calls",
    ),
    pytest.param(
        "supervised",
        chat(user(), user("again")),
        {},
        3,
        "messages: no assistant message to learn from",
        id="no-assistant",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(weight=0)),
        {},
        3,
        "no assistant message to learn from (every assistant message has weight 0",
        id="all-weights-zero",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(weight=2)),
        {},
        3,
        "messages[1].weight: must be 0 or 1, not 2",
        id="weight-2",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(weight="1")),
        {},
        3,
        "messages[1].weight: must be 0 or 1, not '1'",
        id="weight-string",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(weight=True)),
        {},
        3,
        "must be 0 or 1, not True",
        id="weight-boolean",
    ),
    pytest.param(
        "supervised",
        chat({"role": "user", "content": "x", "weight": 1}, assistant()),
        {},
        3,
        "messages[0].weight: not allowed in a user message",
        id="weight-on-user",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(audio={"id": "a"})),
        {},
        3,
        "messages[1].audio: not allowed in an assistant message",
        id="unknown-message-key",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(), metadata={}),
        {},
        3,
        "metadata: unknown key",
        id="unknown-top-level-key",
    ),
    pytest.param(
        "supervised",
        chat(
            user(),
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "content": "21C"},
            assistant(),
        ),
        {},
        3,
        "messages[2].tool_call_id: required in a tool message",
        id="tool-message-no-call-id",
    ),
    pytest.param(
        "supervised",
        chat(user(), {"role": "function", "content": "x"}, assistant()),
        {},
        3,
        "messages[1].name: required in a function message",
        id="function-message-no-name",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(None, tool_calls="call")),
        {},
        3,
        "messages[1].tool_calls: must be an array of tool calls",
        id="tool-calls-not-array",
    ),
    pytest.param(
        "supervised",
        chat(
            user(),
            assistant(None, tool_calls=[{"id": "c", "type": "function", "function": {"arguments": "{}"}}]),
        ),
        {},
        3,
        "messages[1].tool_calls[0].function.name: required",
        id="tool-call-no-name",
    ),
    pytest.param(
        "supervised",
        chat(
            user(),
            assistant(None, tool_calls=[{**TOOL_CALL, "function": {"name": "f", "arguments": {"c": 1}}}]),
        ),
        {},
        3,
        "tool_calls[0].function.arguments: must be a string, not object",
        id="tool-call-arguments-not-string",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(), tools=[{**TOOL, "type": "code"}]),
        {},
        3,
        "tools[0].type: must be 'function', not 'code'",
        id="tool-type",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(), tools=[{"type": "function", "function": {"name": "get weather"}}]),
        {},
        3,
        "tools[0].function.name: must be 1 to 64 letters",
        id="tool-name",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(), tools={}),
        {},
        3,
        "tools: must be an array of tools",
        id="tools-not-array",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(), parallel_tool_calls="yes"),
        {},
        3,
        "parallel_tool_calls: must be true or false",
        id="parallel-tool-calls",
    ),
    pytest.param(
        "supervised",
        chat(user(), assistant(), functions=[]),
        {},
        3,
        "functions: must hold 1 to 128 functions, not 0",
        id="functions-empty",
    ),
    # supervised prompt-completion and formats
    pytest.param(
        "supervised",
        prompt_completion_example(),
        {},
        3,
        "prompt-completion example in a file whose first example (line 1) is chat; use one format per file",
        id="mixed-formats",
    ),
    pytest.param(
        "supervised",
        {"input": {"messages": [user()]}, "preferred_output": [assistant()]},
        {},
        3,
        "looks like a preference (dpo) example",
        id="dpo-line-in-supervised-file",
    ),
    pytest.param(
        "supervised",
        {"text": "hello"},
        {},
        3,
        "neither a chat example (with messages) nor a prompt-completion example",
        id="no-known-format",
    ),
    pytest.param("supervised", {}, {}, 3, "neither a chat example", id="empty-object"),
    # reinforcement
    pytest.param(
        "reinforcement",
        chat(user(), assistant()),
        {},
        3,
        "messages[1].role: the last message must not be an assistant message",
        id="rft-ends-with-assistant",
    ),
    pytest.param("reinforcement", {"reference_answer": 1}, {}, 3, "messages: required", id="rft-no-messages"),
    pytest.param("reinforcement", chat(), {}, 3, "messages: must not be empty", id="rft-empty-messages"),
    pytest.param(
        "reinforcement",
        chat({"role": "robot", "content": "x"}),
        {},
        3,
        "messages[0].role: 'robot' is not one of",
        id="rft-unknown-role",
    ),
    pytest.param(
        "reinforcement",
        chat(user(), tools=[1]),
        {},
        3,
        "tools[0]: must be a tool object, not number",
        id="rft-bad-tool",
    ),
    # dpo
    pytest.param(
        "dpo",
        {k: v for k, v in dpo_example().items() if k != "non_preferred_output"},
        {},
        3,
        "non_preferred_output: a preference line needs both preferred_output and non_preferred_output",
        id="dpo-no-non-preferred",
    ),
    pytest.param(
        "dpo",
        {k: v for k, v in dpo_example().items() if k != "preferred_output"},
        {},
        3,
        "preferred_output: a preference line needs both preferred_output and non_preferred_output",
        id="dpo-no-preferred",
    ),
    pytest.param(
        "dpo",
        {**dpo_example(), "preferred_output": []},
        {},
        3,
        "preferred_output: must hold exactly one assistant message, not 0",
        id="dpo-empty-output",
    ),
    pytest.param(
        "dpo",
        {**dpo_example(), "preferred_output": [assistant(), assistant()]},
        {},
        3,
        "must hold exactly one assistant message, not 2",
        id="dpo-two-outputs",
    ),
    pytest.param(
        "dpo",
        {**dpo_example(), "preferred_output": assistant()},
        {},
        3,
        "preferred_output: must be an array holding one assistant message",
        id="dpo-output-not-array",
    ),
    pytest.param(
        "dpo",
        {**dpo_example(), "non_preferred_output": [user()]},
        {},
        3,
        "non_preferred_output[0].role: must be 'assistant', not 'user'",
        id="dpo-output-role",
    ),
    pytest.param(
        "dpo",
        {**dpo_example(), "preferred_output": [assistant("")]},
        {},
        3,
        "preferred_output[0].content: the output message needs content",
        id="dpo-output-no-content",
    ),
    pytest.param(
        "dpo",
        {**dpo_example(), "preferred_output": [assistant(weight=1)]},
        {},
        3,
        "preferred_output[0].weight: not allowed in an output message",
        id="dpo-output-weight",
    ),
    pytest.param(
        "dpo",
        {**dpo_example(), "input": {"messages": [user(), assistant()]}},
        {},
        3,
        "input.messages[1].role: the input must not end with an assistant message",
        id="dpo-input-ends-with-assistant",
    ),
    pytest.param(
        "dpo",
        {**dpo_example(), "input": {"messages": []}},
        {},
        3,
        "input.messages: must not be empty",
        id="dpo-input-empty",
    ),
    pytest.param(
        "dpo",
        {k: v for k, v in dpo_example().items() if k != "input"},
        {},
        3,
        "input: required",
        id="dpo-no-input",
    ),
    pytest.param(
        "dpo",
        {**dpo_example(), "input": {"messages": [user()], "seed": 1}},
        {},
        3,
        "input.seed: unknown key",
        id="dpo-input-unknown-key",
    ),
    pytest.param("dpo", {**dpo_example(), "score": 1}, {}, 3, "score: unknown key", id="dpo-unknown-key"),
    pytest.param(
        "dpo",
        chat_example(),
        {},
        3,
        "looks like a chat example; a preference example has input",
        id="chat-line-in-dpo-file",
    ),
]


@pytest.mark.parametrize(("method", "bad", "kwargs", "line", "reason"), BAD_LINES)
def test_bad_line_is_refused_with_its_line_and_reason(
    method: Any, bad: Any, kwargs: dict[str, Any], line: int, reason: str
) -> None:
    err = refuse(with_bad_line(method, bad), method=method, **kwargs)
    assert {issue.line for issue in err.issues} == {line}, err.issues
    assert any(reason in str(issue) for issue in err.issues), err.issues
    assert reason in str(err)
    assert str(err).startswith(f"training file is not valid {method} training data: line {line}: ")


def test_trailing_newline_is_fine_but_an_extra_blank_line_is_not() -> None:
    data = file_bytes(lines_of())
    assert data.endswith(b"}\n")
    assert validate_file(io.BytesIO(data)).examples == 10
    err = refuse(iter_lines(io.BytesIO(data + b"\n")))
    assert [(i.line, i.message) for i in err.issues] == [(11, "empty line")]
    with pytest.raises(TrainingDataError, match="line 11: empty line"):
        validate_file(io.BytesIO(data + b"\n"))
    # A list split on newlines: the last empty item is the final newline; one before it is a blank line.
    err = refuse([*data.split(b"\n"), b""])
    assert [(i.line, i.message) for i in err.issues] == [(11, "empty line")]


def test_issue_str() -> None:
    issue = TrainingIssue(12, "'robot' is not one of system", "messages[1].role")
    assert str(issue) == "line 12: messages[1].role: 'robot' is not one of system"
    assert str(TrainingIssue(3, "empty line")) == "line 3: empty line"
    assert str(TrainingIssue(None, "the file has 0 examples")) == "the file has 0 examples"


# --- min examples ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "ok"), [pytest.param(9, False, id="9-refused"), pytest.param(10, True, id="10-accepted")]
)
def test_min_examples_boundary(n: int, ok: bool) -> None:
    if ok:
        assert validate_jsonl(lines_of(n=n)).examples == n
    else:
        err = refuse(lines_of(n=n))
        assert err.issues == [TrainingIssue(None, "the file has 9 examples; at least 10 are required")]
        assert "has 9 examples; at least 10 are required" in str(err)


def test_min_examples_counts_invalid_lines_and_not_blank_ones() -> None:
    lines: list[str] = [*lines_of(n=6), "not json", "", "[]", "   "]
    err = refuse(lines, min_examples=9)
    assert str(err.issues[-1]) == "the file has 8 examples; at least 9 are required"
    assert validate_jsonl(lines_of(n=3), min_examples=3).examples == 3
    assert validate_jsonl([], min_examples=0).examples == 0


# --- the error message -------------------------------------------------------------------------------------


def test_message_lists_at_most_five_issues_then_counts_the_rest() -> None:
    lines = [line if i % 2 else "{" for i, line in enumerate(lines_of(n=20))]
    err = refuse(lines, name="train.jsonl")
    assert len(err.issues) == 10
    message = str(err)
    assert message.startswith("train.jsonl is not valid supervised training data: line 1: not valid JSON (")
    assert message.count("not valid JSON") == 5
    assert message.endswith("(and 5 more problems)")
    assert "line 9:" in message
    assert "line 11:" not in message


def test_message_names_one_more_problem_in_the_singular() -> None:
    lines = [line if i % 2 else "{" for i, line in enumerate(lines_of(n=12))]
    assert str(refuse(lines)).endswith("(and 1 more problem)")


def test_max_issues_stops_collecting_and_counts_the_rest() -> None:
    err = refuse(["{"] * 30, max_issues=4, min_examples=50)
    assert [i.line for i in err.issues] == [1, 2, 3, 4, None]
    assert err.issues[-1].message == "the file has 30 examples; at least 50 are required"
    assert err.omitted == 26
    assert err.problem_count == 31
    assert str(err).endswith("(and 26 more problems)")


def test_mixed_formats_are_reported_once() -> None:
    lines = [*lines_of(prompt_completion_example), *lines_of(chat_example)]
    err = refuse(lines)
    assert len(err.issues) == 1
    assert str(err.issues[0]) == (
        "line 11: chat example in a file whose first example (line 1) is prompt-completion; use one format per file"
    )


def test_several_issues_on_one_line_are_all_listed() -> None:
    err = refuse(with_bad_line("supervised", chat({"role": "robot"}, assistant(weight=5), extra=1)))
    fields = [i.field for i in err.issues]
    assert fields == ["extra", "messages[0].role", "messages[1].weight"]


@pytest.mark.parametrize("field", ["training_file", "validation_file"])
def test_field_passthrough(field: str) -> None:
    err = refuse(["{"], field=field, min_examples=1)
    assert err.field == field
    assert isinstance(err, InvalidRequestError)
    assert isinstance(err, ValueError)


def test_error_survives_pickling() -> None:
    err = refuse(["{", "[]"], name="val.jsonl", method="dpo", field="validation_file", max_issues=1)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is TrainingDataError
    assert (copy.issues, copy.name, copy.method, copy.field, copy.omitted) == (
        err.issues,
        "val.jsonl",
        "dpo",
        "validation_file",
        1,
    )
    assert str(copy) == str(err)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="method must be one of supervised, dpo, reinforcement") as info:
        validate_jsonl(lines_of(), method="sft")  # type: ignore[arg-type]
    assert not isinstance(info.value, TrainingDataError)
    assert info.value.field == "method"


# --- validate_file -----------------------------------------------------------------------------------------


def test_validate_file_on_a_path(tmp_path: Any) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(file_bytes(lines_of(rft_example, n=12)))
    report = validate_file(path, method="reinforcement")
    assert (report.examples, report.format) == (12, "reinforcement")
    assert validate_file(str(path), method="reinforcement") == report


def test_validate_file_names_the_file_and_keeps_its_path(tmp_path: Any) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(file_bytes([*lines_of(n=10), "oops"]))
    with pytest.raises(TrainingDataError) as info:
        validate_file(path, field="validation_file")
    assert str(info.value).startswith("train.jsonl is not valid supervised training data: line 11: not valid JSON")
    assert info.value.path == str(path)
    assert info.value.field == "validation_file"
    with path.open("rb") as stream, pytest.raises(TrainingDataError, match=r"^train\.jsonl is not valid"):
        validate_file(stream)
    with pytest.raises(TrainingDataError, match=r"^my data is not valid"):
        validate_file(path, name="my data")


def test_validate_file_on_bytesio() -> None:
    stream = io.BytesIO(file_bytes(lines_of(dpo_example)))
    report = validate_file(stream, method="dpo")
    assert report == validate_jsonl(lines_of(dpo_example), method="dpo")
    with pytest.raises(TrainingDataError, match=r"^training file is not valid dpo training data: the file has 0 "):
        validate_file(io.BytesIO(b""), method="dpo")


def test_validate_file_missing_file(tmp_path: Any) -> None:
    with pytest.raises(InvalidRequestError, match="cannot read") as info:
        validate_file(tmp_path / "nope.jsonl", field="validation_file")
    assert info.value.field == "validation_file"


def test_programming_errors_are_type_errors(tmp_path: Any) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(file_bytes(lines_of()))
    with path.open(encoding="utf-8") as text_stream, pytest.raises(TypeError, match="binary stream"):
        validate_file(text_stream)
    with pytest.raises(TypeError, match="iterable of lines"):
        validate_jsonl(file_bytes(lines_of()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be bytes or str, not int"):
        validate_jsonl([1])  # type: ignore[list-item]


CHUNK = 1 << 20  # what validate_file reads at most at once from a line too long to hold


@pytest.mark.parametrize(
    ("tail", "size"),
    [
        pytest.param(b"\n", 5000, id="lf"),
        pytest.param(b"\r\n", 5000, id="crlf"),
        pytest.param(b"", 5000, id="no-newline-at-eof"),
        pytest.param(b"\n", 3 * CHUNK + 7, id="longer-than-a-read-chunk"),
    ],
)
def test_validate_file_reads_past_long_lines_in_bounded_chunks(tail: bytes, size: int) -> None:
    long_line = b'{"prompt": "' + b"x" * (size - 33) + b'", "completion": "y"}'
    assert len(long_line) == size
    data = file_bytes(lines_of(prompt_completion_example, n=3)) + long_line + tail
    data += file_bytes(lines_of(prompt_completion_example, n=7))
    if not tail:
        data = file_bytes(lines_of(prompt_completion_example, n=10)) + long_line
    reads: list[int] = []

    class Spy(io.BytesIO):
        def readline(self, size: int | None = -1, /) -> bytes:
            line = super().readline(size)
            reads.append(len(line))
            return line

    with pytest.raises(TrainingDataError) as info:
        validate_file(Spy(data), max_line_bytes=100)
    line = 11 if not tail else 4
    assert [str(i) for i in info.value.issues] == [f"line {line}: line is {size} bytes; at most 100"]
    assert max(reads) <= CHUNK
    # The same file, read by lines, gives the same answer.
    with pytest.raises(TrainingDataError) as same:
        validate_jsonl(iter_lines(io.BytesIO(data)), max_line_bytes=100)
    assert same.value.issues == info.value.issues


def test_validate_file_line_of_exactly_max_bytes_is_fine() -> None:
    lines = lines_of(prompt_completion_example)
    longest = max(len(line.encode()) for line in lines)
    data = "\r\n".join(lines).encode() + b"\r\n"
    assert validate_file(io.BytesIO(data), max_line_bytes=longest).examples == 10
    with pytest.raises(TrainingDataError, match=f"bytes; at most {longest - 1}"):
        validate_file(io.BytesIO(data), max_line_bytes=longest - 1)


# --- report: counts, tokens, cost --------------------------------------------------------------------------


def test_token_estimate_is_the_documented_heuristic() -> None:
    line = chat(user("abcd"), assistant("abcdefgh"))
    per_example = TOKENS_PER_EXAMPLE + 2 * TOKENS_PER_MESSAGE + 1 + 2
    report = validate_jsonl([dumps(line)] * 10)
    assert report == TrainingFileReport(
        method="supervised",
        examples=10,
        tokens=10 * per_example,
        max_example_tokens=per_example,
        format="chat",
    )
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("abcde") == 2


def test_token_estimate_counts_tool_calls_images_names_and_tools() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "abcd", "arguments": "abcdefgh"}}
    image = {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
    line = chat(user([{"type": "text", "text": "abcd"}, image]), assistant(None, tool_calls=[call]))
    expected = TOKENS_PER_EXAMPLE + 2 * TOKENS_PER_MESSAGE + 1 + TOKENS_PER_IMAGE + 1 + 2
    assert validate_jsonl([dumps(line)], min_examples=1).tokens == expected
    tool_definition = json.dumps(TOOL["function"], separators=(",", ":"), sort_keys=True)
    with_tools = validate_jsonl([dumps({**line, "tools": [TOOL]})], min_examples=1)
    assert with_tools.tokens == expected + estimate_text_tokens(tool_definition)


def test_token_estimate_for_other_formats() -> None:
    pc = validate_jsonl([dumps({"prompt": "abcd", "completion": "abcde"})] * 10)
    assert pc.max_example_tokens == TOKENS_PER_EXAMPLE + 1 + 2
    dpo = validate_jsonl(lines_of(dpo_example), method="dpo")
    # input message, preferred and non-preferred: three messages per example.
    assert dpo.max_example_tokens > TOKENS_PER_EXAMPLE + 3 * TOKENS_PER_MESSAGE
    assert dpo.tokens <= 10 * dpo.max_example_tokens


def test_report_is_deterministic_and_plausible() -> None:
    lines = [dumps(chat(user("word " * i), assistant("reply " * (10 - i)))) for i in range(10)]
    first = validate_jsonl(lines)
    assert first == validate_jsonl(list(reversed(lines))) == validate_file(io.BytesIO(file_bytes(lines)))
    text_chars = sum(len("word " * i) + len("reply " * (10 - i)) for i in range(10))
    assert text_chars / 4 <= first.tokens <= text_chars / 4 + 10 * (TOKENS_PER_EXAMPLE + 2 * TOKENS_PER_MESSAGE + 2)
    assert first.max_example_tokens == max(
        TOKENS_PER_EXAMPLE
        + 2 * TOKENS_PER_MESSAGE
        + estimate_text_tokens("word " * i)
        + estimate_text_tokens("reply " * (10 - i))
        for i in range(10)
    )


def test_cost_estimate_arithmetic() -> None:
    report = TrainingFileReport(
        method="supervised", examples=10, tokens=250_000, max_example_tokens=30_000, format="chat"
    )
    assert report.estimated_training_tokens(1) == 250_000
    assert report.estimated_training_tokens(3) == 750_000
    assert report.estimate_cost(3, 25.0) == pytest.approx(18.75)
    assert report.estimate_cost(2, 0) == 0.0


@pytest.mark.parametrize(
    ("n_epochs", "price", "field"),
    [
        pytest.param(0, 1.0, "n_epochs", id="zero-epochs"),
        pytest.param(1.5, 1.0, "n_epochs", id="fractional-epochs"),
        pytest.param(True, 1.0, "n_epochs", id="boolean-epochs"),
        pytest.param(1, -1.0, "usd_per_million_tokens", id="negative-price"),
        pytest.param(1, float("nan"), "usd_per_million_tokens", id="nan-price"),
    ],
)
def test_cost_estimate_refuses_bad_arguments(n_epochs: Any, price: Any, field: str) -> None:
    report = TrainingFileReport(method="dpo", examples=10, tokens=10, max_example_tokens=1, format="preference")
    with pytest.raises(InvalidRequestError) as info:
        report.estimate_cost(n_epochs, price)
    assert info.value.field == field


# --- properties: nothing but a report or a TrainingDataError ------------------------------------------------


def _report_or_training_data_error(lines: list[Any], method: Any) -> None:
    error: TrainingDataError | None = None
    try:
        report = validate_jsonl(lines, method=method, min_examples=0)
    except TrainingDataError as err:
        error = err
    if error is not None:
        assert error.issues or error.omitted
        assert str(error).startswith("training file is not valid ")
    else:
        assert report.examples <= len(lines)
        assert 0 <= report.max_example_tokens <= report.tokens


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=60), max_size=12), st.sampled_from(METHODS))
def test_any_bytes_give_a_report_or_a_training_data_error(lines: list[bytes], method: Any) -> None:
    _report_or_training_data_error(lines, method)
    with contextlib.suppress(TrainingDataError):
        validate_file(io.BytesIO(b"\n".join(lines)), method=method, min_examples=0, max_line_bytes=40)


KEYS = [
    "messages", "role", "content", "tools", "tool_calls", "function_call", "functions", "function", "name",
    "arguments", "type", "text", "image_url", "url", "detail", "weight", "tool_call_id", "refusal",
    "parallel_tool_calls", "prompt", "completion", "input", "preferred_output", "non_preferred_output",
    "id", "parameters", "strict", "description",
]  # fmt: skip
VALUES = [
    "system", "developer", "user", "assistant", "tool", "function", "text", "image_url", "refusal",
    "input_audio", "https://x.test/a.png", "low",
]  # fmt: skip

json_primitives = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-2, max_value=3)
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10)
    | st.sampled_from(VALUES)
)
json_values = st.recursive(
    json_primitives,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values, max_size=8), st.sampled_from(METHODS))
def test_any_json_values_give_a_report_or_a_training_data_error(values: list[Any], method: Any) -> None:
    _report_or_training_data_error([json.dumps(value) for value in values], method)


message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])},
    optional={key: json_values for key in ["content", "tool_calls", "weight", "name", "tool_call_id"]},
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.fixed_dictionaries(
            {"messages": st.lists(message, max_size=4)},
            optional={
                "tools": json_values,
                "input": st.fixed_dictionaries({"messages": st.lists(message, max_size=3)}),
                "preferred_output": st.lists(message, max_size=2),
                "non_preferred_output": st.lists(message, max_size=2),
            },
        ),
        max_size=5,
    ),
    st.sampled_from(METHODS),
)  # fmt: skip
def test_near_valid_lines_give_a_report_or_a_training_data_error(values: list[Any], method: Any) -> None:
    _report_or_training_data_error([json.dumps(value) for value in values], method)
