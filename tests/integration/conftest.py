"""Integration fixtures: the emulator over real loopback HTTP, and an Airflow metadata database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer

API_KEY = "sk-integration-5ecret-key"
DAGS = Path(__file__).parent / "dags"


def chat_lines(n: int = 12, *, prefix: str = "q") -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"{prefix}{i}?"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(n)
    ]
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


class Emulator:
    """The running emulator and its admin endpoints."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.base_url = server.base_url
        self.root = self.base_url.removesuffix("/v1")
        self.headers = {"Authorization": f"Bearer {API_KEY}"}

    def counters(self) -> dict[str, Any]:
        return httpx.get(f"{self.root}/_emulator/counters", headers=self.headers).json()

    def reset(self) -> None:
        httpx.post(f"{self.root}/_emulator/reset", headers=self.headers).raise_for_status()
        self.faults()

    def faults(self, **settings: Any) -> None:
        defaults = {"error_rate": 0.0, "rate_limit_rate": 0.0, "drop_rate": 0.0, "latency": 0.0, "match": None}
        defaults["after_processing"] = False
        response = httpx.post(f"{self.root}/_emulator/faults", headers=self.headers, json={**defaults, **settings})
        response.raise_for_status()

    def requests_to(self, route: str) -> int:
        return int(self.counters()["requests"].get(route, 0))


def stop_too_late(monkeypatch: pytest.MonkeyPatch, action: str) -> None:
    """Hold the hook's cancel or pause until the job has ended on its own, then send it (the service refuses)."""
    from airflow_provider_finetune.hooks.finetune import FineTuningHook

    real = getattr(FineTuningHook, action)

    def late(hook: Any, job_id: str) -> Any:
        for _ in range(300):
            if hook.get_job(job_id).status.is_terminal():
                return real(hook, job_id)
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not end")

    monkeypatch.setattr(FineTuningHook, action, late)


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, speed=40, seed=7)) as server:
        yield server


@pytest.fixture
def emulator(emulator_server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """The session's emulator, with counters and faults reset, and ``finetune_default`` pointing at it."""
    conn = {"conn_type": "finetune", "host": emulator_server.base_url, "password": API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
    emulator = Emulator(emulator_server)
    emulator.reset()
    yield emulator
    emulator.faults()


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated metadata database in the test session's AIRFLOW_HOME (a SQLite file)."""
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    # dag.test() runs DAGs that the metadata database knows (Airflow 3.1 does not add them itself).
    subprocess.run([str(airflow), "dags", "reserialize"], check=True, capture_output=True, env=os.environ.copy())


@pytest.fixture
def training_file(emulator: Emulator) -> str:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook

    return FineTuningHook().upload_file(chat_lines(), filename="train.jsonl").id
