"""Fixtures of the fault-tolerance suite: emulators with extra ASGI layers, the emulator as a process, helpers.

The fixtures of the hook, operator and integration tests are reused as they are (``api``, ``connection``,
``context``, ``emulator``, ``training_file``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorApp, EmulatorConfig, EmulatorServer
from airflow_provider_finetune.emulator import server as server_module
from tests.hooks.conftest import api, connection, hook
from tests.integration.conftest import API_KEY, Emulator, chat_lines, emulator, emulator_server, training_file
from tests.operators.conftest import FakeTI, context

try:
    from airflow.sdk.exceptions import TaskDeferred
except ImportError:  # Airflow 3.1
    from airflow.exceptions import TaskDeferred  # type: ignore[no-redef]

__all__ = [
    "API_KEY",
    "DAGS",
    "MODEL",
    "ROOT",
    "Emulator",
    "EmulatorProcess",
    "FakeTI",
    "TaskDeferred",
    "WireCounter",
    "api",
    "assert_one_clear_line",
    "chat_lines",
    "connection",
    "context",
    "dag_bag",
    "emulator",
    "emulator_server",
    "free_port",
    "fresh_trigger",
    "hook",
    "run_trigger",
    "serving",
    "set_connection",
    "training_file",
]

DAGS = Path(__file__).parent / "dags"
ROOT = Path(__file__).parents[2]
MODEL = "gpt-4o-mini-2024-07-18"


def dag_bag() -> Any:
    """The DAGs of ``dags/``, parsed without import errors."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
    bag = DagBag(str(DAGS))
    assert bag.import_errors == {}
    return bag


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, base_url: str, key: str, **extra: Any) -> None:
    """Point an Airflow connection (an ``AIRFLOW_CONN_*`` variable) at a service."""
    conn = {"conn_type": "finetune", "host": base_url, "password": key, "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def assert_one_clear_line(error: BaseException) -> str:
    """The message a person reads: one line, no traceback pasted into it, no empty text."""
    text = str(error)
    assert text.strip(), f"{type(error).__name__} has no message"
    assert "\n" not in text, text
    assert "Traceback" not in text, text
    return text


class WireCounter:
    """An ASGI layer that counts every ``/v1`` request that reaches the server, faulted or not."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            self.requests[scope["method"]] += 1
        await self.app(scope, receive, send)


@contextlib.contextmanager
def serving(config: EmulatorConfig, wrap: Callable[[EmulatorApp], None] | None = None) -> Iterator[EmulatorServer]:
    """An in-process emulator; ``wrap`` may put more ASGI layers around its fault injection and routes.

    The layers go between the app's outermost part (which stamps request ids and keeps the socket for a
    dropped connection) and the emulator's own fault injection.
    """

    def create_app(cfg: EmulatorConfig) -> EmulatorApp:
        app = real_create_app(cfg)
        if wrap is not None:
            wrap(app)
        return app

    real_create_app = server_module.create_app
    server = EmulatorServer(config)
    with mock.patch.object(server_module, "create_app", create_app):
        server.start()
    try:
        yield server
    finally:
        server.stop()


class EmulatorProcess:
    """The ``finetune-emulator`` command as a process of its own, so that it can be stopped and started again.

    :param port: the port it listens on, the same across restarts.
    :param key: its API key (passed in the environment, never on the command line).
    :param args: more arguments (``--db``, ``--speed``...).
    """

    def __init__(self, port: int, key: str, *args: str) -> None:
        self.port = port
        self.key = key
        self.args = args
        self.process: subprocess.Popen[str] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "FINETUNE_EMULATOR_API_KEY": self.key}
        command = [sys.executable, "-m", "airflow_provider_finetune.emulator", "--port", str(self.port), *self.args]
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.root + "/_emulator/health", timeout=1).status_code == 200:
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"the emulator exited: {self.process.communicate()}")
            if time.monotonic() > deadline:
                raise RuntimeError("the emulator did not start in time")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Stop it with ``sig``; return what it wrote to stderr."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return str(err)

    def counters(self) -> dict[str, Any]:
        response = httpx.get(self.root + "/_emulator/counters", headers={"Authorization": f"Bearer {self.key}"})
        response.raise_for_status()
        return dict(response.json())


def run_trigger(trigger: Any) -> list[dict[str, Any]]:
    """Run a trigger to its end in a fresh event loop, as a triggerer would; return the payloads it fired."""
    from airflow_provider_finetune.core.client import close_shared_async_clients

    async def collect() -> list[dict[str, Any]]:
        try:
            return [event.payload async for event in trigger.run()]
        finally:
            await close_shared_async_clients()

    return asyncio.run(collect())


def fresh_trigger(deferred: Any) -> Any:
    """The trigger a triggerer would build from what the task sent: its class and JSON kwargs, round-tripped."""
    classpath, kwargs = deferred.trigger.serialize()
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))


@pytest.fixture(scope="session")
def chaos_airflow_db() -> None:
    """The session's metadata database (a SQLite file in its AIRFLOW_HOME), with the DAGs of ``dags/`` in it.

    Like the integration tests' ``airflow_db``, for this folder: Airflow 3.1's ``dag.test()`` only runs DAGs
    that the database knows.
    """
    airflow = Path(sys.executable).parent / "airflow"
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS)}
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=env)
    subprocess.run([str(airflow), "dags", "reserialize"], check=True, capture_output=True, env=env)
