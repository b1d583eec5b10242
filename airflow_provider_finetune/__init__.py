"""Apache Airflow provider for fine-tuning models: on hosted services and on one's own hardware, one DAG for all.

Each service is a backend in a registry (:mod:`airflow_provider_finetune.backends`); a local emulator of each
(:mod:`airflow_provider_finetune.emulator`) lets a DAG run end to end with no key.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from airflow_provider_finetune.core.constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, __version__

__all__ = ["AUTH_CHOICES", "PRESET_CHOICES", "SERVICE_CHOICES", "__version__", "get_provider_info"]


def __getattr__(name: str) -> Any:
    """The connection form's choices, read from the registry of services when asked for."""
    from airflow_provider_finetune import backends

    choices = {
        "SERVICE_CHOICES": lambda: tuple(backends.SERVICES),
        "PRESET_CHOICES": backends.preset_choices,
        "AUTH_CHOICES": backends.auth_choices,
    }
    if name in choices:
        return choices[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _module_names(part: str) -> tuple[str, ...]:
    """The modules of one part of the package (``operators``...) that define its public classes, read, not imported."""
    root = Path(__file__).parent
    kind = part.removesuffix("s").capitalize()  # operators -> Operator, triggers -> Trigger
    defines = re.compile(rf"^class [A-Z]\w*{kind}\b", re.M)
    return tuple(
        ".".join((__name__, *path.relative_to(root).with_suffix("").parts))
        for path in sorted((root / part).rglob("*.py"))
        if defines.search(path.read_text(encoding="utf-8"))
    )


def _modules(part: str) -> list[str]:
    """:func:`_module_names` as the provider's metadata lists them (the files are read once per process)."""
    return list(_module_names(part))


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow (the ``apache_airflow_provider`` entry point)."""
    from airflow_provider_finetune.backends import connection_fields, default_base_url

    return {
        "package-name": "airflow-provider-finetune",
        "name": "Fine-tuning",
        "description": "Fine-tune models as part of data pipelines, on every service that fine-tunes.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Fine-tuning",
                "external-doc-url": "https://pypi.org/project/airflow-provider-finetune/",
                "tags": ["ai", "ml"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Fine-tuning",
                "python-modules": ["airflow_provider_finetune.hooks.finetune"],
            }
        ],
        "operators": [{"integration-name": "Fine-tuning", "python-modules": _modules("operators")}],
        "sensors": [
            {
                "integration-name": "Fine-tuning",
                "python-modules": _modules("sensors"),
            }
        ],
        "triggers": [{"integration-name": "Fine-tuning", "python-modules": _modules("triggers")}],
        "extra-links": ["airflow_provider_finetune.links.finetune.FineTuningJobLink"],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_finetune.hooks.finetune.FineTuningHook",
                "hook-name": "Fine-tuning",
                "connection-type": "finetune",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {"host": default_base_url(), "password": "sk-..."},
                },
                "conn-fields": connection_fields(timeout=DEFAULT_TIMEOUT, max_retries=DEFAULT_MAX_RETRIES),
            }
        ],
    }
