"""The ``finetune-emulator`` command line."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from airflow_provider_finetune.emulator.__main__ import build_parser, config_from_args


def test_arguments_become_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_EMULATOR_API_KEY", "sk-from-env")
    args = build_parser().parse_args(
        [
            "--speed",
            "50",
            "--db",
            "e.db",
            "--seed",
            "3",
            "--error-rate",
            "0.1",
            "--rate-limit-rate",
            "0.2",
            "--retry-after",
            "2",
            "--drop-rate",
            "0.05",
            "--latency",
            "0.01",
            "--fault-match",
            "jobs",
            "--fault-seed",
            "9",
            "--fault-after-processing",
        ]
    )
    config = config_from_args(args)
    assert (config.speed, config.db_path, config.seed, config.api_key) == (50.0, "e.db", 3, "sk-from-env")
    assert config.admin_key is None
    faults = config.faults
    assert (faults.seed, faults.error_rate, faults.rate_limit_rate, faults.retry_after) == (9, 0.1, 0.2, 2.0)
    assert (faults.drop_rate, faults.latency, faults.match, faults.after_processing) == (0.05, 0.01, "jobs", True)


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from airflow_provider_finetune.emulator.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["--error-rate", "0.9", "--drop-rate", "0.9"])
    assert exited.value.code == 2
    assert "at most 1 together" in capsys.readouterr().err


@pytest.mark.integration
def test_the_command_serves_until_interrupted() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = "sk-cli-5ecret"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_finetune.emulator",
            "--port",
            str(port),
            "--speed",
            "100",
            "--api-key",
            key,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_emulator/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.1)
        response = httpx.get(f"http://127.0.0.1:{port}/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert f"serving http://127.0.0.1:{port}/v1" in err
    assert key not in out + err
