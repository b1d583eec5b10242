"""Connections, in URI and JSON form, read into settings and the backend of their service.

Each connection goes the way a task reads it: an ``AIRFLOW_CONN_*`` variable, ``FineTuningHook(...).settings``,
then ``hook.backend``. Headers are checked on requests caught at the transport.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from airflow_provider_finetune.backends import SERVICES
from airflow_provider_finetune.backends.azure import AzureAuthoringBackend, AzureV1Backend
from airflow_provider_finetune.backends.openai import PRESETS, OpenAIBackend, OpenAICompatibleBackend
from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.hooks.connection import MIN_MASKED_LENGTH
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from tests.hooks.conftest import job

README = Path(__file__).resolve().parents[1] / "README.md"
KEY = "sk-test-connection-0123456789"
SHORT_KEY_WARNING = "too short"


@pytest.fixture
def short_secret_warnings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Any:
    """Return a function that lists Airflow's "too short to mask" warnings logged so far in the test.

    Airflow says it once per process, so its once-flag is cleared first: else an earlier test would hide it.
    """
    from airflow.sdk._shared.secrets_masker.secrets_masker import SecretsMasker

    monkeypatch.setattr(SecretsMasker, "_has_warned_short_secret", False)
    caplog.set_level(logging.WARNING)
    return lambda: [r.getMessage() for r in caplog.records if SHORT_KEY_WARNING in r.getMessage()]


@pytest.fixture
def use(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Define ``finetune_default`` from a URI or a JSON object and return a fresh hook over it."""
    hooks: list[FineTuningHook] = []

    def define(conn: str | dict[str, Any], conn_id: str = "finetune_default") -> FineTuningHook:
        value = conn if isinstance(conn, str) else json.dumps(conn)
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)
        hook = FineTuningHook(conn_id)
        hooks.append(hook)
        return hook

    yield define
    for hook in hooks:
        hook.close()


def _sent_get_job(hook: FineTuningHook) -> httpx.Request:
    """Ask for a job and return the request as it reached the transport."""
    base = hook.backend.settings.base_url
    with respx.mock(assert_all_mocked=True) as router:
        route = router.get(url__regex=rf"(?i)^{re.escape(base)}/fine_tuning/jobs/ftjob-1(\?.*)?$").mock(
            return_value=httpx.Response(200, json=job("ftjob-1"))
        )
        hook.get_job("ftjob-1")
    return route.calls.last.request


# -- each service and preset ---------------------------------------------------------------------------------


def test_openai_json_form(use: Any) -> None:
    hook = use({"conn_type": "finetune", "password": KEY, "extra": {"organization": "org-1"}})
    assert type(hook.backend) is OpenAIBackend
    assert hook.settings.base_url == "https://api.openai.com/v1"
    request = _sent_get_job(hook)
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["OpenAI-Organization"] == "org-1"


def test_openai_uri_form_over_plain_http(use: Any) -> None:
    hook = use(f"finetune://:{KEY}@localhost:8089/v1?scheme=http&service=openai")
    assert type(hook.backend) is OpenAIBackend
    assert hook.settings.base_url == "http://localhost:8089/v1"
    assert hook.settings.api_key == KEY


def test_azure_with_api_version_is_the_authoring_api(use: Any) -> None:
    hook = use(
        {
            "conn_type": "finetune",
            "host": "https://RES.openai.azure.com",
            "password": KEY,
            "extra": {"service": "azure", "api_version": "2024-10-21"},
        }
    )
    backend = hook.backend
    assert type(backend) is AzureAuthoringBackend
    assert backend.settings.base_url == "https://RES.openai.azure.com/openai"
    request = _sent_get_job(hook)
    assert request.url.params["api-version"] == "2024-10-21"
    assert request.headers["api-key"] == KEY
    assert "Authorization" not in request.headers


def test_azure_without_api_version_is_v1(use: Any) -> None:
    hook = use(
        {
            "conn_type": "finetune",
            "host": "https://RES.openai.azure.com",
            "password": KEY,
            "extra": {"service": "azure"},
        }
    )
    backend = hook.backend
    assert type(backend) is AzureV1Backend
    assert backend.settings.base_url == "https://RES.openai.azure.com/openai/v1"
    request = _sent_get_job(hook)
    assert "api-version" not in request.url.params
    assert request.headers["api-key"] == KEY


