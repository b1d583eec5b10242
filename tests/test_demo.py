"""``make demo`` works: the retraining example runs end to end against the emulator and says what it made.

It runs in an Airflow home of its own, whatever Airflow the caller's shell points at, and its lines stay
readable.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.test_isolation import fingerprint, user_airflow

REPO = Path(__file__).resolve().parents[1]


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("finetune_demo", REPO / "scripts" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = load_demo()


def test_a_short_line_is_kept_as_it_is() -> None:
    assert demo.shorten("step 10/120 train_loss=1.2", 40) == "step 10/120 train_loss=1.2"
    assert demo.shorten("x" * 40, 40) == "x" * 40


def test_a_long_line_is_cut_at_a_word_with_a_mark() -> None:
    text = "Job ftjob-abc succeeded: " + " ".join(f"word{i}" for i in range(60))
    short = demo.shorten(text, 80)
    assert len(short) <= 80
    assert short.endswith(" …")
    kept = short.removesuffix(" …")
    assert text.startswith(kept)
    assert text[len(kept)] == " "  # the cut falls between two words, not inside one
    assert kept.split()[-1] in text.split()


def test_a_long_word_is_cut_with_a_mark() -> None:
    text = "model " + "a" * 300
    short = demo.shorten(text, 50)
    assert len(short) == 50
    assert short.endswith("…")
    assert text.startswith(short[:-1])


def test_shown_lines_are_shortened_not_cut_mid_word() -> None:
    message = "Job ftjob-1 " + " ".join(f"token{i}" for i in range(100))
    line = f"2025-01-01T00:00:00Z [info     ] {message} [airflow_provider_finetune.operators.finetune]"
    shown = demo._shown(line)
    assert shown is not None
    assert len(shown) <= demo.WIDTH + 2
    assert shown.endswith("…")
    assert shown.strip().removesuffix(" …").split()[-1] in message.split()


def test_the_default_log_is_ignored_by_git() -> None:
    default = Path(demo.DEFAULT_LOG)
    assert default.is_absolute()
    assert default.is_relative_to(REPO)
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", str(default)], cwd=REPO, capture_output=True, check=False
    )
    assert ignored.returncode == 0, f"{default} is not ignored by git"


@pytest.mark.integration
def test_demo_runs_the_retraining_dag_end_to_end(tmp_path: Path) -> None:
    # A shell that points at the user's own Airflow: the demo must leave it untouched.
    home, user_env = user_airflow(tmp_path)
    before = fingerprint(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--speed", "40", "--log", str(tmp_path / "demo.log")],
        env={**env, **user_env},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert fingerprint(home) == before
    out = done.stdout
    used = re.search(r"Preparing an Airflow home in (\S+) ", out)
    assert used, out[-2000:]
    assert not Path(used.group(1)).is_relative_to(home)
    assert "Pausing task as DEFERRED" in out  # the create task really defers
    assert "running trigger in line" in out  # and the trigger really runs
    assert re.search(r"\[ftjob-\w+\] step \d+/\d+ train_loss=", out)  # with progress lines
    assert re.search(r"DAG run \S+: success in \d+ s", out)
    model = re.search(r"Fine-tuned model: (ft:gpt-4o-mini-2024-07-18:emulator:support-\d{8}:\w+)", out)
    assert model, out[-2000:]
    assert len(re.findall(r"step +\d+  ft:\S+:ckpt-step-\d+", out)) == 3
    assert "valid_loss=" in out
    assert (tmp_path / "demo.log").stat().st_size > 0
