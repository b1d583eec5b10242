"""A local emulator of every service the provider speaks, for demos, tests, benchmarks and fault drills.

It speaks the published API's shapes and rules (``../shared/openai-spec``): files, uploads, fine-tuning
jobs with events, checkpoints and checkpoint permissions, graders, plus ``/models`` and
``/chat/completions`` so that a DAG can evaluate the model it has just trained. Jobs are run by a
simulated trainer that is a pure function of time (deterministic for a seed, restart-safe with
``--db``), and faults (5xx, 429, dropped connections, latency) can be injected request by request.
The same jobs and files are also served in Azure OpenAI's dialects: authoring under ``/openai`` (with
``api-version``) and v1 under ``/openai/v1`` (:mod:`airflow_provider_finetune.emulator.dialects.azure`).

* :func:`create_app` builds the ASGI app (serve it with uvicorn);
* :class:`EmulatorServer` runs it in a background thread on a free port, for tests;
* ``finetune-emulator`` (:mod:`airflow_provider_finetune.emulator.__main__`) serves it from the command
  line.
"""

from __future__ import annotations

from airflow_provider_finetune.emulator.app import EmulatorApp, create_app
from airflow_provider_finetune.emulator.config import EmulatorConfig, FaultConfig, ManualClock, Timings
from airflow_provider_finetune.emulator.core import Emulator
from airflow_provider_finetune.emulator.server import EmulatorServer
from airflow_provider_finetune.emulator.trainer import FORCE_FAILURE_KEY

__all__ = [
    "FORCE_FAILURE_KEY",
    "Emulator",
    "EmulatorApp",
    "EmulatorConfig",
    "EmulatorServer",
    "FaultConfig",
    "ManualClock",
    "Timings",
    "create_app",
]
