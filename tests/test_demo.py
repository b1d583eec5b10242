"""``make demo`` works: the retraining example runs end to end against the emulator and says what it made."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_demo_runs_the_retraining_dag_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--speed", "40", "--log", str(tmp_path / "demo.log")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "Pausing task as DEFERRED" in out  # the create task really defers
    assert "running trigger in line" in out  # and the trigger really runs
    assert re.search(r"\[ftjob-\w+\] step \d+/\d+ train_loss=", out)  # with progress lines
    assert re.search(r"DAG run \S+: success in \d+ s", out)
    model = re.search(r"Fine-tuned model: (ft:gpt-4o-mini-2024-07-18:emulator:support-\d{8}:\w+)", out)
    assert model, out[-2000:]
    assert len(re.findall(r"step +\d+  ft:\S+:ckpt-step-\d+", out)) == 3
    assert "valid_loss=" in out
    assert (tmp_path / "demo.log").stat().st_size > 0
