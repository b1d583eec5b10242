"""The Fine-tuning page with many jobs: how fast its list answers, and how many requests it sends to the service.

Not a test: it prints figures. It makes the jobs as a deployment would (one ``airflow dags test`` run of a
mapped create task on the emulator), starts a real api-server with the plugin, then opens the list as a
signed-in user: once cold (nothing known of the jobs yet), then warm, and counts the emulator's requests for
each. Run it with::

    .venv/bin/python benchmarks/bench_ui.py --jobs 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.ui.harness import UIDeployment

DAG = Path(__file__).parent / "bench_ui_dag.py"


def requests_served(ui: UIDeployment) -> int:
    root = ui.fast.base_url.removesuffix("/v1")
    counters = httpx.get(f"{root}/_emulator/counters", headers={"Authorization": f"Bearer {ui.api_key}"}).json()
    return sum(int(n) for n in counters["requests"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    os.environ["FINETUNE_BENCH_JOBS"] = str(args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        ui = UIDeployment(Path(tmp), dag_file=DAG, dag_id="finetune_ui_bench")
        try:
            started = time.perf_counter()
            ui.up()
            print(f"made {args.jobs} jobs and started the api-server in {time.perf_counter() - started:.0f} s")
            with ui.client("viewer") as api:
                figures = []
                for label in ["cold", *["warm"] * args.repeat]:
                    before = requests_served(ui)
                    t0 = time.perf_counter()
                    response = api.get("/finetune/api/jobs", params={"limit": 25})
                    elapsed = time.perf_counter() - t0
                    response.raise_for_status()
                    body = response.json()
                    assert body["total"] == args.jobs, body["total"]
                    figures.append((label, elapsed, requests_served(ui) - before))
                    time.sleep(0.3)
            cold = figures[0]
            warm = [f[1] for f in figures[1:]]
            print(f"jobs listed: {args.jobs} (first page of 25)")
            print(f"cold open: {cold[1] * 1000:.0f} ms, {cold[2]} requests to the service")
            print(
                f"warm opens ({args.repeat}): median {statistics.median(warm) * 1000:.0f} ms, "
                f"max {max(warm) * 1000:.0f} ms, requests to the service per open: "
                f"{sorted({f[2] for f in figures[1:]})}"
            )
        finally:
            ui.down()


if __name__ == "__main__":
    main()
