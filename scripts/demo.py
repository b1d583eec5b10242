"""``make demo``: the periodic-retraining example DAG, end to end, against the local emulator.

No API key and no bill: the demo starts the emulator on a free loopback port, points the
``finetune_default`` connection at it, prepares a throw-away Airflow home (metadata database, DAGs
serialized), runs ``example_finetune_retraining`` with ``dag.test()`` (the create task defers and the
trigger runs), shows the interesting lines as they come, then prints the fine-tuned model and the
checkpoint metrics, and stops the emulator. The whole Airflow log is kept in ``.demo/demo.log`` (ignored by
git).

The demo's Airflow is its own, whatever Airflow the caller's shell points at: every inherited Airflow
setting (``AIRFLOW_HOME``, ``AIRFLOW_CONFIG``, ``AIRFLOW__*``, ``AIRFLOW_CONN_*``...) is dropped before anything
starts, so the caller's metadata database, DAGs and connections are neither read nor written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Under a folder that git ignores, so that a demo leaves the work tree clean.
DEFAULT_LOG = REPO / ".demo" / "demo.log"
# The longest line the demo prints (the log keeps every line whole).
WIDTH = 200
DAG_ID = "example_finetune_retraining"
API_KEY = "sk-demo-local-emulator"
SUMMARY = "DEMO-SUMMARY "
# Lines of the Airflow log worth showing: what the provider and the example tasks say, and the deferral.
SHOW = re.compile(
    r"FineTuning\w+(Operator|Trigger|Sensor)|example_finetune|Pausing task as DEFERRED|running trigger in line"
    r"|Trigger completed|\[DAG TEST\] end task"
)
MESSAGE = re.compile(r"^\S+ \[\s*\w+\s*\] (?P<message>.*?)\s+\[(?P<logger>[^\]\s]+)\](?: [^\[\]]*)?$")
STEP = re.compile(r"\] step (\d+)/(\d+)")
# A multi-line record: its first line has the time and level, its last the logger, the others neither.
CONTINUED = re.compile(r"^\[[\w.:-]+\] ")
START = re.compile(r"^\S+ \[\s*\w+\s*\] ")
END = re.compile(r"\s+\[[^\]\s]+\](?: [^\[\]]*)?$")
HEAD = re.compile(r"\] \d+ events( \(\d+ earlier not shown\))?:$")


def main() -> int:
    """Run the demo; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=4.0, help="emulator speed (1.0: a job takes about a minute)")
    parser.add_argument(
        "--log", default=str(DEFAULT_LOG), help="where the whole Airflow log goes (default: %(default)s)"
    )
    parser.add_argument("--run-dag", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_dag:
        return _run_dag()
    _forget_callers_airflow(os.environ)
    return _demo(args.speed, Path(args.log))


def _forget_callers_airflow(environ: MutableMapping[str, str]) -> None:
    """Drop every Airflow setting inherited from the caller: the demo's Airflow is its own."""
    for name in [name for name in environ if name.startswith(("AIRFLOW_", "_AIRFLOW"))]:
        del environ[name]


def _demo(speed: float, log_path: Path) -> int:
    from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer

    home = Path(tempfile.mkdtemp(prefix="finetune-demo-home-"))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "example_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "FINETUNE_EXAMPLE_POLL_INTERVAL": "1",
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    started = time.monotonic()
    print(f"Starting the fine-tuning API emulator (speed {speed:g}) ...", flush=True)
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, speed=speed)) as server:
        print(f"  emulator at {server.base_url}", flush=True)
        env["AIRFLOW_CONN_FINETUNE_DEFAULT"] = json.dumps(
            {"conn_type": "finetune", "host": server.base_url, "password": API_KEY}
        )
        print(f"Preparing an Airflow home in {home} (metadata database, DAGs) ...", flush=True)
        for command in (["db", "migrate"], ["dags", "reserialize"]):
            done = subprocess.run([airflow, *command], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
                return done.returncode
        print(f"Running {DAG_ID} with dag.test() ...\n", flush=True)
        summary = _follow([sys.executable, __file__, "--run-dag"], env, log_path)
    print(f"\nEmulator stopped. The whole Airflow log is in {log_path}.")
    if summary is None or summary.get("state") != "success":
        print(f"The DAG run did not succeed: {summary}", file=sys.stderr)
        return 1
    _print_summary(summary, time.monotonic() - started)
    return 0


def _follow(command: list[str], env: dict[str, str], log_path: Path) -> dict[str, Any] | None:
    """Run the DAG in a child process, echo the interesting lines, and return its summary."""
    summary: dict[str, Any] | None = None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        log_path.open("w") as log,
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child,
    ):
        assert child.stdout is not None
        record: list[str] = []  # a log record's lines: a poll's progress lines come as one record
        for line in child.stdout:
            log.write(line)
            if line.startswith(SUMMARY):
                summary = json.loads(line[len(SUMMARY) :])
            elif record and CONTINUED.match(line):
                record.append(line)
            else:
                _echo(record)
                record = [line]
        _echo(record)
    return summary


