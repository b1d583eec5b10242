"""Benchmark: N deferred job waits of the create operator's trigger in one real ``airflow triggerer`` process.

Not a test: prints figures. For each N it builds a deployment of its own in a temporary folder (an AIRFLOW_HOME
with SQLite, never the caller's), starts the emulator and ``airflow triggerer`` with the helpers of
tests/deployment/_deploy.py, and then:

1. measures the triggerer's memory with no trigger (RSS of the triggerer process and of its trigger-runner
   child, sampled for a while and taken at the median);
2. creates N jobs on the emulator and defers N task instances on them, as a deferrable
   :class:`~airflow_provider_finetune.operators.finetune.FineTuningJobOperator` does: one mapped create task
   of a serialized DAG, a :class:`~airflow.models.trigger.Trigger` row each (``Trigger.from_object`` of the
   operator's :class:`~airflow_provider_finetune.triggers.finetune.FineTuningJobTrigger`) and its task
   instance ``deferred`` on it. The triggerer then claims, builds and runs them exactly as in production
   (the N workers that would have created the jobs are left out: they are not the triggerer's load);
3. measures the memory again while every wait is running, then lets the jobs end and waits for every trigger
   to fire (each task instance back to ``scheduled``);
4. counts the triggerer's own "Triggerer's async thread was blocked for ..." lines (Airflow's watchdog, which
   wakes every 0.1 s and reports a wake-up later than ``[triggerer] blocked_main_thread_warning_threshold``,
   0.2 s) while the waits start, run and fire. The target is none.

With ``--gc-log`` every process of the deployment times its full garbage collections (a ``sitecustomize`` in
the run's folder adds a ``gc.callbacks`` entry that appends each one to ``gc-<pid>.log`` there): the report
then gives, per phase, the trigger runner's full collections and the longest, beside the warnings. A
collection stops the event loop for its whole length, whatever the triggers do. ``--gc-freeze`` shows what a
deployment may choose (the provider never does): the triggerer's supervisor calls ``gc.freeze()`` as it forks
the trigger runner (``os.register_at_fork``, from the same ``sitecustomize``), as Airflow's scheduler freezes
before it forks, so that the runner's full collections walk only what it made since.

    python benchmarks/bench_triggerer.py --n 200 1000

(``make bench-triggerer`` runs it at 1,000.) Each run takes some minutes: the jobs are made to last long enough
for every wait to be running together for ``--steady`` seconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: tests.deployment is imported from the repository
    sys.path.insert(0, str(REPO))

from tests.deployment._deploy import BIN, ProcessSet, airflow_environment, free_port  # noqa: E402

API_KEY = "sk-bench-triggerer"
DAG_ID = "bench_triggerer"
TASK_ID = "fine_tune"
MODEL = "gpt-4o-mini-2024-07-18"
#: The triggerer's watchdog line (airflow/jobs/triggerer_job_runner.py, ``block_watchdog``).
BLOCKED = re.compile(r"Triggerer's async thread was blocked for ([0-9.]+) seconds")
STARTUP_TIMEOUT = 180.0
#: Task instances deferred per transaction.
DEFER_BATCH = 25

DAG_FILE = '''\
"""The benchmark's create task: deferrable, mapped over {n} jobs (its task instances are deferred directly)."""

import pendulum
from airflow.sdk import DAG

from airflow_provider_finetune.operators.finetune import FineTuningJobOperator

