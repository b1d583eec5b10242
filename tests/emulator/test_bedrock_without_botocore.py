"""Without botocore (an optional dependency) the emulator imports and serves; its Bedrock dialect says why not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
sys.modules["botocore"] = None  # as if it were not installed: importing it fails
import httpx
from airflow_provider_finetune.emulator import EmulatorServer
with EmulatorServer() as server:
    openai = httpx.get(server.base_url + "/models", headers={"Authorization": "Bearer sk-emulator"})
    bedrock = httpx.get(server.url + "/bedrock/model-customization-jobs")
print(openai.status_code, bedrock.status_code, bedrock.headers["x-amzn-ErrorType"])
print(bedrock.json()["message"])
print(sorted(name for name in sys.modules if name.split(".")[0] in ("botocore", "boto3") and sys.modules[name]))
"""


def test_the_emulator_runs_without_botocore_and_the_bedrock_dialect_says_so() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    statuses, message, loaded = done.stdout.splitlines()
    assert statuses == "200 500 InternalServerException"
    assert "needs botocore" in message
    assert loaded == "[]"
