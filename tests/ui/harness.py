"""A real api-server with the provider's plugin, jobs made on the emulator, and a headless Chromium.

Shared by the browser tests (tests/ui) and the UI benchmark (benchmarks/bench_ui.py). Two emulators
run in this process: a fast one (``finetune_default``: a job trains to the end in a second or two) and a slow
one (``finetune_slow``: a job stays queued for minutes, so that it can be cancelled from the page), and a
third (``finetune_private``) for the jobs of the extra DAGs. Airflow runs as a user runs it: ``airflow db
migrate``, ``airflow dags test`` for the jobs, ``airflow api-server``, with the simple auth manager narrowed by
tests/ui/auth_manager.py and four users (admin, editor with the ``user`` role, viewer, and ``partial``, who may
read only the DAG :data:`~tests.ui.auth_manager.PRIVATE_DAG`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
DAGS = Path(__file__).parent / "dags"
DAG_ID = "finetune_ui_demo"
CHROMIUM = Path(os.environ.get("FINETUNE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("FINETUNE_CHROMEDRIVER", "/usr/bin/chromedriver"))
USERS = {"admin": "admin", "editor": "user", "viewer": "viewer", "partial": "user"}
#: The auth manager of the test deployment: the simple one, with the ``partial`` user kept to one DAG.
AUTH_MANAGER = "tests.ui.auth_manager.PartialAuthManager"
STARTUP_TIMEOUT = 120.0


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or ``None`` when they can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, _package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} is missing (apt-get install -y chromium chromium-driver; .ci/run does it in CI)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chat_lines(n: int = 12, prefix: str = "q") -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"{prefix}{i}?"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(n)
    ]
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


class UIDeployment:
    """The emulators, an AIRFLOW_HOME under ``root`` and an api-server serving the plugin."""

    def __init__(
        self,
        root: Path,
        *,
        dag_file: Path = DAGS / "finetune_ui_demo.py",
        dag_id: str = DAG_ID,
        extra_dags: tuple[tuple[Path, str], ...] = (),
    ) -> None:
        self.root = root
        self.home = root / "airflow-home"
        self.dags = root / "dags"
        self.logs = root / "process-logs"
        for folder in (self.home, self.dags, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(dag_file, self.dags)
        self.dag_id = dag_id
        for extra, _ in extra_dags:
            shutil.copy(extra, self.dags)
        self.extra_dag_ids = [extra_id for _, extra_id in extra_dags]
        (self.dags / "train.jsonl").write_bytes(chat_lines())
        (self.dags / "valid.jsonl").write_bytes(chat_lines(10, prefix="v"))
        self.api_key = "sk-ui-fast-" + secrets.token_hex(12)
        self.slow_key = "sk-ui-slow-" + secrets.token_hex(12)
        self.private_key = "sk-ui-private-" + secrets.token_hex(12)
        self.header_secret = "hdr-" + secrets.token_hex(12)
        self.passwords = {name: "pw-" + secrets.token_hex(8) for name in USERS}
        self.fast = EmulatorServer(EmulatorConfig(api_key=self.api_key, speed=40, seed=7))
        self.slow = EmulatorServer(EmulatorConfig(api_key=self.slow_key, speed=0.02, seed=8))
        self.private = EmulatorServer(EmulatorConfig(api_key=self.private_key, speed=0.05, seed=9))
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.api_server: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    # -- the secrets that must never reach a browser ------------------------------------------------------

    @property
    def secrets(self) -> list[str]:
        return [self.api_key, self.slow_key, self.private_key, self.header_secret]

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FINETUNE_"))}
        fast = {"conn_type": "finetune", "host": self.fast.base_url, "password": self.api_key}
        slow = {
            "conn_type": "finetune",
            "host": self.slow.base_url,
            "password": self.slow_key,
            "extra": {"extra_headers": {"X-Gateway-Secret": self.header_secret}},
        }
        private = {"conn_type": "finetune", "host": self.private.base_url, "password": self.private_key}
        passwords = self.home / "passwords.json"
        passwords.write_text(json.dumps(self.passwords))
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGER,
                # The processes run in a temporary folder: the repository is where ``tests.ui`` is imported from.
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
                "AIRFLOW_CONN_FINETUNE_DEFAULT": json.dumps(fast),
                "AIRFLOW_CONN_FINETUNE_SLOW": json.dumps(slow),
                "AIRFLOW_CONN_FINETUNE_PRIVATE": json.dumps(private),
            }
        )
        return env

    def airflow(self, *args: str, timeout: float = 240) -> None:
        log = self.logs / f"airflow-{args[0]}-{args[1] if len(args) > 1 else ''}.log"
        with log.open("ab") as out:
            result = subprocess.run(
                [str(BIN / "airflow"), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                timeout=timeout,
                check=False,
            )
        if result.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} failed:\n{self.tail(log)}")

    @staticmethod
    def tail(path: Path, lines: int = 40) -> str:
        if not path.exists():
            return f"(no {path.name})"
        text = [line for line in path.read_text(errors="replace").splitlines() if "[http.access]" not in line]
        return "\n".join(text[-lines:])

    def up(self, *, make_jobs: bool = True) -> None:
        self.fast.start()
        self.slow.start()
        self.private.start()
        self.env = self._environment()
        self.airflow("db", "migrate")
        if make_jobs:
            self.airflow("dags", "reserialize")
            self.airflow("dags", "test", self.dag_id, timeout=1800)
            for extra_id in self.extra_dag_ids:
                self.airflow("dags", "test", extra_id, timeout=600)
        self.start_api_server()

    def start_api_server(self) -> None:
        log = (self.logs / "api-server.log").open("ab")
        self.api_server = subprocess.Popen(
            [str(BIN / "airflow"), "api-server", "--port", str(self.api_port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.root,
            start_new_session=True,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            code = self.api_server.poll()
            if code is not None:
                raise AssertionError(f"api-server exited with {code}:\n{self.tail(self.logs / 'api-server.log')}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"api-server did not answer:\n{self.tail(self.logs / 'api-server.log')}")
            time.sleep(0.5)

    def down(self) -> None:
        if self.api_server is not None and self.api_server.poll() is None:
            self.api_server.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.api_server.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.api_server.pid, signal.SIGKILL)
            self.api_server.wait(timeout=10)
        self.fast.stop()
        self.slow.stop()
        self.private.stop()

    # -- users ---------------------------------------------------------------------------------------------

    def token(self, user: str) -> str:
        response = httpx.post(
            f"{self.url}/auth/token", json={"username": user, "password": self.passwords[user]}, timeout=30
        )
        assert response.status_code in (200, 201), response.text
        return str(response.json()["access_token"])

    def client(self, user: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def emulator_get(self, slow: bool, path: str, *, private: bool = False, **params: Any) -> Any:
        server, key = (self.slow, self.slow_key) if slow else (self.fast, self.api_key)
        if private:
            server, key = self.private, self.private_key
        response = httpx.get(
            server.base_url + path, params=params, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        response.raise_for_status()
        return response.json()

    def result_steps(self, job_id: str) -> list[int]:
        """The steps of the rows of the job's result file, read from the service itself."""
        (file_id,) = self.emulator_get(False, f"/fine_tuning/jobs/{job_id}")["result_files"]
        response = httpx.get(
            f"{self.fast.base_url}/files/{file_id}/content",
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=30,
        )
        response.raise_for_status()
        return [int(line.split(",")[0]) for line in response.text.splitlines()[1:] if line]

    def metric_steps(self, job_id: str) -> set[int]:
        """The steps of the job's metrics events, read from the service itself."""
        steps: set[int] = set()
        after = None
        while True:
            page = self.emulator_get(False, f"/fine_tuning/jobs/{job_id}/events", limit=100, after=after)
            for event in page["data"]:
                if event.get("type") == "metrics":
                    steps.add(event["data"]["step"])
            if not page.get("has_more") or not page["data"]:
                return steps
            after = page["data"][-1]["id"]
