"""The provider is registered with Airflow and describes itself correctly."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import airflow
import jsonschema
import pytest

from airflow_provider_finetune import (
    AUTH_CHOICES,
    PRESET_CHOICES,
    SERVICE_CHOICES,
    __version__,
    get_provider_info,
)
from airflow_provider_finetune.backends import SERVICES
from airflow_provider_finetune.backends.openai import PRESETS
from airflow_provider_finetune.core.constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from airflow_provider_finetune.hooks.finetune import FineTuningHook


def test_entry_point_is_declared() -> None:
    points = entry_points(group="apache_airflow_provider")
    ours = [p for p in points if p.value == "airflow_provider_finetune:get_provider_info"]
    assert len(ours) == 1
    assert ours[0].load()() == get_provider_info()


def test_provider_info_matches_airflow_schema() -> None:
    schema_path = Path(airflow.__file__).parent / "provider_info.schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_provider_info_describes_the_hook_and_connection() -> None:
    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-finetune"
    assert info["versions"] == [__version__]
    (conn,) = info["connection-types"]
    assert conn["connection-type"] == FineTuningHook.conn_type == "finetune"
    assert conn["hook-class-name"] == f"{FineTuningHook.__module__}.{FineTuningHook.__qualname__}"
    assert conn["ui-field-behaviour"]["relabeling"] == {"host": "Base URL", "password": "API key"}
    assert set(conn["conn-fields"]) == {
        "service",
        "preset",
        "auth",
        "aws_conn_id",
        "region_name",
        "location",
        "gcp_conn_id",
        "organization",
        "project",
        "api_type",
        "api_version",
        "extra_headers",
        "timeout",
        "max_retries",
    }
    modules = [m for entry in info["hooks"] for m in entry["python-modules"]]
    assert modules == [FineTuningHook.__module__]


def _conn_fields() -> dict[str, Any]:
    (conn,) = get_provider_info()["connection-types"]
    return conn["conn-fields"]


def test_form_offers_every_service_preset_and_auth_the_code_knows() -> None:
    fields = _conn_fields()
    assert tuple(SERVICES) == SERVICE_CHOICES
    assert set(PRESET_CHOICES) == set(PRESETS)
    assert fields["service"]["schema"]["enum"] == [*SERVICES, None]
    assert fields["service"]["schema"]["default"] == "openai"
    assert set(fields["preset"]["schema"]["enum"]) == {*PRESETS, None}
    assert fields["auth"]["schema"]["enum"] == [*AUTH_CHOICES, None] == ["key", "entra", "sigv4", "google", None]
    assert "older spelling" in fields["api_type"]["label"]
    assert fields["api_type"]["schema"]["enum"] == ["openai", "azure", None]
    assert fields["extra_headers"]["schema"]["format"] == "password"
    assert fields["timeout"]["schema"]["default"] == DEFAULT_TIMEOUT
    assert fields["max_retries"]["schema"]["default"] == DEFAULT_MAX_RETRIES


class _Field:
    """What Airflow 3.0/3.1 keep of a wtforms field when they turn it into the form's JSON schema."""

    kind = "string"
    secret = False

    def __init__(self, label: str, validators: list[Any] | None = None, default: Any = None, **_: Any) -> None:
        self.label = label
        self.default = default
        self.enum = next((v for v in validators or [] if isinstance(v, list)), None)


class _PasswordField(_Field):
    secret = True


class _IntegerField(_Field):
    kind = "integer"


def _fake_form_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for wtforms, flask_babel and flask_appbuilder, as Airflow's own ``HookMetaService`` mocks them."""
    wtforms = types.ModuleType("wtforms")
    wtforms.StringField = _Field  # type: ignore[attr-defined]
    wtforms.PasswordField = _PasswordField  # type: ignore[attr-defined]
    wtforms.IntegerField = _IntegerField  # type: ignore[attr-defined]
    validators = types.ModuleType("wtforms.validators")
    validators.any_of = lambda values: list(values)  # type: ignore[attr-defined]
    validators.Optional = lambda: None  # type: ignore[attr-defined]
    babel = types.ModuleType("flask_babel")
    babel.lazy_gettext = lambda text: text  # type: ignore[attr-defined]
    fab = types.ModuleType("flask_appbuilder")
    widgets = types.ModuleType("flask_appbuilder.fieldwidgets")
    widgets.BS3TextFieldWidget = widgets.BS3PasswordFieldWidget = object  # type: ignore[attr-defined]
    for name, module in {
        "wtforms": wtforms,
        "wtforms.validators": validators,
        "flask_babel": babel,
        "flask_appbuilder": fab,
        "flask_appbuilder.fieldwidgets": widgets,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_form_widgets_match_conn_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow < 3.2 shows get_connection_form_widgets, 3.2+ conn-fields: both offer the same form."""
    _fake_form_modules(monkeypatch)
    widgets = FineTuningHook.get_connection_form_widgets()
    fields = _conn_fields()
    assert list(widgets) == list(fields)
    for name, widget in widgets.items():
        schema = fields[name]["schema"]
        assert widget.secret == (schema.get("format") == "password"), name
        assert widget.kind in schema["type"] or (widget.kind == "integer" and "number" in schema["type"]), name
        enum = schema.get("enum")
        assert widget.enum == ([v for v in enum if v is not None] if enum else None), name
        assert widget.default == schema.get("default", widget.default), name


def test_every_listed_module_imports() -> None:
    import importlib

    info = get_provider_info()
    for kind in ("hooks", "operators", "sensors", "triggers"):
        for entry in info.get(kind, []):
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for link in info.get("extra-links", []):
        module, _, name = link.rpartition(".")
        assert hasattr(importlib.import_module(module), name)


@pytest.mark.integration
def test_airflow_cli_lists_the_provider(tmp_path: Path) -> None:
    env = {"AIRFLOW_HOME": str(tmp_path), "PATH": str(Path(sys.executable).parent)}
    airflow_bin = str(Path(sys.executable).parent / "airflow")
    listed = subprocess.run(
        [airflow_bin, "providers", "list", "-o", "json"], env=env, capture_output=True, text=True, check=True
    )
    assert "airflow-provider-finetune" in {p["package_name"] for p in json.loads(listed.stdout)}
    hooks = subprocess.run(
        [airflow_bin, "providers", "hooks", "-o", "json"], env=env, capture_output=True, text=True, check=True
    )
    ours = [h for h in json.loads(hooks.stdout) if h["connection_type"] == "finetune"]
    assert ours
    assert ours[0]["class"] == "airflow_provider_finetune.hooks.finetune.FineTuningHook"
