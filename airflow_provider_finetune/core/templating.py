"""Templated arguments: telling a value still to be rendered from a real one, and numbers back from text.

Shared by the operators and the sensors; imports nothing but the standard library, so DAG files stay cheap.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["is_template", "number"]

_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE]-?\d+)?$")
_INTEGER = re.compile(r"^-?\d+$")


def number(value: Any) -> Any:
    """A number rendered by a template as text (``"3"``) back to a number; anything else as it is."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        return int(text) if _INTEGER.match(text) else float(text)
    return value


def is_template(value: Any) -> bool:
    """Whether a value is only known once the task's templates are rendered.

    Jinja text (``"{{ params.threshold }}"``), or an object that Airflow resolves when rendering (the
    ``.output`` of a task, an ``XComArg``): such a value cannot be checked when the DAG file is parsed.
    """
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    return callable(getattr(value, "resolve", None)) and callable(getattr(value, "iter_references", None))