with DAG(dag_id="{dag_id}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):
    FineTuningJobOperator.partial(
        task_id="{task_id}", model="{model}", deferrable=True, poll_interval={poll_interval}
    ).expand(training_file=["file-bench"] * {n})
'''


@dataclass
class Figures:
    """What one run measured."""

    n: int
    baseline_rss: dict[str, float] = field(default_factory=dict)
    loaded_rss: dict[str, float] = field(default_factory=dict)
    claim_seconds: float = 0.0
    fire_seconds: float = 0.0
    fired: int = 0
    blocked: dict[str, list[float]] = field(default_factory=dict)
    emulator_requests: dict[str, int] = field(default_factory=dict)
    #: The trigger runner's full collections per phase (seconds each), with --gc-log.
    full_collections: dict[str, list[float]] = field(default_factory=dict)

    def per_trigger_kib(self, part: str) -> float:
        return (self.loaded_rss[part] - self.baseline_rss[part]) / self.n / 1024


class TriggererBench(ProcessSet):
    """The emulator and one ``airflow triggerer`` in an AIRFLOW_HOME of their own under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        n: int,
        poll_interval: float,
        speed: float,
        asyncio_debug: bool,
        gc_log: bool,
        gc_freeze: bool,
    ) -> None:
        super().__init__(root)
        self.n = n
        self.poll_interval = poll_interval
        self.speed = speed
        self.home = root / "airflow-home"
        self.dags = root / "dags"
        for folder in (self.home, self.dags):
            folder.mkdir(parents=True)
        (self.dags / f"{DAG_ID}.py").write_text(
            DAG_FILE.format(n=n, dag_id=DAG_ID, task_id=TASK_ID, model=MODEL, poll_interval=poll_interval)
        )
        self.emulator_url = f"http://127.0.0.1:{free_port()}"
        api_port = free_port()  # no api-server runs: the triggerer talks to the database in-process
        self.env = airflow_environment(
            home=self.home,
            dags=self.dags,
            api_url=f"http://127.0.0.1:{api_port}",
            api_port=api_port,
            emulator_url=self.emulator_url,
            api_key=API_KEY,
        )
        self.env.update(
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__TRIGGERER__CAPACITY": str(max(1000, n)),
                # SQLite lets one writer in at a time: the triggerer waits for the deferring transactions (and
                # they for it) up to a minute, instead of the driver's 5 s, before it gives up.
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "bench_sqlite.CONNECT_ARGS",
                "PYTHONPATH": f"{REPO}:{root}",
            }
        )
        (root / "bench_sqlite.py").write_text('CONNECT_ARGS = {"timeout": 60}\n')
        if gc_log or gc_freeze:
            (root / "sitecustomize.py").write_text(
                (GC_LOG.format(folder=str(root)) if gc_log else "") + (GC_FREEZE if gc_freeze else "")
            )
        if asyncio_debug:  # asyncio then logs each callback that holds the loop over 0.1 s, and what it ran
            self.env["PYTHONASYNCIODEBUG"] = "1"
        self.emulator = httpx.Client(
            base_url=self.emulator_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
        )

    # -- set-up --------------------------------------------------------------------------------------------

    def up(self) -> None:
        self.start(
            "emulator",
            str(BIN / "finetune-emulator"),
            "--port",
            self.emulator_url.rsplit(":", 1)[1],
            "--speed",
            str(self.speed),
            "--seed",
            "11",
            "--api-key",
            API_KEY,
            "--log-level",
            "warning",
        )
        self.run_to_end("db-migrate", str(BIN / "airflow"), "db", "migrate", timeout=600)
        self.run_to_end("reserialize", str(BIN / "airflow"), "dags", "reserialize", timeout=600)
        self.start_airflow("triggerer", "triggerer")
        self.wait_until("the emulator to answer", self._emulator_healthy, STARTUP_TIMEOUT)
        self.wait_until("the triggerer's runner to start", lambda: len(self.triggerer_processes()) >= 2, 120)

    def _emulator_healthy(self) -> bool:
        try:
            return self.emulator.get("/_emulator/health").status_code == 200
        except httpx.TransportError:
            return False

    def create_jobs(self) -> list[str]:
        lines = "\n".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]})
            for i in range(12)
        )
        upload = self.emulator.post(
            "/v1/files", files={"file": ("train.jsonl", lines.encode())}, data={"purpose": "fine-tune"}
        )
        upload.raise_for_status()
        file_id = upload.json()["id"]
        jobs = []
        for i in range(self.n):
            made = self.emulator.post(
                "/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": file_id, "suffix": f"b{i}"}
            )
            made.raise_for_status()
            jobs.append(made.json()["id"])
        return jobs

    def defer(self, job_ids: list[str]) -> None:
        """Defer N task instances on the jobs, in the deployment's own database (a subprocess in its env)."""
        jobs_file = self.root / "jobs.json"
        jobs_file.write_text(json.dumps(job_ids))
        self.run_to_end(
            "defer", sys.executable, __file__, "defer", str(jobs_file), str(self.poll_interval), timeout=600
        )

    # -- what the triggerer does ---------------------------------------------------------------------------

    def triggerer_processes(self) -> list[psutil.Process]:
        parent = psutil.Process(self.processes["triggerer"].popen.pid)
        return [parent, *parent.children(recursive=True)]

    def rss(self, seconds: float, every: float = 1.0) -> dict[str, float]:
        """Median RSS over ``seconds``: the supervisor, the trigger runner (its child), and both."""
        samples: dict[str, list[float]] = {"supervisor": [], "runner": [], "total": []}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_alive()
            procs = self.triggerer_processes()
            sizes = [p.memory_info().rss for p in procs]
            samples["supervisor"].append(sizes[0])
            samples["runner"].append(sum(sizes[1:]))
            samples["total"].append(sum(sizes))
            time.sleep(every)
        return {k: statistics.median(v) for k, v in samples.items()}

    def log_text(self) -> str:
        return self.processes["triggerer"].log.read_text(errors="replace")

    def blocked(self, since: int) -> list[float]:
        """The blocked-loop durations the triggerer logged after byte ``since`` of its log."""
        return [float(m.group(1)) for m in BLOCKED.finditer(self.log_text()[since:])]

    def task_states(self) -> dict[str, int]:
        out = subprocess.run(
            [sys.executable, __file__, "states"], env=self.env, capture_output=True, text=True, check=True, timeout=120
        )
        return {k: int(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}

    def running_triggers(self) -> int:
        """Triggers started so far: each writes its task instance's trigger log, "trigger ... starting" first."""
        return len(list((self.home / "logs" / f"dag_id={DAG_ID}").glob("run_id=*/task_id=*/map_index=*/*.trigger.*")))

    def full_collections(self, pid: int, since: float, until: float) -> list[float]:
        """The full collections process ``pid`` logged between two wall-clock times (with --gc-log)."""
        log = self.root / f"gc-{pid}.log"
        if not log.exists():
            return []
        found = []
        for line in log.read_text().splitlines():
            started, seconds = map(float, line.split())
            if since <= started < until:
                found.append(seconds)
        return found

    def runner_pid(self) -> int:
        return self.triggerer_processes()[-1].pid

    def counters(self) -> dict[str, int]:
        response = self.emulator.get("/_emulator/counters")
        response.raise_for_status()
        data = response.json()
        return {str(k): int(v) for k, v in (data.get("requests", data)).items() if isinstance(v, int)}


def run(
    n: int,
    *,
    poll_interval: float,
    speed: float,
    steady: float,
    keep: bool,
    asyncio_debug: bool,
    gc_log: bool,
    gc_freeze: bool,
) -> Figures:
    root = Path(tempfile.mkdtemp(prefix=f"bench-triggerer-{n}-"))
    bench = TriggererBench(
        root,
        n=n,
        poll_interval=poll_interval,
        speed=speed,
        asyncio_debug=asyncio_debug,
        gc_log=gc_log,
        gc_freeze=gc_freeze,
    )
    figures = Figures(n)
    phases: list[tuple[str, float]] = []  # (phase, wall-clock start)
    try:
        bench.up()
        time.sleep(5)
        figures.baseline_rss = bench.rss(15)
        jobs = bench.create_jobs()
        mark = len(bench.log_text())
        began = time.monotonic()
        phases.append(("start", time.time()))
        bench.defer(jobs)
        bench.wait_until(f"the triggerer to start {n} triggers", lambda: bench.running_triggers() >= n, 600, interval=1)
        figures.claim_seconds = time.monotonic() - began
        figures.blocked["start"] = bench.blocked(mark)
        mark = len(bench.log_text())
        phases.append(("running", time.time()))
        figures.loaded_rss = bench.rss(steady)
        states = bench.task_states()
        if states.get("deferred", 0) != n:
            print(f"  warning: not every wait was still running when measured: {states}", flush=True)
        figures.blocked["running"] = bench.blocked(mark)
        mark = len(bench.log_text())
        ended = time.monotonic()
        phases.append(("fire", time.time()))
        bench.wait_until(
            f"every one of {n} triggers to fire",
            lambda: bench.task_states().get("deferred", 0) == 0,
            1800,
            interval=5,
        )
        figures.fire_seconds = time.monotonic() - ended
        figures.fired = bench.task_states().get("scheduled", 0)
        time.sleep(3)
        figures.blocked["fire"] = bench.blocked(mark)
        figures.emulator_requests = bench.counters()
        if gc_log:
            runner, bounds = bench.runner_pid(), [*phases, ("", time.time())]
            for (phase, since), (_, until) in itertools.pairwise(bounds):
                figures.full_collections[phase] = bench.full_collections(runner, since, until)
    except BaseException:
        print("\n".join(bench.process_tails(60)), file=sys.stderr)
        raise
    finally:
        bench.stop_all()
        bench.emulator.close()
        if keep:
            print(f"  kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return figures


def report(f: Figures, poll_interval: float) -> None:
    mib = 1024 * 1024
    print(f"\n== {f.n} job waits in one triggerer (poll interval {poll_interval:g} s)")
    for part in ("supervisor", "runner", "total"):
        print(
            f"  RSS {part:10s}: {f.baseline_rss[part] / mib:7.1f} MiB with none, {f.loaded_rss[part] / mib:7.1f} MiB"
            f" with {f.n}: {f.per_trigger_kib(part):6.1f} KiB per trigger"
        )
    print(f"  every trigger started {f.claim_seconds:.1f} s after the task instances were deferred")
    print(f"  {f.fired} of {f.n} fired; the last {f.fire_seconds:.1f} s after the steady window")
    for phase, found in f.blocked.items():
        worst = f", longest {max(found):.2f} s" if found else ""
        print(f"  blocked-loop warnings while the waits {phase:8s}: {len(found)}{worst}")
    for phase, pauses in f.full_collections.items():
        worst = f", longest {max(pauses):.3f} s, {sum(p >= 0.2 for p in pauses)} of 0.2 s or more" if pauses else ""
        print(f"  the runner's full collections while the waits {phase:8s}: {len(pauses)}{worst}")
    if f.emulator_requests:
        print(f"  emulator requests: {json.dumps(f.emulator_requests, sort_keys=True)}")


#: --gc-log: every process of the deployment appends "<wall-clock start> <seconds>" per full collection.
GC_LOG = """\
import gc, os, time

_started = [0.0]


def _timed(phase, info):
    if info["generation"] != 2:
        return
    if phase == "start":
        _started[0] = time.time()
    else:
        with open(os.path.join({folder!r}, "gc-%d.log" % os.getpid()), "a") as log:
            log.write("%.3f %.4f\\n" % (_started[0], time.time() - _started[0]))


gc.callbacks.append(_timed)
"""


#: --gc-freeze: the triggerer's supervisor freezes what it has as it forks the trigger runner (the child).
GC_FREEZE = """\
import gc, os, sys

if sys.argv[1:2] == ["triggerer"]:
    os.register_at_fork(after_in_child=gc.freeze)
"""


# -- the subcommands run in the deployment's environment --------------------------------------------------


def _defer(jobs_file: str, poll_interval: float) -> None:
    """Defer one mapped task instance per job on the operator's trigger (as the execution API does on defer)."""
    from airflow.models.dag_version import DagVersion
    from airflow.models.dagrun import DagRun
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.utils import timezone
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    from airflow_provider_finetune.triggers.finetune import FineTuningJobTrigger

    job_ids = json.loads(Path(jobs_file).read_text())
    with create_session() as session:
        dag = SerializedDagModel.get_dag(DAG_ID, session=session)
        version = DagVersion.get_latest_version(DAG_ID, session=session)
        if dag is None or version is None:
            raise SystemExit(f"{DAG_ID} is not serialized")
        task = dag.get_task(TASK_ID)
        now = timezone.utcnow()
        run = DagRun(
            dag_id=DAG_ID,
            run_id=f"bench__{now.isoformat()}",
            logical_date=now,
            run_after=now,
            start_date=now,
            state=DagRunState.RUNNING,
            run_type=DagRunType.MANUAL,
            triggered_by=DagRunTriggeredByType.TEST,
            data_interval=(now, now),
        )
        session.add(run)
        run_id = run.run_id
    # A transaction per batch, as the workers' defers come: SQLite locks the whole database while one is open,
    # and the triggerer, writing its heartbeat meanwhile, would give up on it.
    for start in range(0, len(job_ids), DEFER_BATCH):
        with create_session() as session:
            for index in range(start, min(start + DEFER_BATCH, len(job_ids))):
                # The trigger as FineTuningJobOperator.execute defers on it (its defaults: no deadline).
                row = Trigger.from_object(FineTuningJobTrigger(job_ids[index], poll_interval=poll_interval))
                session.add(row)
                session.flush()
                ti = TaskInstance(task, dag_version_id=version.id, run_id=run_id, map_index=index)
                ti.state = TaskInstanceState.DEFERRED
                ti.try_number = 1
                ti.start_date = now
                ti.trigger_id = row.id
                ti.next_method = "execute_complete"
                ti.next_kwargs = {}
                session.add(ti)


def _states() -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.state, func.count()).where(TaskInstance.dag_id == DAG_ID).group_by(TaskInstance.state)
        )
        print(json.dumps({str(state): count for state, count in rows}))


def main() -> None:
    if sys.argv[1:2] == ["defer"]:
        _defer(sys.argv[2], float(sys.argv[3]))
        return
    if sys.argv[1:2] == ["states"]:
        _states()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000], help="waits per run (default: 1000)")
    parser.add_argument("--poll-interval", type=float, default=10.0, help="the trigger's poll interval (s)")
    parser.add_argument(
        "--speed",
        type=float,
        default=0.09,
        help="the emulator's speed: 0.09 makes a job last about 10 minutes, longer than 1,000 triggers take to start",
    )
    parser.add_argument("--steady", type=float, default=60.0, help="seconds every wait runs while measured")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (logs) for a look")
    parser.add_argument(
        "--asyncio-debug", action="store_true", help="run the triggerer with PYTHONASYNCIODEBUG=1 (slow callbacks)"
    )
    parser.add_argument(
        "--gc-log", action="store_true", help="time the trigger runner's full garbage collections in each phase"
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="the deployment's choice, shown: gc.freeze() in the trigger runner as the triggerer forks it",
    )
    args = parser.parse_args()
    for n in args.n:
        figures = run(
            n,
            poll_interval=args.poll_interval,
            speed=args.speed,
            steady=args.steady,
            keep=args.keep,
            asyncio_debug=args.asyncio_debug,
            gc_log=args.gc_log,
            gc_freeze=args.gc_freeze,
        )
        report(figures, args.poll_interval)


if __name__ == "__main__":
    main()
