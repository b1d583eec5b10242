"""The test suite keeps Airflow to itself: whatever Airflow the caller's shell points at is left untouched.

A user whose ``AIRFLOW_HOME`` (or ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``, ``AIRFLOW__CORE__DAGS_FOLDER``,
``AIRFLOW_CONFIG``...) names their own Airflow runs ``make test``: the suite must neither migrate their
metadata database nor write to their home. The demo is checked the same way in ``tests/test_demo.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.isolation_probe import REPORT

REPO = Path(__file__).resolve().parents[1]


def user_airflow(root: Path) -> tuple[Path, dict[str, str]]:
    """A user's own Airflow home (an ``airflow.cfg``, a SQLite metadata database, a DAG) and the variables
    a shell pointing at it would hold."""
    home = root / "user-airflow-home"
    dags = home / "dags"
    dags.mkdir(parents=True)
    (dags / "users_own_dag.py").write_text("# the user's DAG\n")
    db = home / "airflow.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE users_own (value TEXT)")
        connection.execute("INSERT INTO users_own VALUES ('precious')")
    connection.close()
    config = home / "airflow.cfg"
    config.write_text(
        f"[core]\ndags_folder = {dags}\nload_examples = True\n\n[database]\nsql_alchemy_conn = sqlite:///{db}\n"
    )
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW_CONFIG": str(config),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "True",
        "AIRFLOW_CONN_FINETUNE_DEFAULT": json.dumps({"conn_type": "finetune", "password": "sk-users-own"}),
    }
    return home, env


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.integration
def test_the_suite_leaves_the_callers_airflow_alone(tmp_path: Path) -> None:
    home, user_env = user_airflow(tmp_path)
    before = fingerprint(home)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/isolation_probe.py", "-q", "-s", "-p", "no:cacheprovider"],
        env={**os.environ, **user_env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert fingerprint(home) == before  # byte for byte, and no file added

    line = next(line for line in done.stdout.splitlines() if line.startswith(REPORT))
    report = json.loads(line[len(REPORT) :])
    used = Path(report["home"])
    assert used != home
    assert not used.is_relative_to(home)
    assert str(home) not in report["sql_alchemy_conn"]
    assert str(home) not in report["dags_folder"]
    assert "AIRFLOW_CONFIG" not in report["airflow_variables"]
    assert "AIRFLOW_CONN_FINETUNE_DEFAULT" not in report["airflow_variables"]
    assert (used / "airflow.db").is_file()  # the run migrated a database of its own


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, env=os.environ.copy()
    )


def test_the_emulator_and_the_models_import_without_airflow() -> None:
    # The emulator starts in a blink and runs where Airflow is not installed: nothing it imports pulls Airflow.
    done = run_python(
        "import sys\n"
        "import airflow_provider_finetune.emulator.app, airflow_provider_finetune.emulator.__main__\n"
        "import airflow_provider_finetune.models, airflow_provider_finetune.training_data\n"
        "from airflow_provider_finetune.exceptions import FineTuningError\n"
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))\n"
        "print([c.__name__ for c in FineTuningError.__mro__])\n"
    )
    assert done.returncode == 0, done.stderr
    loaded, mro = done.stdout.splitlines()
    assert loaded == "[]"
    assert mro == "['FineTuningError', 'Exception', 'BaseException', 'object']"


def test_inside_airflow_the_errors_are_airflow_exceptions() -> None:
    # Where Airflow is loaded first, as in every Airflow process (task, triggerer, DAG processor), the errors
    # are AirflowExceptions, which Airflow treats specially (a deferrable sensor's soft_fail, for one).
    done = run_python(
        "from airflow.exceptions import AirflowException\n"
        "from airflow_provider_finetune.exceptions import FineTuningJobFailed, InvalidRequestError\n"
        "print(issubclass(FineTuningJobFailed, AirflowException), issubclass(InvalidRequestError, AirflowException))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
