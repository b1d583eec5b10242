"""Fixtures of the example DAG tests: the integration emulator and database, and the example DAGs parsed
and serialized into that database (``dag.test()`` on Airflow 3.1 runs only DAGs the database knows)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from tests.integration.conftest import API_KEY, Emulator, airflow_db, emulator, emulator_server

__all__ = [
    "EXAMPLE_DAGS",
    "Emulator",
    "airflow_db",
    "connection_to",
    "emulator",
    "emulator_server",
    "example_dag_bag",
    "one_execution_api_app",
    "serialized_example_dags",
    "slow_emulator",
]

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"
# The DAGs read it when they are parsed: polls every 0.2 s instead of every minute.
POLL_INTERVAL = "0.2"


def dag_bag(path: Path, **env: str | None) -> Any:
    """A DagBag of the example DAGs (or one file), parsed with ``env`` set (``None``: unset).

    The DAGs keep what they read from the environment when they were parsed.
    """
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if value is None:
                patch.delenv(name, raising=False)
            else:
                patch.setenv(name, value)
        return DagBag(str(path), bundle_path=EXAMPLE_DAGS)


@pytest.fixture(scope="session")
def example_dag_bag() -> Any:
    return dag_bag(EXAMPLE_DAGS, FINETUNE_EXAMPLE_POLL_INTERVAL=POLL_INTERVAL)


@pytest.fixture(scope="session")
def serialized_example_dags(airflow_db: None, example_dag_bag: Any) -> Any:
    """The example DAGs written to the metadata database, in the ``dags-folder`` bundle.

    In-process, from the DagBag the tests run (``airflow dags reserialize`` would need another process
    and a second parse); the DAGs already there, the integration tests' ones, are left alone.
    """
    try:
        from airflow.dag_processing.dagbag import sync_bag_to_db
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import sync_bag_to_db  # type: ignore[no-redef,attr-defined]
    assert example_dag_bag.import_errors == {}
    sync_bag_to_db(example_dag_bag, "dags-folder", None)
    return example_dag_bag


@pytest.fixture(scope="module", autouse=True)
def one_execution_api_app() -> Iterator[None]:
    """One in-process Execution API app for all the task runs of ``dag.test()``, as Airflow 3.3 keeps.

    Airflow 3.1 builds a new app (FastAPI, its lifespan, an event-loop thread) for every task it runs: about
    1 s each on a small machine, which made this module take twice as long on 3.1 as on 3.3.
    """
    from airflow.sdk.execution_time import supervisor

    if hasattr(supervisor.in_process_api_server, "cache_info"):  # already cached (3.3)
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            supervisor, "in_process_api_server", functools.lru_cache(maxsize=1)(supervisor.in_process_api_server)
        )
        yield


@contextmanager
def connection_to(server: EmulatorServer) -> Iterator[None]:
    """``finetune_default`` pointing at ``server`` for the duration of the block."""
    conn = {"conn_type": "finetune", "host": server.base_url, "password": API_KEY}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
        yield


@pytest.fixture(scope="module")
def slow_emulator() -> Iterator[EmulatorServer]:
    """An emulator whose jobs last long enough (about half a minute) to be paused, resumed and cancelled."""
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, speed=2, seed=11)) as server:
        yield server