def test_azure_uri_form(use: Any) -> None:
    hook = use(f"finetune://:{KEY}@RES.openai.azure.com/openai?service=azure&api_version=2024-10-21")
    assert type(hook.backend) is AzureAuthoringBackend
    assert hook.backend.settings.base_url.lower() == "https://res.openai.azure.com/openai"


def test_api_type_azure_still_means_azure(use: Any) -> None:
    hook = use(
        {
            "conn_type": "finetune",
            "host": "https://RES.openai.azure.com/openai",
            "password": KEY,
            "extra": {"api_type": "azure", "api_version": "2024-10-21"},
        }
    )
    assert hook.settings.service == "azure"
    assert type(hook.backend) is AzureAuthoringBackend
    assert hook.backend.settings.base_url.lower() == "https://res.openai.azure.com/openai"


def test_portkey_sends_the_key_as_its_own_header(use: Any) -> None:
    hook = use(
        {
            "conn_type": "finetune",
            "host": "https://api.portkey.ai/v1",
            "password": KEY,
            "extra": {
                "service": "openai-compatible",
                "preset": "portkey",
                "extra_headers": {"x-portkey-provider": "openai"},
            },
        }
    )
    assert type(hook.backend) is OpenAICompatibleBackend
    assert hook.backend.settings.base_url == "https://api.portkey.ai/v1"
    request = _sent_get_job(hook)
    assert request.headers["x-portkey-api-key"] == KEY
    assert request.headers["x-portkey-provider"] == "openai"
    assert "Authorization" not in request.headers


def test_litellm_sends_bearer(use: Any) -> None:
    hook = use(f"finetune://:{KEY}@litellm.internal:4000?scheme=http&service=openai-compatible&preset=litellm")
    assert type(hook.backend) is OpenAICompatibleBackend
    assert hook.backend.settings.base_url == "http://litellm.internal:4000"
    assert hook.backend.label == PRESETS["litellm"][0]
    request = _sent_get_job(hook)
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert "x-portkey-api-key" not in request.headers


def test_bedrock_mantle_preset(use: Any) -> None:
    hook = use(
        {
            "conn_type": "finetune",
            "host": "https://bedrock-openai.example.com/v1",
            "password": KEY,
            "extra": {"service": "openai-compatible", "preset": "bedrock-mantle"},
        }
    )
    assert type(hook.backend) is OpenAICompatibleBackend
    assert hook.backend.capabilities == PRESETS["bedrock-mantle"][1]
    assert _sent_get_job(hook).headers["Authorization"] == f"Bearer {KEY}"


# -- what is refused, and how --------------------------------------------------------------------------------


def test_unknown_service_is_one_clear_error_naming_the_field(use: Any) -> None:
    hook = use({"conn_type": "finetune", "password": KEY, "extra": {"service": "sagemaker"}})
    with pytest.raises(InvalidRequestError) as info:
        hook.backend  # noqa: B018
    assert info.value.field == "service"
    assert "'sagemaker'" in str(info.value)
    assert all(service in str(info.value) for service in SERVICES)


def test_unknown_preset_is_one_clear_error_naming_the_field(use: Any) -> None:
    hook = use({"conn_type": "finetune", "password": KEY, "extra": {"service": "openai-compatible", "preset": "kong"}})
    with pytest.raises(InvalidRequestError) as info:
        hook.backend  # noqa: B018
    assert info.value.field == "preset"
    assert "'kong'" in str(info.value)
    assert all(preset in str(info.value) for preset in PRESETS)


def test_bedrock_has_a_backend(use: Any) -> None:
    from airflow_provider_finetune.backends.bedrock import BedrockBackend

    hook = use({"conn_type": "finetune", "extra": {"service": "bedrock", "region_name": "us-east-1"}})
    assert type(hook.backend) is BedrockBackend
    assert hook.settings.base_url == "https://bedrock.us-east-1.amazonaws.com"


