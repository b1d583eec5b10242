"""Import cost of the provider's operators and sensors on top of what a DAG file already pays.

Not a test (pytest does not collect ``bench_*.py``): run it by hand, or with ``make bench-imports``.

    .venv/bin/python benchmarks/bench_imports.py --runs 5

A DAG file imports ``airflow.sdk`` anyway; what a provider adds to every parse of the file is the import of
its own modules after that. For each module below, in ``--runs`` fresh interpreters each, the benchmark
imports ``airflow.sdk`` (not counted), then times ``import <module>`` with ``time.perf_counter`` and notes
which modules that import loaded; the best (lowest) run is the figure, the median is shown beside it. One
more fresh interpreter per module runs with ``python -X importtime`` to name the modules that cost the most.

The modules: ``airflow_provider_finetune.operators.finetune``, ``airflow_provider_finetune.sensors.finetune``,
every module under ``operators/`` and ``sensors/`` imported together (bytecode cached by a first run, as in a
deployment) and, for comparison, ``airflow.providers.openai.operators.openai`` (install it for the benchmark with
``.venv/bin/uv pip install --python .venv/bin/python apache-airflow-providers-openai``; ``make bench-imports``
does). The target: every operators and sensors module together adds less than 20 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "airflow_provider_finetune"


def dag_facing_modules() -> tuple[str, ...]:
    """What a DAG file may import: every module that defines an operator or a sensor (as the provider lists them
    to Airflow), and the public module the README imports them from. Modules loaded only on demand (the OpenLineage
    facets, when a listener asks for lineage) are not among them."""
    sys.path.insert(0, str(PACKAGE_DIR.parent))
    from airflow_provider_finetune import get_provider_info

    info = get_provider_info()
    listed = [module for kind in ("operators", "sensors") for entry in info[kind] for module in entry["python-modules"]]
    return tuple(dict.fromkeys(["airflow_provider_finetune.operators.finetune", *listed]))


#: Every operators and sensors module, imported together in one interpreter (what the target is about).
ALL = "every operator and sensor module"
PROVIDER_MODULES = ("airflow_provider_finetune.operators.finetune", "airflow_provider_finetune.sensors.finetune", ALL)
OPENAI_MODULE = "airflow.providers.openai.operators.openai"
TARGET_MS = 20.0
#: Modules worth naming when an import pulls them in.
NOTABLE = (
    "httpx",
    "pydantic",
    "openai",
    "airflow_provider_finetune.models",
    "airflow_provider_finetune.hooks.finetune",
)
MARKER = "--- bench_imports: base imported ---"

TIMED = """
import json, sys, time
t = time.perf_counter()
import airflow.sdk
base = time.perf_counter() - t
before = set(sys.modules)
t = time.perf_counter()
import {module}
added = time.perf_counter() - t
new = sorted(set(sys.modules) - before)
print(json.dumps({{"base_s": base, "added_s": added, "new_modules": new}}))
"""

PROFILED = """
import sys
import airflow.sdk
sys.stderr.write({marker!r} + "\\n")
sys.stderr.flush()
import {module}
"""


#: The interpreters' environment: bytecode is written (to a folder of the benchmark's own, not the tree) and read
#: back, as in a deployment, whatever the caller's PYTHONDONTWRITEBYTECODE says.
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="bench-imports-pycache-")


def _statement(module: str) -> str:
    return ", ".join(dag_facing_modules()) if module == ALL else module


def timed_import(module: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", TIMED.format(module=_statement(module))],
        capture_output=True,
        text=True,
        check=False,
        env=ENV,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def heaviest(module: str, top: int) -> list[dict[str, Any]]:
    """The modules with the largest cumulative import time among those ``import module`` loaded."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROFILED.format(marker=MARKER, module=_statement(module))],
        capture_output=True,
        text=True,
        check=False,
        env=ENV,
    )
    lines = out.stderr.split(MARKER, 1)[-1].splitlines()
    rows: list[dict[str, Any]] = []
    for line in lines:
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3:
            continue
        self_us, cumulative_us, name = (part.strip() for part in parts)
        if not self_us.isdigit():
            continue
        rows.append({"module": name, "self_ms": int(self_us) / 1000, "cumulative_ms": int(cumulative_us) / 1000})
    rows.sort(key=lambda row: row["cumulative_ms"], reverse=True)
    return rows[:top]


def measure(module: str, runs: int, top: int) -> dict[str, Any]:
    samples = [timed_import(module) for _ in range(runs)]
    added = [s["added_s"] * 1000 for s in samples]
    base = [s["base_s"] * 1000 for s in samples]
    new = samples[0]["new_modules"]
    return {
        "module": module,
        "added_ms_best": round(min(added), 2),
        "added_ms_median": round(statistics.median(added), 2),
        "airflow_sdk_ms_best": round(min(base), 1),
        "modules_loaded": len(new),
        "notable_modules_loaded": [m for m in new if m in NOTABLE],
        "heaviest": heaviest(module, top),
        "runs": runs,
    }


def installed(module: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"],
        capture_output=True,
        check=False,
    )
    return out.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters per module (default: %(default)s)")
    parser.add_argument("--top", type=int, default=5, help="heaviest modules to name (default: %(default)s)")
    args = parser.parse_args()

    timed_import(ALL)  # writes the bytecode of every module, as a deployment's first parse does
    results = [measure(module, args.runs, args.top) for module in PROVIDER_MODULES]
    if installed(OPENAI_MODULE):
        results.append(measure(OPENAI_MODULE, args.runs, args.top))
    else:
        print(
            f"{OPENAI_MODULE} is not installed: .venv/bin/uv pip install --python .venv/bin/python "
            "apache-airflow-providers-openai",
            file=sys.stderr,
        )
    for result in results:
        print(json.dumps(result))

    print()
    print(f"{'module':<46} {'added ms (best)':>15} {'median':>8} {'modules':>8}  notable")
    for result in results:
        print(
            f"{result['module']:<46} {result['added_ms_best']:>15.2f} {result['added_ms_median']:>8.2f} "
            f"{result['modules_loaded']:>8}  {', '.join(result['notable_modules_loaded']) or '-'}"
        )
    print(f"(on top of import airflow.sdk: {min(r['airflow_sdk_ms_best'] for r in results):.0f} ms at best)")
    print()
    for result in results:
        if result["module"] in PROVIDER_MODULES:
            verdict = "PASS" if result["added_ms_best"] < TARGET_MS else "FAIL"
            print(f"{verdict}  {result['module']} adds {result['added_ms_best']:.2f} ms (< {TARGET_MS:g} ms)")
    print(f"\ncommand: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
