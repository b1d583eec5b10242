"""Show the deployment's process and task logs in the report of a deployment test that fails."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    deployment = getattr(item, "funcargs", {}).get("deployment")
    if report.failed and report.when == "call" and deployment is not None:
        report.sections.append(("deployment logs (tails)", deployment.tails()))
