"""Together's own JSONL formats (docs.together.ai, "Data preparation"; the SDK's JSONL_REQUIRED_COLUMNS_MAP).

Registered as the rules ``together``, which its backend names, so that a file is checked as Together reads it.
"""

from __future__ import annotations

from typing import Any, Final

from airflow_provider_finetune.training_data import (
    _MISSING,
    _PROMPT_COMPLETION_KEYS,
    _check_text,
    _Example,
    _kind,
    _no_supervised_format,
    _objects,
    _short,
    register_rules,
)

__all__ = ["RULES"]

#: The name a backend's ``training_data_rules`` gives to be checked by these formats.
RULES = "together"

_TOGETHER_ROLES: Final = ("system", "user", "assistant", "tool")


def _check_together_supervised(ex: _Example, obj: dict[str, Any]) -> None:
    if "messages" in obj:
        ex.format = "chat"
        _check_together_messages(ex, obj["messages"], "messages", needs_assistant=True)
    elif any(key in obj for key in _PROMPT_COMPLETION_KEYS):
        ex.format = "prompt_completion"
        for key in _PROMPT_COMPLETION_KEYS:
            _check_text(ex, obj, key, key)
    elif "text" in obj:
        ex.format = "text"
        _check_text(ex, obj, "text", "text")
    else:
        _no_supervised_format(
            ex,
            obj,
            expected_keys="messages, prompt or text",
            formats="none of Together's formats: conversational (messages), instruction (prompt and completion) or "
            "generic text (text)",
        )


def _check_together_dpo(ex: _Example, obj: dict[str, Any]) -> None:
    ex.format = "preference"
    inner = obj.get("input", _MISSING)
    if not isinstance(inner, dict):
        ex.issue("input", "required: an object with messages" if inner is _MISSING else "must be an object")
    else:
        _check_together_messages(ex, inner.get("messages", _MISSING), "input.messages", needs_assistant=False)
    for key in ("preferred_output", "non_preferred_output"):
        output = obj.get(key, _MISSING)
        if not isinstance(output, list) or not output:
            ex.issue(key, "required: a non-empty list of assistant messages")
            continue
        _check_together_messages(ex, output, key, needs_assistant=True)
        if any(isinstance(m, dict) and m.get("role") != "assistant" for m in output):
            ex.issue(key, "holds only assistant messages")


def _check_together_messages(ex: _Example, messages: Any, where: str, *, needs_assistant: bool) -> None:
    if not isinstance(messages, list) or not messages:
        ex.issue(
            where, "required: a non-empty list of messages" if messages is _MISSING else "must be a non-empty list"
        )
        return
    for at, message in _objects(ex, messages, where, "an object"):
        if message.get("role") not in _TOGETHER_ROLES:
            ex.issue(f"{at}.role", f"must be one of {', '.join(_TOGETHER_ROLES)}, not {_short(message.get('role'))}")
        content = message.get("content")
        if isinstance(content, str):
            ex.text(content)
        elif not isinstance(content, list) and not message.get("tool_calls"):
            ex.issue(f"{at}.content", f"must be a string or a list of content parts, not {_kind(content)}")
    if needs_assistant and not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        ex.issue(where, "has no assistant message to learn from")


# Together has no reinforcement fine-tuning.
register_rules(RULES, "Together", {"supervised": _check_together_supervised, "dpo": _check_together_dpo})
