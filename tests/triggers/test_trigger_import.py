"""The triggerer imports a trigger's module in its event loop: every one is light, the hook comes in a thread."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOOK_MODULE = "airflow_provider_finetune.hooks.finetune"

PROBE = """
import asyncio, importlib, json, sys, threading

import airflow_provider_finetune.triggers.finetune as triggers
import airflow_provider_finetune.triggers.quota
import airflow_provider_finetune.triggers.bedrock

heavy = [m for m in ("airflow_provider_finetune.hooks.finetune", "airflow_provider_finetune.models",
                     "airflow_provider_finetune.backends.openai") if m in sys.modules]
imports = []
real = importlib.import_module

def spy(name, *args):
    imports.append([name, threading.current_thread() is threading.main_thread()])
    return real(name, *args)

importlib.import_module = spy

async def main():
    first = await asyncio.gather(*(triggers.hook_class() for _ in range(3)))
    again = await triggers.hook_class()
    return [c.__name__ for c in first] + [again.__name__], again.default_conn_name

names, default = asyncio.run(main())
print(json.dumps({"heavy": heavy, "imports": imports, "names": names, "default": default}))
"""


def test_the_trigger_module_is_light_and_the_hook_is_imported_off_the_event_loop() -> None:
    # A fresh interpreter: this test session has imported the hook long ago.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["heavy"] == []
    # Three triggers starting at once: each waits for the one import, in worker threads, none in the loop's.
    mine = [in_loop_thread for name, in_loop_thread in found["imports"] if name == HOOK_MODULE]
    assert 1 <= len(mine) <= 3  # and once imported, never again
    assert not any(mine)
    assert found["names"] == ["FineTuningHook"] * 4
    from airflow_provider_finetune.triggers.finetune import DEFAULT_CONN_ID

    assert found["default"] == DEFAULT_CONN_ID
