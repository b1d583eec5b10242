"""The provider is registered with Airflow and describes itself correctly."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import airflow
import jsonschema
import pytest

from airflow_provider_finetune import __version__, get_provider_info
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
