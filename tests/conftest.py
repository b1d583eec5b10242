from __future__ import annotations

import os
import tempfile

# Keep Airflow's state out of the user's home: every test session gets its own AIRFLOW_HOME, set before
# anything imports airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="finetune-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# DAG files of the integration tests.
os.environ.setdefault(
    "AIRFLOW__CORE__DAGS_FOLDER", os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration", "dags")
)
