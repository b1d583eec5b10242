"""Progress lines out of captured log records: a wait logs each poll's events as one record of many lines."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

#: The first line of a record of several events: "[job] N events:" (or "... (M earlier not shown):").
HEAD = re.compile(r"\[\S+\] \d+ events( \(\d+ earlier not shown\))?:$")


def progress_lines(records: Iterable[logging.LogRecord]) -> list[str]:
    """Every line of the records, in order, the head line of a poll's record left out."""
    return [line for r in records for line in r.getMessage().splitlines() if not HEAD.match(line)]
