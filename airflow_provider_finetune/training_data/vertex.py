"""Google Vertex AI's own JSONL formats for tuning Gemini models, registered as the rules ``vertex``.

As Google documents them ("Prepare supervised fine-tuning data for Gemini models", "Prepare preference tuning data
for Gemini models"), one example a line:

* **supervised**: ``{"systemInstruction": {"parts": [{"text": ...}]}, "contents": [{"role": "user", "parts":
  [...]}, {"role": "model", "parts": [...]}], "tools": [...]}``: ``contents`` is the conversation, each turn's
  ``role`` ``user`` or ``model`` and its ``parts`` a list of parts holding one of ``text``, ``fileData``
  (``mimeType`` and a ``gs://`` ``fileUri``), ``functionCall`` or ``functionResponse``; the conversation ends with
  the ``model`` turn learned from. ``systemInstruction`` (text parts; its ``role`` is ignored) and ``tools`` are
  optional.
* **dpo** (Vertex's preference tuning): ``{"systemInstruction": ..., "contents": [... ending with a user turn],
  "completions": [{"score": 1, "completion": {"role": "model", "parts": [...]}}, {"score": 0, "completion":
  ...}]}``: text only, and exactly two completions, the preferred one scored 1 and the other 0.

Field names are read as Vertex's proto JSON reads them: camelCase, or the original snake_case
(``system_instruction``, ``file_data``...). Every problem names its line and the field (``contents[1].parts[0].text``).
Pure Python, no I/O.
"""

from __future__ import annotations

from typing import Any, Final

from airflow_provider_finetune.training_data import (
    _MISSING,
    TOKENS_PER_MESSAGE,
    _Example,
    _keys,
    _kind,
    _objects,
    _short,
    register_rules,
)

__all__ = ["PART_FIELDS", "RULES", "VERTEX_ROLES"]

#: The name a backend's ``training_data_rules`` gives to be checked by these formats.
RULES = "vertex"

#: The roles of a conversation's turns.
VERTEX_ROLES: Final = ("user", "model")
#: The data a part may hold (exactly one of them), by its camelCase name.
PART_FIELDS: Final = ("text", "fileData", "functionCall", "functionResponse")

_SNAKE: Final = {
    "systemInstruction": "system_instruction",
    "fileData": "file_data",
    "functionCall": "function_call",
    "functionResponse": "function_response",
    "mimeType": "mime_type",
    "fileUri": "file_uri",
}
#: Estimated tokens of a file part: Gemini counts an image as 258 tokens; other media are estimated alike.
_TOKENS_PER_FILE: Final = 258
_SUPERVISED_KEYS: Final = ("systemInstruction", "contents", "tools")
_PREFERENCE_KEYS: Final = ("systemInstruction", "contents", "completions")


def _get(obj: dict[str, Any], name: str) -> tuple[str, Any]:
    """The key an object gives a field by (camelCase, or its snake_case spelling) and its value."""
    if name in obj:
        return name, obj[name]
    snake = _SNAKE.get(name)
    if snake is not None and snake in obj:
        return snake, obj[snake]
    return name, _MISSING


def _unknown_keys(ex: _Example, obj: dict[str, Any], allowed: tuple[str, ...], what: str, where: str = "") -> None:
    known = set(allowed) | {_SNAKE[key] for key in allowed if key in _SNAKE}
    for key in obj:
        if key not in known:
            ex.issue(f"{where}{key}", f"unknown key; {what} has {', '.join(allowed)}")


def _check_vertex_supervised(ex: _Example, obj: dict[str, Any]) -> None:
    ex.format = "chat"
    if "messages" in obj and "contents" not in obj:
        ex.issue(
            None,
            "looks like an OpenAI chat example (messages); a Vertex AI example has contents (turns of role user and "
            "model, each with parts) and an optional systemInstruction",
        )
        return
    if "completions" in obj:
        ex.issue(None, "looks like a preference (dpo) example (completions); supervised examples have contents")
        return
    _unknown_keys(ex, obj, _SUPERVISED_KEYS, "a supervised example")
    _check_system_instruction(ex, obj)
    contents = _check_contents(ex, obj, text_only=False)
    if "tools" in obj and not isinstance(obj["tools"], list):
        ex.issue("tools", f"must be a list of tools, not {_kind(obj['tools'])}")
    if contents is None:
        return
    if not any(turn.get("role") == "model" for turn in contents):
        ex.issue("contents", "has no model turn to learn from")
    elif contents[-1].get("role") != "model":
        ex.issue(f"contents[{len(contents) - 1}].role", "the conversation must end with the model's turn")