# -- the README's connections ---------------------------------------------------------------------------------


def _readme_connections() -> list[str]:
    """Every ``export AIRFLOW_CONN_...='...'`` in the README, with its line breaks joined."""
    found = re.findall(r"export AIRFLOW_CONN_\w+='(.*?)'", README.read_text(), flags=re.DOTALL)
    return [" ".join(part.strip() for part in value.splitlines()) for value in found]


def test_readme_documents_every_service_that_has_a_backend() -> None:
    forms = _readme_connections()
    assert len(forms) >= 6
    text = " ".join(forms)
    for needle in ('"service": "azure"', '"preset": "portkey"', '"preset": "litellm"', '"preset": "bedrock-mantle"'):
        assert needle in text


@pytest.mark.parametrize("form", _readme_connections())
def test_readme_connection_forms_parse(use: Any, form: str, short_secret_warnings: Any) -> None:
    hook = use(form)
    settings = hook.settings
    backend = hook.backend
    assert backend.settings.base_url.startswith(("http://", "https://"))
    assert not short_secret_warnings()
    # Keys are realistic; Entra ID and Google credentials come from elsewhere.
    assert settings.auth in ("entra", "google") or len(settings.api_key) >= MIN_MASKED_LENGTH, "realistic keys"


# -- secrets too short to mask ---------------------------------------------------------------------------------

#: Three-character keys. The old README form also has a short extra, "scheme": "http": Airflow masks every extra
#: value whenever Connection.extra_dejson is read (the provider reads it too) and warns about the short ones.
SHORT_KEY = {"conn_type": "finetune", "host": "http://localhost:8089/v1", "password": "abc"}
OLD_README_FORM = "finetune://:KEY@localhost:8089/v1?scheme=http"


def test_the_probe_sees_airflows_short_secret_warning(short_secret_warnings: Any) -> None:
    """The warning the tests below look for is one the probe catches (so their silence means something)."""
    from airflow.sdk.log import mask_secret

    mask_secret("KEY")
    assert short_secret_warnings()


@pytest.mark.parametrize("conn", [SHORT_KEY])
def test_reading_a_short_secret_asks_airflow_to_mask_nothing_short(
    use: Any,
    conn: str | dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    short_secret_warnings: Any,
) -> None:
    from airflow.sdk._shared.secrets_masker.secrets_masker import SecretsMasker

    hook = use(conn)
    airflow_conn = hook.get_connection(hook.finetune_conn_id)  # Airflow's own reading warns: see below
    caplog.clear()
    monkeypatch.setattr(SecretsMasker, "_has_warned_short_secret", False)
    monkeypatch.setattr(hook, "get_connection", lambda conn_id: airflow_conn)
    settings = hook.settings
    assert len(settings.api_key) < MIN_MASKED_LENGTH
    assert not short_secret_warnings()


def test_the_provider_masks_only_what_airflow_can_mask() -> None:
    from airflow.sdk.definitions.connection import Connection

    from airflow_provider_finetune.hooks.connection import settings_from_connection

    asked: list[str] = []
    conn = Connection(
        conn_id="c",
        conn_type="finetune",
        password="abc",
        extra=json.dumps({"extra_headers": {"x-a": KEY, "x-b": "abc"}}),
    )
    settings_from_connection(conn, mask=asked.append)
    assert asked == [KEY]


@pytest.mark.parametrize("conn", [SHORT_KEY, OLD_README_FORM])
def test_airflow_itself_warns_about_a_three_character_key(
    use: Any, conn: str | dict[str, Any], short_secret_warnings: Any
) -> None:
    """Why the README's keys are long: Airflow masks the password (and every extra) as it reads a connection."""
    use(conn).settings  # noqa: B018
    assert short_secret_warnings()


def test_a_long_key_is_still_masked(use: Any) -> None:
    from airflow.sdk.execution_time.secrets_masker import redact

    hook = use({"conn_type": "finetune", "password": KEY})
    hook.settings  # noqa: B018
    assert KEY not in str(redact(f"key={KEY}"))
