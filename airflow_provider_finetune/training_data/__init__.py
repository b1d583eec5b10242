"""Validation of fine-tuning training and validation files (JSONL), per fine-tuning method.

Two callers share these rules: an upload operator checks a file on the client side, before anything
billable is sent, and the local emulator's simulated trainer refuses a bad file the way the real service
does. Both need the same answer: every problem, named by its line and field, in one error.

What is checked, for each method (the line schemas of ``finetune_input_formats.yaml``):

* every line: UTF-8 text (a byte-order mark on line 1 is tolerated), not blank (one final newline is
  fine), at most ``max_line_bytes`` long, one JSON object;
* ``supervised``: chat examples ``{"messages", "tools", "parallel_tool_calls", "functions"}`` with at least
  one assistant message to learn from, or legacy ``{"prompt", "completion"}`` examples; one format per
  file;
* ``dpo``: ``{"input": {"messages", "tools", "parallel_tool_calls"}, "preferred_output": [assistant],
  "non_preferred_output": [assistant]}``, the input not ending with an assistant message;
* ``reinforcement``: ``{"messages", "tools", ...}``, any other key being data for the grader, the last
  message not an assistant message (the model writes it);
* the file holds at least ``min_examples`` examples.

Token counts are an estimate, made without a tokenizer so that the module has no dependency and gives the
same answer everywhere: see :func:`estimate_text_tokens` and the ``TOKENS_PER_*`` constants.

Pure Python: no Airflow import of its own, no network, no I/O except reading the file given to
:func:`validate_file`, line by line.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final, Literal, get_args

from airflow_provider_finetune.exceptions import InvalidRequestError

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_RULES",
    "FORMATS",
    "METHODS",
    "ROLES",
    "TOKENS_PER_EXAMPLE",
    "TOKENS_PER_IMAGE",
    "TOKENS_PER_MESSAGE",
    "Method",
    "Rules",
    "TrainingDataError",
    "TrainingFileReport",
    "TrainingIssue",
    "estimate_text_tokens",
    "iter_lines",
    "register_rules",
    "validate_file",
    "validate_jsonl",
]

#: A fine-tuning method, as named in a job's ``method.type``.
Method = Literal["supervised", "dpo", "reinforcement"]

#: Every method :func:`validate_jsonl` knows.
METHODS: Final[tuple[str, ...]] = get_args(Method)

#: Whose JSONL formats a file is checked by: a name of :func:`register_rules` (the common formats by default).
Rules = str
#: The common formats (chat, preference, reinforcement), which most services take.
DEFAULT_RULES = "common"

#: The formats a file can have, as :attr:`TrainingFileReport.format` names them (``text``: Together's generic).
FORMATS: Final[tuple[str, ...]] = ("chat", "prompt_completion", "preference", "reinforcement", "text")

#: Roles a message may have, in the order error messages list them.
ROLES: Final[tuple[str, ...]] = ("system", "developer", "user", "assistant", "tool", "function")

#: Characters of text per estimated token (English prose averages about four).
CHARS_PER_TOKEN: Final = 4
#: Estimated tokens added by each message (role and separators), like OpenAI's cookbook counts them.
TOKENS_PER_MESSAGE: Final = 4
#: Estimated tokens added by each example (the priming of the reply).
TOKENS_PER_EXAMPLE: Final = 2
#: Estimated tokens of an image: the fixed cost of a low-detail image.
TOKENS_PER_IMAGE: Final = 85

#: How many issues the message of a :class:`TrainingDataError` lists; the others are counted.
_ISSUES_IN_MESSAGE: Final = 5
_MAX_REPR: Final = 40
_BOM: Final = b"\xef\xbb\xbf"
_FORMAT_LABELS: Final = {
    "chat": "chat",
    "prompt_completion": "prompt-completion",
    "preference": "preference",
    "reinforcement": "reinforcement",
    "text": "generic text",
}
_CHAT_KEYS: Final = ("messages", "tools", "parallel_tool_calls", "functions")
_PROMPT_COMPLETION_KEYS: Final = ("prompt", "completion")
_PREFERENCE_KEYS: Final = ("input", "preferred_output", "non_preferred_output")
_PREFERENCE_INPUT_KEYS: Final = ("messages", "tools", "parallel_tool_calls")
_MESSAGE_KEYS: Final[dict[str, frozenset[str]]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "refusal", "tool_calls", "function_call", "weight"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
# Which content parts each role takes. Images only in user messages: the service does not train on
# images the model would have to produce, nor on images in instructions.
_PART_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
}
_UNSUPPORTED_PART_TYPES: Final = frozenset({"input_audio", "audio", "file", "input_file"})
_IMAGE_DETAILS: Final = ("auto", "low", "high")
_FUNCTION_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_FUNCTIONS: Final = 128


class _Missing:
    """Marks a key that is absent, as opposed to present with the value ``null``."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


