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
from airflow_provider_finetune.emulator.trainer import durations


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
    assert f"Together AI's dialect at http://127.0.0.1:{port}/together/v1" in err
    assert key not in out + err


def test_help_names_the_admin_endpoints_their_key_and_the_training_cap() -> None:
    # The command, as a user runs it (the console script's module), not the parser object.
    done = subprocess.run(
        [sys.executable, "-m", "airflow_provider_finetune.emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(done.stdout.split())
    for endpoint in (
        "GET /_emulator/health",
        "GET /_emulator/counters",
        "POST /_emulator/reset",
        "GET /_emulator/faults",
        "POST /_emulator/faults",
    ):
        assert endpoint in text
    assert "health needs no key" in text
    assert "the API key (--api-key)" in text
    assert "--max-training-seconds" in text
    assert "120 s" in text
    assert "whatever the data size" in text


def test_the_training_cap_is_a_flag() -> None:
    assert config_from_args(build_parser().parse_args([])).timings.max_running == 120.0
    config = config_from_args(build_parser().parse_args(["--max-training-seconds", "30", "--speed", "10"]))
    assert config.timings.max_running == 30.0
    assert config.timings.min_running == 30.0  # the floor never exceeds the cap
    # A job of 10,000 steps trains for the cap (in simulated seconds), scaled by the speed.
    assert durations(config.timings, config.speed, 10_000)["running"] == 3.0
    short = config_from_args(build_parser().parse_args(["--max-training-seconds", "10"]))
    assert short.timings.min_running == 10.0
    assert durations(short.timings, short.speed, 10_000)["running"] == 10.0


def test_a_training_cap_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    from airflow_provider_finetune.emulator.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["--max-training-seconds", "0"])
    assert exited.value.code == 2
    assert "max_running must be greater than 0" in capsys.readouterr().err
