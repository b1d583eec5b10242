"""Run only by ``tests/test_isolation.py``, as a pytest of its own: where the suite's Airflow keeps its state.

Its name does not start with ``test_``, so the suite itself never collects it. It migrates a metadata
database, as the integration fixtures do, and prints where Airflow looked while it did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPORT = "ISOLATION-REPORT "


def test_report_where_airflow_keeps_its_state() -> None:
    from airflow.configuration import conf

    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    report = {
        "home": os.environ["AIRFLOW_HOME"],
        "sql_alchemy_conn": conf.get("database", "sql_alchemy_conn"),
        "dags_folder": conf.get("core", "dags_folder"),
        "airflow_variables": sorted(name for name in os.environ if "AIRFLOW" in name),
    }
    print(REPORT + json.dumps(report), flush=True)
