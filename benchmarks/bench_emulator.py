"""Benchmark of the fine-tuning API emulator: many concurrent jobs, many requests per second.

Not a test (pytest does not collect ``bench_*.py``): run it by hand.

    .venv/bin/python benchmarks/bench_emulator.py --jobs 1000 --seconds 30

It starts the emulator as a separate process (``python -m airflow_provider_finetune.emulator``: uvicorn,
with uvloop and httptools when installed), uploads one training file, creates ``--jobs`` jobs concurrently
with ``httpx.AsyncClient``, then hammers the emulator for ``--seconds`` from this one process with a mix of
job retrieves (50%), job listings (20%), event listings (20%) and metadata-filtered listings (10%), and
prints the jobs created, requests per second, latency percentiles and the server's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import httpx
import psutil

API_KEY = "sk-bench"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def training_file(examples: int) -> bytes:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "You answer arithmetic questions."},
                    {"role": "user", "content": f"What is {i} + {i}?"},
                    {"role": "assistant", "content": str(2 * i)},
                ]
            }
        )
        for i in range(examples)
    ]
    return ("\n".join(lines) + "\n").encode()


def start_emulator(port: int, speed: float, db: str | None) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "airflow_provider_finetune.emulator",
        "--port",
        str(port),
        "--speed",
        str(speed),
        "--api-key",
        API_KEY,
    ]
    if db:
        command += ["--db", db]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the emulator exited with status {process.returncode}")
        try:
            if httpx.get(url + "/_emulator/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the emulator did not start")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def create_jobs(client: httpx.AsyncClient, file_id: str, count: int, concurrency: int) -> tuple[list[str], float]:
    gate = asyncio.Semaphore(concurrency)

    async def create(index: int) -> str:
        body = {
            "model": "gpt-4o-mini",
            "training_file": file_id,
            "suffix": "bench",
            "metadata": {"bench": "yes", "n": str(index)},
        }
        async with gate:
            response = await client.post("/fine_tuning/jobs", json=body)
        response.raise_for_status()
        return str(response.json()["id"])

    started = time.perf_counter()
    ids = await asyncio.gather(*(create(index) for index in range(count)))
    return list(ids), time.perf_counter() - started


async def hammer(
    client: httpx.AsyncClient, job_ids: list[str], seconds: float, concurrency: int
) -> tuple[list[float], Counter[str], Counter[int], float]:
    latencies: list[float] = []
    kinds: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    deadline = time.perf_counter() + seconds
    rng = random.Random(1)

    async def worker() -> None:
        while time.perf_counter() < deadline:
            draw = rng.random()
            job_id = rng.choice(job_ids)
            if draw < 0.5:
                kind, request = "retrieve", client.get(f"/fine_tuning/jobs/{job_id}")
            elif draw < 0.7:
                kind, request = "list", client.get("/fine_tuning/jobs", params={"limit": 20})
            elif draw < 0.9:
                kind, request = "events", client.get(f"/fine_tuning/jobs/{job_id}/events", params={"limit": 20})
            else:
                params = {"metadata[n]": str(rng.randrange(len(job_ids))), "limit": "1"}
                kind, request = "list_by_metadata", client.get("/fine_tuning/jobs", params=params)
            started = time.perf_counter()
            response = await request
            latencies.append(time.perf_counter() - started)
            kinds[kind] += 1
            statuses[response.status_code] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, kinds, statuses, time.perf_counter() - started


async def job_statuses(client: httpx.AsyncClient) -> Counter[str]:
    seen: Counter[str] = Counter()
    params: dict[str, Any] = {"limit": 100, "metadata[bench]": "yes"}
    while True:
        page = (await client.get("/fine_tuning/jobs", params=params)).json()
        seen.update(job["status"] for job in page["data"])
        if not page["has_more"]:
            return seen
        params["after"] = page["data"][-1]["id"]


async def run(args: argparse.Namespace, base_url: str, server: psutil.Process) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=base_url + "/v1", headers=HEADERS, limits=limits, timeout=60) as client:
        uploaded = await client.post(
            "/files", files={"file": ("bench.jsonl", training_file(args.examples))}, data={"purpose": "fine-tune"}
        )
        uploaded.raise_for_status()
        job_ids, create_seconds = await create_jobs(client, uploaded.json()["id"], args.jobs, args.concurrency)
        await client.post(base_url + "/_emulator/reset")
        cpu_before = server.cpu_times()
        latencies, kinds, statuses, elapsed = await hammer(client, job_ids, args.seconds, args.concurrency)
        cpu_after = server.cpu_times()
        counters = (await client.get(base_url + "/_emulator/counters")).json()
        in_flight = await job_statuses(client)
    server_cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    return {
        "jobs_requested": args.jobs,
        "jobs_created": len(job_ids),
        "create_seconds": round(create_seconds, 2),
        "creates_per_second": round(len(job_ids) / create_seconds, 1),
        "job_statuses_after": dict(in_flight),
        "hammer_seconds": round(elapsed, 2),
        "requests": len(latencies),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "requests_by_kind": dict(kinds),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "server_counted_requests": counters["total_requests"],
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 2),
            "p90": round(percentile(latencies, 0.90) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
            "max": round(max(latencies) * 1000, 2),
            "mean": round(statistics.fmean(latencies) * 1000, 2),
        },
        "server_cpu_share_of_one_core": round(server_cpu / elapsed, 2),
        "server_rss_mb": round(server.memory_info().rss / 1024**2, 1),
    }


def run_loop(main: Any) -> dict[str, Any]:
    """Run the client on uvloop when it is installed: the client, not the server, is the bottleneck."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs to create concurrently (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to hammer (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default: %(default)s)")
    parser.add_argument(
        "--examples", type=int, default=200, help="examples in the training file (default: %(default)s)"
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="emulator speed; at 1.0 jobs run ~2 min (default: %(default)s)"
    )
    parser.add_argument("--db", action="store_true", help="keep the emulator's state in SQLite")
    args = parser.parse_args()

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as workdir:
        process = start_emulator(port, args.speed, os.path.join(workdir, "bench.db") if args.db else None)
        try:
            wait_ready(base_url, process)
            server = psutil.Process(process.pid)
            results = run_loop(run(args, base_url, server))
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
    results["command"] = " ".join([os.path.relpath(sys.executable), *sys.argv])
    results["storage"] = "sqlite" if args.db else "memory"
    results["cpus"] = os.cpu_count()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