# ---------------------------------------------------------------------------------------------------------
# Public results and errors
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingIssue:
    """One problem of a training file.

    :param line: the line, numbered from 1; ``None`` for a problem of the whole file.
    :param message: what is wrong, for a person.
    :param field: dotted path of the offending field in the line's JSON object (``messages[1].role``), if
        the problem is about one field.
    """

    line: int | None
    message: str
    field: str | None = None

    def __str__(self) -> str:
        text = f"{self.field}: {self.message}" if self.field else self.message
        return text if self.line is None else f"line {self.line}: {text}"


class TrainingDataError(InvalidRequestError):
    """A training or validation file is not valid for its fine-tuning method.

    The message names the file and lists the first few issues, the earliest line first; :attr:`issues`
    holds every issue collected, :attr:`omitted` counts those found after collection stopped.

    :param issues: the problems found, in the order of the file (problems of the whole file last).
    :param name: what the file is called in the message (its file name, or ``"training file"``).
    :param method: the method the file was checked for.
    :param path: the file's path, when it was read from one.
    :param field: the request field the file is given in: ``training_file`` or ``validation_file``.
    :param omitted: how many more problems were found and not collected.
    """

    def __init__(
        self,
        issues: Sequence[TrainingIssue],
        *,
        name: str = "training file",
        method: str = "supervised",
        path: str | None = None,
        field: str | None = "training_file",
        omitted: int = 0,
    ) -> None:
        self.issues: list[TrainingIssue] = list(issues)
        self.name = name
        self.method = method
        self.path = path
        self.omitted = omitted
        super().__init__(self._describe(), field=field)

    @property
    def problem_count(self) -> int:
        """How many problems were found in all, collected or not."""
        return len(self.issues) + self.omitted

    def _describe(self) -> str:
        shown = "; ".join(str(issue) for issue in self.issues[:_ISSUES_IN_MESSAGE])
        text = f"{self.name} is not valid {self.method} training data: {shown or 'unknown problem'}"
        more = self.problem_count - min(len(self.issues), _ISSUES_IN_MESSAGE)
        if more > 0:
            text += f" (and {more} more problem{'s' if more > 1 else ''})"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the keyword-only attributes when the error crosses a process boundary.
        return (
            _rebuild_training_data_error,
            (self.issues, self.name, self.method, self.path, self.field, self.omitted),
        )


def _rebuild_training_data_error(
    issues: list[TrainingIssue], name: str, method: str, path: str | None, field: str | None, omitted: int
) -> TrainingDataError:
    return TrainingDataError(issues, name=name, method=method, path=path, field=field, omitted=omitted)


@dataclass(frozen=True)
class TrainingFileReport:
    """What a valid training file holds, with an estimate of the tokens it costs.

    :param method: the method the file was checked for.
    :param examples: number of examples (non-blank lines).
    :param tokens: estimated tokens of one pass over the file (one epoch).
    :param max_example_tokens: estimated tokens of the longest example; compare it with the model's
        context length.
    :param format: ``"chat"``, ``"prompt_completion"``, ``"preference"`` or ``"reinforcement"``.
    """

    method: Method
    examples: int
    tokens: int
    max_example_tokens: int
    format: str

    def estimated_training_tokens(self, n_epochs: int) -> int:
        """Estimated tokens trained on (and billed, for token-billed methods) over ``n_epochs`` epochs.

        :param n_epochs: number of epochs, at least 1.
        :raises InvalidRequestError: if ``n_epochs`` is not a positive integer.
        """
        if isinstance(n_epochs, bool) or not isinstance(n_epochs, int) or n_epochs < 1:
            raise InvalidRequestError(f"n_epochs must be a positive integer, not {_short(n_epochs)}", field="n_epochs")
        return self.tokens * n_epochs

    def estimate_cost(self, n_epochs: int, usd_per_million_tokens: float) -> float:
        """Estimated training cost in US dollars, for a price per million trained tokens.

        :param n_epochs: number of epochs, at least 1.
        :param usd_per_million_tokens: the model's training price, in dollars per million tokens.
        :raises InvalidRequestError: if ``n_epochs`` or the price is out of range.
        """
        price = usd_per_million_tokens
        if isinstance(price, bool) or not isinstance(price, int | float) or not price >= 0:
            raise InvalidRequestError(
                f"usd_per_million_tokens must be a number >= 0, not {_short(price)}",
                field="usd_per_million_tokens",
            )
        return self.estimated_training_tokens(n_epochs) * float(price) / 1_000_000


