"""Apache Airflow provider for fine-tuning models through the OpenAI fine-tuning API.

It covers the OpenAI service and every service that speaks the same API (Azure OpenAI, AWS Bedrock's
OpenAI-compatible endpoint, gateways such as Portkey or LiteLLM), and ships a local emulator of that API.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "get_provider_info"]


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow (the ``apache_airflow_provider`` entry point)."""
    return {
        "package-name": "airflow-provider-finetune",
        "name": "Fine-tuning",
        "description": "Fine-tune models through the OpenAI fine-tuning API and the services that speak it.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Fine-tuning",
                "external-doc-url": "https://platform.openai.com/docs/api-reference/fine-tuning",
                "tags": ["ai", "ml"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Fine-tuning",
                "python-modules": ["airflow_provider_finetune.hooks.finetune"],
            }
        ],
        "operators": [
            {
                "integration-name": "Fine-tuning",
                "python-modules": ["airflow_provider_finetune.operators.finetune"],
            }
        ],
        "sensors": [
            {
                "integration-name": "Fine-tuning",
                "python-modules": ["airflow_provider_finetune.sensors.finetune"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Fine-tuning",
                "python-modules": ["airflow_provider_finetune.triggers.finetune"],
            }
        ],
        "extra-links": ["airflow_provider_finetune.links.finetune.FineTuningJobLink"],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_finetune.hooks.finetune.FineTuningHook",
                "hook-name": "Fine-tuning (OpenAI API)",
                "connection-type": "finetune",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {"host": "https://api.openai.com/v1", "password": "sk-..."},
                },
                "conn-fields": {
                    "organization": {"label": "Organization", "schema": {"type": ["string", "null"]}},
                    "project": {"label": "Project", "schema": {"type": ["string", "null"]}},
                    "api_type": {
                        "label": "API type",
                        "description": "openai: Bearer token; azure: api-key header",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": ["openai", "azure", None],
                            "default": "openai",
                        },
                    },
                    "api_version": {
                        "label": "API version",
                        "description": "api-version query parameter (Azure OpenAI)",
                        "schema": {"type": ["string", "null"]},
                    },
                    "extra_headers": {
                        "label": "Extra headers",
                        "description": "JSON object of headers sent with every request (gateways)",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "schema": {"type": ["number", "null"], "default": 60},
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "schema": {"type": ["integer", "null"], "default": 5},
                    },
                },
            }
        ],
    }
