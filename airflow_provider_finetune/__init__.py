"""Apache Airflow provider for fine-tuning models through the OpenAI fine-tuning API.

It covers the OpenAI service and every service that speaks the same API (Azure OpenAI, AWS Bedrock's
OpenAI-compatible endpoint, gateways such as Portkey or LiteLLM), and ships a local emulator of that API.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["AUTH_CHOICES", "PRESET_CHOICES", "SERVICE_CHOICES", "__version__", "get_provider_info"]

# Spelled out here rather than imported: Airflow reads this module to list providers, and the backends pull in
# httpx and pydantic. tests/test_provider.py checks these against client.SERVICES and backends.openai.PRESETS.
#: The services a connection may name (the ``service`` extra).
SERVICE_CHOICES = ("openai", "azure", "bedrock", "fireworks", "together", "openai-compatible")
#: The presets of an ``openai-compatible`` service (the ``preset`` extra).
PRESET_CHOICES = ("bedrock-mantle", "litellm", "portkey")
#: How a connection authenticates where its service offers more than one way (the ``auth`` extra): Azure's
#: ``key`` or ``entra``, Bedrock's ``key`` (a Bedrock API key) or ``sigv4`` (an Airflow AWS connection).
AUTH_CHOICES = ("key", "entra", "sigv4")


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
                "python-modules": [
                    "airflow_provider_finetune.operators.finetune",
                    "airflow_provider_finetune.operators.bedrock",
                    "airflow_provider_finetune.operators.evaluate",
                ],
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
                "python-modules": [
                    "airflow_provider_finetune.triggers.finetune",
                    "airflow_provider_finetune.triggers.bedrock",
                    "airflow_provider_finetune.triggers.quota",
                ],
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
                    "service": {
                        "label": "Service",
                        "description": "Which service the Base URL points at; it picks the dialect spoken to it",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": [*SERVICE_CHOICES, None],
                            "default": "openai",
                        },
                    },
                    "preset": {
                        "label": "Preset (OpenAI-compatible)",
                        "description": "The gateway or endpoint behind an openai-compatible service, if any",
                        "schema": {"type": ["string", "null"], "enum": [*PRESET_CHOICES, None]},
                    },
                    "auth": {
                        "label": "Authentication (Azure, Bedrock)",
                        "description": "key: the API key (Azure's api-key, a Bedrock API key); entra: a Microsoft "
                        "Entra ID token (needs the azure extra); sigv4: requests signed with the AWS connection's "
                        "credentials (needs the amazon extra)",
                        "schema": {"type": ["string", "null"], "enum": [*AUTH_CHOICES, None]},
                    },
                    "aws_conn_id": {
                        "label": "AWS connection (Bedrock)",
                        "description": "The Airflow AWS connection whose credentials sign requests "
                        "(keys, profile, assumed role)",
                        "schema": {"type": ["string", "null"], "default": "aws_default"},
                    },
                    "region_name": {
                        "label": "AWS region (Bedrock)",
                        "description": "e.g. us-east-1; the endpoint when no Base URL is given",
                        "schema": {"type": ["string", "null"]},
                    },
                    "organization": {"label": "Organization", "schema": {"type": ["string", "null"]}},
                    "project": {"label": "Project", "schema": {"type": ["string", "null"]}},
                    "api_type": {
                        "label": "API type (older spelling)",
                        "description": "Older spelling of the service, kept for existing connections: "
                        "azure means service azure",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": ["openai", "azure", None],
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