def estimate_text_tokens(text: str) -> int:
    """Estimated tokens of a text: one per :data:`CHARS_PER_TOKEN` characters, rounded up.

    A heuristic, not a tokenizer: close for English prose, low for code and for scripts without spaces.
    """
    return -(-len(text) // CHARS_PER_TOKEN)


# ---------------------------------------------------------------------------------------------------------
# Reading lines
# ---------------------------------------------------------------------------------------------------------


def iter_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Yield the lines of a binary stream, each with its line break, reading one line at a time.

    A line is held in memory whole; :func:`validate_file` reads with a bound instead.
    """
    while True:
        line = stream.readline()
        if not line:
            return
        yield line


@dataclass(frozen=True)
class _LongLine:
    """A line too long to hold, read past: only its size (without the line break) is kept."""

    size: int


def _iter_bounded_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[bytes | _LongLine]:
    # Memory stays bounded whatever the file: no read is longer than max_line_bytes (plus a few bytes) or
    # 1 MiB; a line longer than max_line_bytes is read past in chunks and reported by its size.
    limit = max(max_line_bytes, 0) + 3  # room for "\r\n" and one byte more, to tell "too long"
    while True:
        line = stream.readline(limit)
        if not line:
            return
        if not isinstance(line, bytes):
            raise TypeError("validate_file needs a binary stream: open the file in 'rb' mode")
        if len(line) < limit or line.endswith(b"\n"):
            yield line
            continue
        size = len(line)
        tail = line[-2:]
        while not tail.endswith(b"\n"):
            chunk = stream.readline(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            tail = (tail + chunk)[-2:]
        if tail.endswith(b"\n"):
            size -= 2 if tail == b"\r\n" else 1
        yield _LongLine(size)


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def validate_jsonl(
    lines: Iterable[bytes | str],
    *,
    method: Method = "supervised",
    min_examples: int = 10,
    max_line_bytes: int = 4 * 1024 * 1024,
    name: str = "training file",
    field: str = "training_file",
    max_issues: int = 100,
    rules: Rules = DEFAULT_RULES,
) -> TrainingFileReport:
    """Check the lines of a JSONL training file for a fine-tuning method.

    Each item of ``lines`` is one line, with or without its line break: the lines of a file, of
    ``data.splitlines()`` or of ``data.split(newline)`` all work (the empty last item that a final newline
    leaves is not a blank line).

    :param lines: the file's lines, as bytes (checked to be UTF-8) or text.
    :param method: the fine-tuning method the file is for.
    :param min_examples: fewest examples the file must hold (the service requires 10).
    :param max_line_bytes: longest line accepted, in bytes, without its line break.
    :param name: what to call the file in the error message.
    :param field: the request field the file is given in, for the error (``validation_file``...).
    :param max_issues: stop collecting issues after this many; later ones are only counted.
    :param rules: whose formats the file must follow: ``common`` (the default), or ``together`` (conversational
        ``messages``, instruction ``prompt``/``completion``, generic ``text``; preference data for ``dpo``).
    :return: the counts and token estimate of the file.
    :raises TrainingDataError: if the file has any problem, listing them all.
    :raises InvalidRequestError: if ``method`` is not a known method.
    """
    return _validate(
        lines,
        method=method,
        min_examples=min_examples,
        max_line_bytes=max_line_bytes,
        name=name,
        field=field,
        max_issues=max_issues,
        path=None,
        rules=rules,
    )


def validate_file(
    source: str | os.PathLike[str] | IO[bytes],
    *,
    method: Method = "supervised",
    min_examples: int = 10,
    max_line_bytes: int = 4 * 1024 * 1024,
    name: str | None = None,
    field: str = "training_file",
    max_issues: int = 100,
    rules: Rules = DEFAULT_RULES,
) -> TrainingFileReport:
    """Check a JSONL training file, read line by line: memory does not grow with the file's size.

    The options are :func:`validate_jsonl`'s, but for these:

    :param source: a path, or a binary stream open for reading (read from where it is; not closed here).
    :param max_line_bytes: longest line accepted, in bytes, without its line break; no read is longer
        than this (or 1 MiB, for a line too long).
    :param name: what to call the file in the error message; by default its file name, else
        ``"training file"``.
    :raises InvalidRequestError: also if the file cannot be read.
    """
    options: dict[str, Any] = {
        "method": method,
        "min_examples": min_examples,
        "max_line_bytes": max_line_bytes,
        "field": field,
        "max_issues": max_issues,
        "rules": rules,
    }
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        try:
            with open(path, "rb") as stream:
                return _validate(
                    _iter_bounded_lines(stream, max_line_bytes),
                    name=name or os.path.basename(path) or path,
                    path=path,
                    **options,
                )
        except OSError as err:  # missing, unreadable, a directory: only reading raises OSError here
            raise InvalidRequestError(f"cannot read {path}: {err.strerror or err}", field=field) from err
    stream_name = getattr(source, "name", None)
    stream_path = stream_name if isinstance(stream_name, str) else None
    if name is None:
        name = (os.path.basename(stream_path) or stream_path) if stream_path else "training file"
    return _validate(_iter_bounded_lines(source, max_line_bytes), name=name, path=stream_path, **options)


class _Issues:
    """The issues found so far: the first ``limit`` are kept, the rest counted."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 0)
        self.kept: list[TrainingIssue] = []
        self.omitted = 0

    def add(self, issue: TrainingIssue) -> None:
        if len(self.kept) < self.limit:
            self.kept.append(issue)
        else:
            self.omitted += 1


@dataclass
class _Example:
    """One line being checked: its issues go to the file's list, its tokens are added up here."""

    line: int
    issues: _Issues
    tokens: int = TOKENS_PER_EXAMPLE
    ok: bool = True
    format: str | None = None
    _seen: set[tuple[str | None, str]] = field(default_factory=set)

    def issue(self, where: str | None, message: str) -> None:
        self.ok = False
        if (where, message) not in self._seen:
            self._seen.add((where, message))
            self.issues.add(TrainingIssue(self.line, message, where))

    def text(self, value: str) -> None:
        self.tokens += estimate_text_tokens(value)


def _validate(
    lines: Iterable[bytes | str | _LongLine],
    *,
    method: str,
    min_examples: int,
    max_line_bytes: int,
    name: str,
    field: str,
    max_issues: int,
    path: str | None,
    rules: str,
) -> TrainingFileReport:
    if isinstance(lines, bytes | bytearray | str):
        raise TypeError("lines must be an iterable of lines (e.g. data.splitlines()), not one whole text")
    if method not in METHODS:
        raise InvalidRequestError(f"method must be one of {', '.join(METHODS)}, not {_short(method)}", field="method")
    if rules not in _RULES:
        raise InvalidRequestError(f"rules must be one of {', '.join(_RULES)}, not {_short(rules)}", field="rules")
    label, checkers = _RULES[rules]
    if method not in checkers:
        raise InvalidRequestError(f"method: {label} has no {method} fine-tuning", field="method")
    issues = _Issues(max_issues)
    examples = 0
    total_tokens = 0
    max_tokens = 0
    file_format: tuple[str, int] | None = None  # (format, line it was seen first)
    mixed_reported = False
    pending_blank: int | None = None
    lineno = 0
    for raw in lines:
        lineno += 1
        if pending_blank is not None:
            issues.add(TrainingIssue(pending_blank, "empty line"))
            pending_blank = None
        if isinstance(raw, bytes | bytearray | memoryview) and not isinstance(raw, bytes):
            raw = bytes(raw)
        if raw == b"" or raw == "":
            # Only a blank line if something follows: the last one is what a final newline leaves.
            pending_blank = lineno
            continue
        example = _check_line(lineno, raw, checkers[method], max_line_bytes, issues)
        if example is None:
            continue
        examples += 1
        if example.format is not None:
            if file_format is None:
                file_format = (example.format, lineno)
            elif example.format != file_format[0] and not mixed_reported:
                mixed_reported = True
                example.issue(
                    None,
                    f"{_FORMAT_LABELS[example.format]} example in a file whose first example "
                    f"(line {file_format[1]}) is {_FORMAT_LABELS[file_format[0]]}; use one format per file",
                )
        if example.ok:
            total_tokens += example.tokens
            max_tokens = max(max_tokens, example.tokens)
    if examples < min_examples:
        # A problem of the whole file: always reported, even once collection has stopped.
        issues.kept.append(
            TrainingIssue(
                None,
                f"the file has {examples} example{'' if examples == 1 else 's'}; at least {min_examples} are required",
            )
        )
    if issues.kept or issues.omitted:
        raise TrainingDataError(issues.kept, name=name, method=method, path=path, field=field, omitted=issues.omitted)
    default_format = {"supervised": "chat", "dpo": "preference", "reinforcement": "reinforcement"}[method]
    return TrainingFileReport(
        method=method,  # type: ignore[arg-type]  # checked against METHODS above
        examples=examples,
        tokens=total_tokens,
        max_example_tokens=max_tokens,
        format=file_format[0] if file_format else default_format,
    )


def _check_line(
    lineno: int,
    raw: bytes | str | _LongLine,
    check: Callable[[_Example, dict[str, Any]], None],
    max_line_bytes: int,
    issues: _Issues,
) -> _Example | None:
    """Check one non-empty line; return ``None`` for a blank line (reported here), else the example."""
    example = _Example(lineno, issues)
    if isinstance(raw, _LongLine):
        example.issue(None, f"line is {raw.size} bytes; at most {max_line_bytes}")
        return example
    offset = 0
    if isinstance(raw, bytes):
        body = _strip_newline(raw)
        if lineno == 1 and body.startswith(_BOM):
            body = body[len(_BOM) :]
            offset = len(_BOM)
        size = len(body)
        if size > max_line_bytes:
            example.issue(None, f"line is {size} bytes; at most {max_line_bytes}")
            return example
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            example.issue(None, f"not UTF-8 text (byte 0x{body[err.start]:02x} at column {err.start + offset + 1})")
            return example
    elif isinstance(raw, str):
        text = _strip_newline(raw)
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as err:
            example.issue(None, f"not UTF-8 text (lone surrogate at column {err.start + 1})")
            return example
        if size > max_line_bytes:
            example.issue(None, f"line is {size} bytes; at most {max_line_bytes}")
            return example
    else:
        raise TypeError(f"lines must be bytes or str, not {type(raw).__name__}")
    if not text.strip():
        issues.add(TrainingIssue(lineno, "empty line"))
        return None
    if "\n" in text:
        example.issue(None, "line holds a line break; each example must be on one line")
        return example
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        example.issue(None, f"not valid JSON ({err.msg}: column {err.colno})")
        return example
    except RecursionError:
        example.issue(None, "not valid JSON (nested too deeply)")
        return example
    except ValueError as err:  # NaN and Infinity; integers with too many digits
        example.issue(None, f"not valid JSON ({err})")
        return example
    if not isinstance(value, dict):
        example.issue(None, f"must be a JSON object, not {_kind(value)}")
        return example
    try:
        check(example, value)
    except RecursionError:
        # Tool definitions are measured by serialising them; a pathological nesting stops that.
        example.issue(None, "nested too deeply")
    return example


def _strip_newline(line: Any) -> Any:
    if line[-1:] in (b"\n", "\n"):
        line = line[:-1]
    if line[-1:] in (b"\r", "\r"):
        line = line[:-1]
    return line


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


# --- per method ------------------------------------------------------------------------------------------


def _check_supervised(ex: _Example, obj: dict[str, Any]) -> None:
    if any(key in obj for key in _CHAT_KEYS):
        ex.format = "chat"
        _check_chat(ex, obj)
    elif any(key in obj for key in _PROMPT_COMPLETION_KEYS):
        ex.format = "prompt_completion"
        _check_prompt_completion(ex, obj)
    else:
        _no_supervised_format(
            ex,
            obj,
            expected_keys="messages",
            formats="neither a chat example (with messages) nor a prompt-completion example (with prompt and "
            "completion)",
        )


def _no_supervised_format(ex: _Example, obj: dict[str, Any], *, expected_keys: str, formats: str) -> None:
    """Note an example of no supervised format: a preference example is told apart, any other shows its keys.

    :param expected_keys: the keys a supervised example has, as the message lists them.
    :param formats: the supervised formats there are, as the message lists them.
    """
    if any(key in obj for key in _PREFERENCE_KEYS):
        ex.issue(None, f"looks like a preference (dpo) example; supervised examples have {expected_keys}")
    else:
        ex.issue(None, f"{formats}; keys: {_keys(obj)}")


def _check_chat(ex: _Example, obj: dict[str, Any]) -> None:
    for key in obj:
        if key not in _CHAT_KEYS:
            ex.issue(key, f"unknown key; a chat example has {', '.join(_CHAT_KEYS)}")
    messages = _check_messages(ex, obj.get("messages", _MISSING), "messages")
    _check_tool_options(ex, obj, "")
    if "functions" in obj:
        _check_functions(ex, obj["functions"], "functions")
    if messages is None:
        return
    assistants = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not assistants:
        ex.issue("messages", "no assistant message to learn from")
    elif ex.ok and not any(_learnable(m) for m in assistants):
        ex.issue(
            "messages",
            "no assistant message to learn from (every assistant message has weight 0 or no content)",
        )


def _learnable(message: dict[str, Any]) -> bool:
    if message.get("weight", 1) == 0:
        return False
    content = message.get("content")
    return bool(content) or bool(message.get("tool_calls")) or bool(message.get("function_call"))


def _check_prompt_completion(ex: _Example, obj: dict[str, Any]) -> None:
    for key in obj:
        if key not in _PROMPT_COMPLETION_KEYS:
            ex.issue(key, "unknown key; a prompt-completion example has prompt and completion")
    _check_text(ex, obj, "prompt", "prompt")
    completion = _required(ex, obj.get("completion", _MISSING), "completion", str, "a string")
    if completion is None:
        return
    if completion.strip():
        ex.text(completion)
    else:
        ex.issue("completion", "must not be empty")


def _check_dpo(ex: _Example, obj: dict[str, Any]) -> None:
    ex.format = "preference"
    if not any(key in obj for key in _PREFERENCE_KEYS):
        # One issue, not one per missing key: this line is some other kind of example.
        looks = "looks like a chat example" if "messages" in obj else f"not a preference example (keys: {_keys(obj)})"
        ex.issue(None, f"{looks}; a preference example has input, preferred_output and non_preferred_output")
        return
    for key in obj:
        if key not in _PREFERENCE_KEYS:
            ex.issue(key, f"unknown key; a preference example has {', '.join(_PREFERENCE_KEYS)}")
    given = _required(ex, obj.get("input", _MISSING), "input", dict, "an object")
    if given is not None:
        for key in given:
            if key not in _PREFERENCE_INPUT_KEYS:
                ex.issue(f"input.{key}", f"unknown key; input has {', '.join(_PREFERENCE_INPUT_KEYS)}")
        messages = _check_messages(ex, given.get("messages", _MISSING), "input.messages")
        _check_tool_options(ex, given, "input")
        last = messages[-1] if messages else None
        if isinstance(last, dict) and last.get("role") == "assistant":
            ex.issue(
                f"input.messages[{len(messages or ()) - 1}].role",
                "the input must not end with an assistant message; the answers go in preferred_output "
                "and non_preferred_output",
            )
    missing = [key for key in ("preferred_output", "non_preferred_output") if key not in obj]
    for key in missing:
        ex.issue(key, "a preference line needs both preferred_output and non_preferred_output")
    for key in ("preferred_output", "non_preferred_output"):
        if key in obj:
            _check_output(ex, obj[key], key)


def _check_output(ex: _Example, value: Any, where: str) -> None:
    if not _check_type(ex, value, where, list, "an array holding one assistant message"):
        return
    if len(value) != 1:
        ex.issue(where, f"must hold exactly one assistant message, not {len(value)}")
        if not value:
            return
    for index, message in enumerate(value):
        at = f"{where}[{index}]"
        role = _check_message(ex, message, at, output=True)
        if role is not None and role != "assistant":
            ex.issue(f"{at}.role", f"must be 'assistant', not {_short(role)}")
        elif role == "assistant" and not message.get("content"):
            ex.issue(f"{at}.content", "the output message needs content")


def _check_reinforcement(ex: _Example, obj: dict[str, Any]) -> None:
    ex.format = "reinforcement"
    # Every key but messages and tools is the grader's ``item`` data: free-form.
    messages = _check_messages(ex, obj.get("messages", _MISSING), "messages")
    if "tools" in obj:
        _check_tools(ex, obj["tools"], "tools")
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        ex.issue(
            f"messages[{len(messages or ()) - 1}].role",
            "the last message must not be an assistant message; the model writes the answer",
        )


#: Checks one example (a JSON object) of a method, noting what it finds on the example.
Checker = Callable[["_Example", dict[str, Any]], None]

#: Each set of rules by name: its label for messages, and its checker per method.
_RULES: dict[str, tuple[str, Mapping[str, Checker]]] = {}


def register_rules(name: str, label: str, checkers: Mapping[str, Checker]) -> None:
    """Add a service's own JSONL formats, checked when a file is validated with ``rules=name``.

    :param name: the name a backend's ``training_data_rules`` gives.
    :param label: the service, as messages name it.
    :param checkers: the checker of each method it fine-tunes with.
    """
    _RULES[name] = (label, dict(checkers))


register_rules(
    DEFAULT_RULES,
    "the common formats",
    {"supervised": _check_supervised, "dpo": _check_dpo, "reinforcement": _check_reinforcement},
)


# --- messages --------------------------------------------------------------------------------------------


def _check_messages(ex: _Example, value: Any, where: str) -> list[Any] | None:
    """Check a list of messages; return it when it is a non-empty list (whatever its items)."""
    messages = _required(ex, value, where, list, "an array of messages")
    if messages is None:
        return None
    if not messages:
        ex.issue(where, "must not be empty")
        return None
    for index, message in enumerate(messages):
        _check_message(ex, message, f"{where}[{index}]")
    return messages


def _check_message(ex: _Example, message: Any, where: str, *, output: bool = False) -> str | None:
    """Check one message; return its role when the role is valid."""
    if not _check_type(ex, message, where, dict, "a message object"):
        return None
    role = message.get("role", _MISSING)
    if role is _MISSING:
        ex.issue(f"{where}.role", "required")
        return None
    if not isinstance(role, str) or role not in ROLES:
        ex.issue(f"{where}.role", f"{_short(role)} is not one of {', '.join(ROLES)}")
        return None
    ex.tokens += TOKENS_PER_MESSAGE
    allowed = _MESSAGE_KEYS[role]
    for key in message:
        if key not in allowed or (output and key == "weight"):
            kind = "an output" if output else _article(role)
            ex.issue(f"{where}.{key}", f"not allowed in {kind} message")
    name = message.get("name", _MISSING)
    if name is not _MISSING:
        if isinstance(name, str) and name:
            ex.text(name)
        elif role == "function" or name is not None:
            ex.issue(f"{where}.name", f"must be a non-empty string, not {_short(name)}")
    elif role == "function":
        ex.issue(f"{where}.name", "required in a function message")
    if role == "tool":
        call_id = message.get("tool_call_id", _MISSING)
        if call_id is _MISSING:
            ex.issue(f"{where}.tool_call_id", "required in a tool message")
        elif not isinstance(call_id, str) or not call_id:
            ex.issue(f"{where}.tool_call_id", f"must be a non-empty string, not {_short(call_id)}")
    if role == "assistant":
        _check_assistant(ex, message, where)
        return role
    content = message.get("content", _MISSING)
    if content is _MISSING:
        ex.issue(f"{where}.content", f"required in {_article(role)} message")
    elif content is None:
        if role != "function":
            ex.issue(f"{where}.content", f"must not be null in {_article(role)} message")
    elif isinstance(content, str):
        ex.text(content)
    elif isinstance(content, list) and role != "function":
        _check_parts(ex, content, f"{where}.content", role)
    else:
        kinds = "a string" if role == "function" else "a string or an array of content parts"
        ex.issue(f"{where}.content", f"must be {kinds}, not {_kind(content)}")
    return role


def _check_assistant(ex: _Example, message: dict[str, Any], where: str) -> None:
    calls = message.get("tool_calls")
    if calls is not None:
        _check_tool_calls(ex, calls, f"{where}.tool_calls")
    function_call = message.get("function_call")
    if function_call is not None:
        _check_function_call(ex, function_call, f"{where}.function_call")
    refusal = message.get("refusal")
    if refusal is not None and _check_type(ex, refusal, f"{where}.refusal", str, "a string"):
        ex.text(refusal)
    weight = message.get("weight", _MISSING)
    if weight is not _MISSING and (type(weight) is not int or weight not in (0, 1)):
        ex.issue(f"{where}.weight", f"must be 0 or 1, not {_short(weight)}")
    content = message.get("content", _MISSING)
    if content is _MISSING or content is None:
        if calls is None and function_call is None:
            ex.issue(
                f"{where}.content",
                "required in an assistant message without tool_calls or function_call",
            )
    elif isinstance(content, str):
        ex.text(content)
    elif isinstance(content, list):
        _check_parts(ex, content, f"{where}.content", "assistant")
    else:
        ex.issue(f"{where}.content", f"must be a string or an array of content parts, not {_kind(content)}")


def _check_parts(ex: _Example, parts: list[Any], where: str, role: str) -> None:
    if not parts:
        ex.issue(where, "must not be an empty array")
        return
    allowed = _PART_TYPES[role]
    for at, part in _objects(ex, parts, where, "a content part object"):
        kind = part.get("type", _MISSING)
        if kind is _MISSING:
            ex.issue(f"{at}.type", "required")
        elif isinstance(kind, str) and kind in _UNSUPPORTED_PART_TYPES:
            ex.issue(f"{at}.type", f"{kind!r} content is not supported for fine-tuning: text and images only")
        elif not isinstance(kind, str) or kind not in allowed:
            ex.issue(
                f"{at}.type",
                f"{_short(kind)} is not allowed here; {_article(role)} message takes {' or '.join(allowed)} parts",
            )
        elif kind == "image_url":
            _check_image(ex, part.get("image_url", _MISSING), f"{at}.image_url")
        else:  # "text" or "refusal": the text is under the key named by the type
            _check_text(ex, part, kind, f"{at}.{kind}")


def _check_image(ex: _Example, image: Any, where: str) -> None:
    if _required(ex, image, where, dict, "an object with a url") is None:
        return
    url = image.get("url", _MISSING)
    if url is _MISSING:
        ex.issue(f"{where}.url", "required")
    elif not isinstance(url, str) or not url.startswith(("https://", "http://", "data:image/")):
        ex.issue(f"{where}.url", f"must be an http(s) URL or a data:image/ URL, not {_short(url)}")
    detail = image.get("detail", _MISSING)
    if detail is not _MISSING and detail not in _IMAGE_DETAILS:
        ex.issue(f"{where}.detail", f"{_short(detail)} is not one of {', '.join(_IMAGE_DETAILS)}")
    ex.tokens += TOKENS_PER_IMAGE


def _check_tool_calls(ex: _Example, calls: Any, where: str) -> None:
    if not _check_type(ex, calls, where, list, "an array of tool calls"):
        return
    if not calls:
        ex.issue(where, "must not be empty (leave it out instead)")
        return
    for at, call in _objects(ex, calls, where, "a tool call object"):
        _required(ex, call.get("id", _MISSING), f"{at}.id", str, "a string")
        _check_function_type(ex, call, at)
        _check_function_call(ex, call.get("function", _MISSING), f"{at}.function")


def _check_function_call(ex: _Example, call: Any, where: str) -> None:
    if _required(ex, call, where, dict, "an object with name and arguments") is None:
        return
    for key in ("name", "arguments"):
        _check_text(ex, call, key, f"{where}.{key}")


# --- tools -----------------------------------------------------------------------------------------------


def _check_tool_options(ex: _Example, obj: dict[str, Any], prefix: str) -> None:
    at = f"{prefix}." if prefix else ""
    if "tools" in obj:
        _check_tools(ex, obj["tools"], f"{at}tools")
    parallel = obj.get("parallel_tool_calls", _MISSING)
    if parallel is not _MISSING and not isinstance(parallel, bool):
        ex.issue(f"{at}parallel_tool_calls", f"must be true or false, not {_short(parallel)}")


def _check_tools(ex: _Example, tools: Any, where: str) -> None:
    if not _check_type(ex, tools, where, list, "an array of tools"):
        return
    for at, tool in _objects(ex, tools, where, "a tool object"):
        _check_function_type(ex, tool, at)
        function = tool.get("function", _MISSING)
        if function is _MISSING:
            ex.issue(f"{at}.function", "required")
        else:
            _check_function_definition(ex, function, f"{at}.function")


def _check_functions(ex: _Example, functions: Any, where: str) -> None:
    if not _check_type(ex, functions, where, list, "an array of functions"):
        return
    if not 1 <= len(functions) <= _MAX_FUNCTIONS:
        ex.issue(where, f"must hold 1 to {_MAX_FUNCTIONS} functions, not {len(functions)}")
    for index, function in enumerate(functions):
        _check_function_definition(ex, function, f"{where}[{index}]")


def _check_function_type(ex: _Example, item: dict[str, Any], at: str) -> None:
    """Check the ``type`` of a tool or a tool call: ``function``, the only type there is."""
    kind = item.get("type", _MISSING)
    if kind is _MISSING:
        ex.issue(f"{at}.type", "required")
    elif kind != "function":
        ex.issue(f"{at}.type", f"must be 'function', not {_short(kind)}")


def _check_function_definition(ex: _Example, function: Any, where: str) -> None:
    if not _check_type(ex, function, where, dict, "a function object"):
        return
    name = function.get("name", _MISSING)
    if name is _MISSING:
        ex.issue(f"{where}.name", "required")
    elif not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
        ex.issue(
            f"{where}.name",
            f"must be 1 to 64 letters, digits, underscores or dashes, not {_short(name)}",
        )
    if "description" in function:
        _check_type(ex, function["description"], f"{where}.description", str, "a string")
    if "parameters" in function:
        _check_type(ex, function["parameters"], f"{where}.parameters", dict, "a JSON schema object")
    strict = function.get("strict", _MISSING)
    if strict is not _MISSING and strict is not None and not isinstance(strict, bool):
        ex.issue(f"{where}.strict", f"must be true or false, not {_short(strict)}")
    # Tool definitions are part of the prompt: measured as their compact JSON.
    ex.text(json.dumps(function, ensure_ascii=False, separators=(",", ":"), sort_keys=True))


# --- values ----------------------------------------------------------------------------------------------


def _check_type(ex: _Example, value: Any, where: str, json_type: type, expected: str) -> bool:
    """Whether ``value`` is a ``json_type`` (``dict``, ``list`` or ``str``); if not, note that it must be ``expected``.

    :param where: the path of the value in the example (``messages[1].content``).
    :param expected: what the value must be, as the message says it (``"a tool object"``).
    """
    if isinstance(value, json_type):
        return True
    ex.issue(where, f"must be {expected}, not {_kind(value)}")
    return False


def _required(ex: _Example, value: Any, where: str, json_type: type, expected: str) -> Any:
    """``value`` when it is given and a ``json_type``; else ``None``, noting that it is required or not ``expected``.

    :param value: the value, or ``_MISSING`` for an absent key.
    """
    if value is _MISSING:
        ex.issue(where, "required")
        return None
    return value if _check_type(ex, value, where, json_type, expected) else None


def _check_text(ex: _Example, obj: dict[str, Any], key: str, where: str) -> None:
    """Check that ``obj[key]`` (at path ``where``) is given and is a string, and count its tokens."""
    text = _required(ex, obj.get(key, _MISSING), where, str, "a string")
    if text is not None:
        ex.text(text)


def _objects(ex: _Example, items: list[Any], where: str, expected: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield the path and value of each item of a list that is an object; note any other item as not ``expected``."""
    for index, item in enumerate(items):
        at = f"{where}[{index}]"
        if _check_type(ex, item, at, dict, expected):
            yield at, item


# --- wording ---------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    """The JSON type of a value, as error messages name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any) -> str:
    # Messages quote what was given, but never a whole document pasted into a field.
    if isinstance(value, dict | list):
        return _kind(value)
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return _kind(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _article(role: str) -> str:
    # "a user", "a developer", but "an assistant": the roles' sounds, not their first letters.
    return f"an {role}" if role == "assistant" else f"a {role}"


def _keys(obj: dict[str, Any]) -> str:
    if not obj:
        return "none"
    names = [_short(key) for key in list(obj)[:5]]
    return ", ".join(names) + (", ..." if len(obj) > 5 else "")