def _check_vertex_preference(ex: _Example, obj: dict[str, Any]) -> None:
    ex.format = "preference"
    if "completions" not in obj:
        looks = "looks like a supervised example" if "contents" in obj else f"not a preference example ({_keys(obj)})"
        ex.issue(None, f"{looks}; a preference example has contents and completions")
        return
    _unknown_keys(ex, obj, _PREFERENCE_KEYS, "a preference example")
    _check_system_instruction(ex, obj)
    contents = _check_contents(ex, obj, text_only=True)
    if contents is not None and contents[-1].get("role") != "user":
        ex.issue(f"contents[{len(contents) - 1}].role", "the conversation must end with the user's turn")
    completions = obj["completions"]
    if not isinstance(completions, list) or len(completions) != 2:
        given = f"{len(completions)} given" if isinstance(completions, list) else _kind(completions)
        ex.issue("completions", f"must be a list of exactly two completions ({given})")
        return
    scores = []
    for at, item in _objects(ex, completions, "completions", "an object with score and completion"):
        _unknown_keys(ex, item, ("score", "completion"), "a completion", f"{at}.")
        score = item.get("score", _MISSING)
        if isinstance(score, bool) or score not in (0, 1):
            ex.issue(f"{at}.score", f"must be 1 (preferred) or 0 (dispreferred), not {_short(score)}")
        else:
            scores.append(score)
        turn = item.get("completion", _MISSING)
        if not isinstance(turn, dict):
            ex.issue(f"{at}.completion", "required: the model's turn" if turn is _MISSING else "must be an object")
            continue
        _check_turn(ex, turn, f"{at}.completion", text_only=True, roles=("model",))
    if len(scores) == 2 and sorted(scores) != [0, 1]:
        ex.issue("completions", "needs one preferred completion (score 1) and one dispreferred (score 0)")


def _check_system_instruction(ex: _Example, obj: dict[str, Any]) -> None:
    key, system = _get(obj, "systemInstruction")
    if system is _MISSING:
        return
    if not isinstance(system, dict):
        ex.issue(key, f"must be an object with parts, not {_kind(system)}")
        return
    _unknown_keys(ex, system, ("role", "parts"), "systemInstruction", f"{key}.")
    parts = _check_parts(ex, system.get("parts", _MISSING), f"{key}.parts", text_only=True)
    if parts is not None:
        ex.tokens += TOKENS_PER_MESSAGE


def _check_contents(ex: _Example, obj: dict[str, Any], *, text_only: bool) -> list[dict[str, Any]] | None:
    """Check ``contents``; return its turns (the objects among them) when it is a non-empty list."""
    contents = obj.get("contents", _MISSING)
    if contents is _MISSING:
        ex.issue("contents", "required: the conversation, a list of turns")
        return None
    if not isinstance(contents, list) or not contents:
        ex.issue("contents", "must be a non-empty list of turns" if isinstance(contents, list) else "must be a list")
        return None
    turns = []
    for at, turn in _objects(ex, contents, "contents", "a turn (an object with role and parts)"):
        _check_turn(ex, turn, at, text_only=text_only)
        turns.append(turn)
    return turns or None


def _check_turn(
    ex: _Example, turn: dict[str, Any], at: str, *, text_only: bool, roles: tuple[str, ...] = VERTEX_ROLES
) -> None:
    _unknown_keys(ex, turn, ("role", "parts"), "a turn", f"{at}.")
    role = turn.get("role", _MISSING)
    if role not in roles:
        ex.issue(f"{at}.role", f"must be {' or '.join(roles)}, not {_short(role)}")
    _check_parts(ex, turn.get("parts", _MISSING), f"{at}.parts", text_only=text_only)
    ex.tokens += TOKENS_PER_MESSAGE


def _check_parts(ex: _Example, parts: Any, where: str, *, text_only: bool) -> list[Any] | None:
    if parts is _MISSING:
        ex.issue(where, "required: a non-empty list of parts")
        return None
    if not isinstance(parts, list) or not parts:
        ex.issue(where, "must be a non-empty list of parts")
        return None
    allowed = ("text",) if text_only else PART_FIELDS
    for at, part in _objects(ex, parts, where, "a part (an object)"):
        given = [(name, *_get(part, name)) for name in PART_FIELDS]
        held = [(name, key, value) for name, key, value in given if value is not _MISSING]
        others = [key for key in part if key not in {key for _, key, _ in given}]
        if others:
            ex.issue(f"{at}.{others[0]}", f"unknown key; a part holds one of {', '.join(allowed)}")
            continue
        if len(held) != 1:
            ex.issue(at, f"must hold exactly one of {', '.join(allowed)} ({len(held)} given)")
            continue
        ((name, key, value),) = held
        if name not in allowed:
            ex.issue(f"{at}.{key}", "not taken here: preference tuning takes text only")
        elif name == "text":
            if not isinstance(value, str):
                ex.issue(f"{at}.{key}", f"must be a string, not {_kind(value)}")
            elif not value.strip():
                ex.issue(f"{at}.{key}", "must not be empty")
            else:
                ex.text(value)
        elif name == "fileData":
            _check_file_data(ex, value, f"{at}.{key}")
        elif not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
            ex.issue(f"{at}.{key}", "must be an object with the function's name")
    return parts


def _check_file_data(ex: _Example, value: Any, where: str) -> None:
    if not isinstance(value, dict):
        ex.issue(where, f"must be an object with mimeType and fileUri, not {_kind(value)}")
        return
    mime_key, mime = _get(value, "mimeType")
    if not isinstance(mime, str) or "/" not in mime:
        ex.issue(f"{where}.{mime_key}", f"must be a MIME type such as image/jpeg, not {_short(mime)}")
    uri_key, uri = _get(value, "fileUri")
    if not isinstance(uri, str) or not uri.startswith("gs://") or len(uri) <= len("gs://"):
        ex.issue(f"{where}.{uri_key}", f"must be a gs:// URI of the file in Cloud Storage, not {_short(uri)}")
    else:
        ex.tokens += _TOKENS_PER_FILE


register_rules(RULES, "Vertex AI", {"supervised": _check_vertex_supervised, "dpo": _check_vertex_preference})
