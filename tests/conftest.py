from __future__ import annotations

import os
import tempfile

# The suite runs an Airflow of its own, whatever Airflow the caller's shell points at: every Airflow setting
# inherited from the environment (AIRFLOW_HOME, AIRFLOW_CONFIG, AIRFLOW__*, AIRFLOW_CONN_*...) is dropped,
# so that no test migrates, reads or writes the caller's metadata database, DAGs or connections. This runs
# before anything imports airflow, and the processes the tests start inherit the cleaned environment.
for _name in [name for name in os.environ if name.startswith(("AIRFLOW_", "_AIRFLOW"))]:
    del os.environ[_name]

_HOME = tempfile.mkdtemp(prefix="finetune-airflow-home-")
os.environ.update(
    {
        "AIRFLOW_HOME": _HOME,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{os.path.join(_HOME, 'airflow.db')}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # DAG files of the integration tests.
        "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration", "dags"),
    }
)

# Airflow is loaded first, as every Airflow process loads it before a provider module: the provider's errors
# are then AirflowExceptions in every test, whichever test module is collected first.
import airflow  # noqa: E402, F401
