"""What the deployment tests share: starting, watching and stopping processes, and reading what they wrote.

Each deployment test starts real processes (the emulator, Airflow's components, and for the production-shaped
test Postgres and Redis) in a folder of its own, each in its own process group with its output in a log file,
and stops every one of them in the end, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

BIN = Path(sys.executable).parent
STOP_GRACE = 30.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int) -> str:
    """The last lines of a process's log, less the API server's access log (the test's own polling)."""
    if not path.exists():
        return f"(no {path.name})"
    text = [line for line in path.read_text(errors="replace").splitlines() if "[http.access]" not in line]
    return "\n".join(text[-lines:])


def log_events(path: Path) -> list[str]:
    """The messages of a task or trigger log file (JSON lines; a plain line is its own message)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            events.append(line)
            continue
        events.append(str(record.get("event", "")) if isinstance(record, dict) else line)
    return events


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    # What stops it cleanly: SIGTERM for most; Postgres takes SIGINT (fast shutdown, not waiting for clients).
    stop_signal: int = signal.SIGTERM


@dataclass
class RunWatch:
    """What the test saw of a DAG run while it polled it: every state each task went through, in order."""

    run_id: str
    states: dict[str, list[str]] = field(default_factory=dict)
    state: str | None = None

    def saw(self, task_id: str, state: str | None) -> None:
        seen = self.states.setdefault(task_id, [])
        if state and (not seen or seen[-1] != state):
            seen.append(state)


def airflow_environment(
    *, home: Path, dags: Path, api_url: str, api_port: int, emulator_url: str, api_key: str
) -> dict[str, str]:
    """The environment of every Airflow process of a deployment test, less its database and executor.

    Nothing of the test session's own Airflow settings (its AIRFLOW_HOME, DAGs folder, connections) is kept.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FINETUNE_"))}
    connection = {"conn_type": "finetune", "host": f"{emulator_url}/v1", "password": api_key}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
            "AIRFLOW__API__BASE_URL": api_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # Log servers of the workers and the triggerers, off their fixed default ports.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            # Runs come from the test only: unpausing a scheduled DAG would otherwise start its latest run at
            # once, whose job would blur the emulator's counters.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW_CONN_FINETUNE_DEFAULT": json.dumps(connection),
        }
    )
    return env


class ProcessSet:
    """Processes started by a test, each in a process group of its own with its output in ``process-logs/``."""

    # Stopped after every other process, in this order (a task may still talk to the emulator, every Airflow
    # process to the metadata database).
    STOP_LAST: ClassVar[tuple[str, ...]] = ("emulator",)

    def __init__(self, root: Path) -> None:
        self.root = root
        self.process_logs = root / "process-logs"
        self.process_logs.mkdir(parents=True, exist_ok=True)
        self.env: dict[str, str] = {}
        self.processes: dict[str, Process] = {}
        self.started: list[str] = []

    def start(self, name: str, *argv: str, stop_signal: int = signal.SIGTERM, **popen: Any) -> Process:
        log = self.process_logs / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=popen.pop("env", self.env),
                cwd=popen.pop("cwd", self.root),
                start_new_session=True,  # its own process group: its children are stopped with it
                **popen,
            )
        self.processes[name] = Process(name, process, log, stop_signal)
        self.started.append(name)
        return self.processes[name]

    def start_airflow(self, name: str, *args: str) -> Process:
        return self.start(name, str(BIN / "airflow"), *args)

    def run_to_end(self, name: str, *argv: str, timeout: float = 180) -> None:
        """Run a command to its end (``airflow db migrate``...), its output in ``process-logs/<name>.log``."""
        log = self.process_logs / f"{name}.log"
        with log.open("wb") as out:
            result = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                timeout=timeout,
                check=False,
            )
        assert result.returncode == 0, f"{' '.join(argv)} failed:\n{tail(log, 40)}"

    def stop(self, name: str) -> int | None:
        """The process's stop signal, a grace period, then SIGKILL to it and whatever it left in its group."""
        process = self.processes.pop(name)
        popen = process.popen
        code: int | None = popen.poll()
        if code is None:
            popen.send_signal(process.stop_signal)
            try:
                code = popen.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                code = None
        # The group of a process started with start_new_session has the process's id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=10)
        return code

    def kill(self, name: str) -> None:
        """SIGKILL to the process's whole group at once, as when its machine or container dies."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=10)

    def stop_all(self) -> None:
        # The scheduler first (no new task), then the others, newest first, and STOP_LAST last.
        rest = [n for n in reversed(self.started) if n != "scheduler" and n not in self.STOP_LAST]
        for name in ["scheduler", *rest, *self.STOP_LAST]:
            if name in self.processes:
                self.stop(name)

    def check_alive(self) -> None:
        for process in self.processes.values():
            code = process.popen.poll()
            assert code is None, f"{process.name} exited with {code}:\n{tail(process.log, 40)}"

    def wait_until(self, what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    def process_tails(self, lines: int = 40) -> list[str]:
        return [
            f"----- {path.name} (last {lines} lines) -----\n{tail(path, lines)}"
            for path in sorted(self.process_logs.glob("*.log"))
        ]
