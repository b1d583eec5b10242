"""The provider installs as a platform team installs it: from the built wheel, into a clean virtualenv with
Airflow's constraints, and Airflow then lists it.

Everything happens from what ``uv build`` makes (the sdist, and the wheel built from that sdist), not from
the source tree. The virtualenv is new; uv's cache makes its install take seconds after the first time.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from airflow_provider_finetune import __version__

pytestmark = [pytest.mark.integration, pytest.mark.packaging]

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "airflow_provider_finetune"


def uv() -> str:
    """The uv that ``make venv`` installs beside this Python, else one on the PATH."""
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    assert found, "uv is needed to build and install the provider (make venv installs it)"
    return found


def constraints() -> Path:
    """Airflow's constraints for the Airflow these tests run on (``constraints/airflow-3.3.txt``...)."""
    major, minor = importlib.metadata.version("apache-airflow").split(".")[:2]
    path = REPO / "constraints" / f"airflow-{major}.{minor}.txt"
    assert path.exists(), f"no constraints file for Airflow {major}.{minor}: {path}"
    return path


def run(*argv: str | Path, env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(arg) for arg in argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built into a folder of their own."""
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    run(uv(), "build", "--quiet", "--out-dir", out, REPO, env=env, cwd=out)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_the_wheel_carries_the_package_and_nothing_else(built: dict[str, Path]) -> None:
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = wheel.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        declared = wheel.read(entry_points).decode()
    assert built["wheel"].name == f"{PACKAGE}-{__version__}-py3-none-any.whl"
    assert f"{PACKAGE}/py.typed" in names
    assert f"{PACKAGE}/emulator/__init__.py" in names
    assert f"{PACKAGE}/emulator/__main__.py" in names
    for module in ("hooks/finetune.py", "operators/finetune.py", "sensors/finetune.py", "triggers/finetune.py"):
        assert f"{PACKAGE}/{module}" in names
    outside = [n for n in names if not n.startswith((f"{PACKAGE}/", f"{PACKAGE}-{__version__}.dist-info/"))]
    assert outside == []  # no tests/, example_dags/, scripts/
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "[apache_airflow_provider]" in declared
    assert "finetune-emulator = airflow_provider_finetune.emulator.__main__:main" in declared


def test_the_sdist_carries_the_package_readme_and_license(built: dict[str, Path]) -> None:
    with tarfile.open(built["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {f"{PACKAGE}/py.typed", f"{PACKAGE}/emulator/app.py", "README.md", "LICENSE", "pyproject.toml"} <= names
    assert not [n for n in names if n.startswith("tests/")]


def test_the_wheel_installs_with_airflows_constraints_and_airflow_lists_it(
    built: dict[str, Path], tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    home = tmp_path / "airflow-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["AIRFLOW_HOME"] = str(home)
    run(uv(), "venv", "--quiet", "--python", sys.executable, venv, env=env, cwd=tmp_path)
    python = venv / "bin" / "python"
    install = ["pip", "install", "--quiet", "--python", python, "-c", constraints(), built["wheel"]]
    run(uv(), *install, env=env, cwd=tmp_path)

    # The provider of the wheel, in the new virtualenv: not this source tree.
    where = run(python, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)", env=env, cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(venv)

    listed = run(venv / "bin" / "airflow", "providers", "list", "-o", "json", env=env, cwd=tmp_path)
    ours = [p for p in json.loads(listed) if p["package_name"] == "airflow-provider-finetune"]
    assert ours, listed[-2000:]
    assert ours[0]["version"] == __version__
    hooks = run(venv / "bin" / "airflow", "providers", "hooks", "-o", "json", env=env, cwd=tmp_path)
    assert any(h["connection_type"] == "finetune" for h in json.loads(hooks))

    assert "/_emulator/counters" in run(venv / "bin" / "finetune-emulator", "--help", env=env, cwd=tmp_path)