def _echo(record: list[str]) -> None:
    """Print the lines worth showing of one log record (of one line, or of a poll's progress lines)."""
    if not record or not SHOW.search(record[-1] if len(record) > 1 else record[0]):
        return
    if len(record) == 1:
        texts = [record[0]]
    else:
        first, last = START.sub("", record[0]), END.sub("", record[-1].rstrip())
        texts = [first, *record[1:-1], last]
    for text in texts:
        if not HEAD.search(text) and (shown := _shown(text)):
            print(shown, flush=True)


def _shown(line: str) -> str | None:
    match = MESSAGE.match(line)
    text = match.group("message") if match else line.strip()
    step = STEP.search(text)
    if step and int(step.group(1)) % 10 and step.group(1) != step.group(2):
        return None  # every tenth training step is enough to watch it learn
    return f"  {shorten(text)}"


def shorten(text: str, width: int = WIDTH) -> str:
    """``text`` if it fits in ``width`` characters, else cut at the last word that fits, with `` …`` after it.

    A single word too long to cut between words (a long token or JSON) is cut inside, still marked.
    """
    if len(text) <= width:
        return text
    room = width - 2  # for " …"
    cut = text.rfind(" ", 0, room + 1)
    # A cut that would keep less than half the room loses too much: cut the long word instead.
    if cut < room // 2:
        return text[: width - 1] + "…"
    return text[:cut].rstrip() + " …"


def _run_dag() -> int:
    """In the child: run the DAG with dag.test() and print a one-line JSON summary."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag(DAG_ID)
    run = dag.test()
    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=DAG_ID, run_id=run.run_id).all()
        values = {(row.task_id, row.key): XComModel.deserialize_value(row) for row in rows}
    summary = {"state": str(run.state), "run_id": run.run_id, "xcoms": [[t, k, v] for (t, k), v in values.items()]}
    print(SUMMARY + json.dumps(summary, default=str), flush=True)
    return 0 if str(run.state) == "success" else 1


def _print_summary(summary: dict[str, Any], seconds: float) -> None:
    by_key: dict[str, Any] = {}
    for _task, key, value in summary["xcoms"]:
        by_key.setdefault(key, value)
    model = next((v for t, k, v in summary["xcoms"] if k == "fine_tuned_model"), None)
    checkpoints = by_key.get("checkpoints") or []
    print("\n" + "=" * 78)
    print(f"DAG run {summary['run_id']}: {summary['state']} in {seconds:.0f} s")
    print(f"Fine-tuned model: {model}")
    print("Checkpoints:")
    for checkpoint in checkpoints:
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(checkpoint["metrics"].items()) if k != "step")
        print(f"  step {checkpoint['step_number']:>4}  {checkpoint['fine_tuned_model_checkpoint']}")
        print(f"             {metrics}")
    for task_id, key, value in summary["xcoms"]:
        if key == "return_value" and task_id not in ("fine_tune",) and isinstance(value, dict | str | float):
            print(shorten(f"{task_id}: {json.dumps(value, default=str)}"))
    print("=" * 78)


if __name__ == "__main__":
    sys.exit(main())
