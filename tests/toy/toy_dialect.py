"""Toy's API in the emulator: one dialect file, registered by itself, over the emulator's trainer and files.

Toy's words: ``/toy/api/trainings`` (phases ``waiting``, ``training``, ``finished``, ``broken``, ``stopped``),
``/toy/api/blobs`` (a form upload), labels, a log with sequence numbers, and a ``next`` cursor.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from airflow_provider_finetune.emulator.app import DialectKit, register_dialect
from airflow_provider_finetune.emulator.core import Emulator
from airflow_provider_finetune.emulator.errors import invalid_request

PREFIX = "/toy/api"
PHASES = {
    "validating_files": "waiting",
    "queued": "waiting",
    "running": "training",
    "succeeded": "finished",
    "failed": "broken",
    "cancelled": "stopped",
    "cancelling": "training",
}


def training(job: dict[str, Any]) -> dict[str, Any]:
    """An emulator job in Toy's words."""
    error = job.get("error") or {}
    return {
        "name": job["id"],
        "phase": PHASES.get(job["status"], job["status"]),
        "base": job["model"],
        "data": job["training_file"],
        "labels": job.get("metadata") or {},
        "output": job.get("fine_tuned_model"),
        "created": job["created_at"],
        "failure": error.get("message"),
    }


def toy_routes(emulator: Emulator, kit: DialectKit) -> list[Route]:
    """Toy's routes, each counted and authenticated by the emulator's endpoint."""
    jobs, files = emulator.jobs, emulator.files

    async def upload(request: Request) -> Any:
        form = await kit.form(request)
        name, data = await kit.form_file(form, "blob")
        record = files.create(filename=str(form.get("name") or name), purpose="fine-tune", data=data)
        rendered = files.render(record)
        return {"blob": rendered["id"], "size": rendered["bytes"], "name": rendered["filename"]}

    async def blob(request: Request) -> Any:
        rendered = files.render(files.get(request.path_params["blob"]))
        return {"blob": rendered["id"], "size": rendered["bytes"], "name": rendered["filename"]}

    async def create(request: Request) -> Any:
        body = await kit.body(request)
        if not isinstance(body, dict) or not body.get("base") or not body.get("data"):
            raise invalid_request("a training needs its base and its data", param="base")
        made = jobs.create(
            {"model": body["base"], "training_file": body["data"], "metadata": body.get("labels") or None}
        )
        return training(made)

    async def listing(request: Request) -> Any:
        page = jobs.list(after=kit.query(request, "cursor"), limit=kit.query(request, "max"), metadata=None)
        trainings = [training(job) for job in page["data"]]
        return {"trainings": trainings, "next": trainings[-1]["name"] if page["has_more"] else None}

    async def one(request: Request) -> Any:
        return training(jobs.retrieve(request.path_params["name"]))

    async def stop(request: Request) -> Any:
        return training(jobs.cancel(request.path_params["name"]))

    async def log(request: Request) -> Any:
        events = jobs.events(request.path_params["name"], after=None, limit="100")["data"]
        return {
            "entries": [
                {"seq": len(events) - i, "at": e["created_at"], "text": e["message"], "data": e.get("data")}
                for i, e in enumerate(events)
            ]
        }

    table = [
        ("POST", "/blobs", upload),
        ("GET", "/blobs/{blob}", blob),
        ("POST", "/trainings", create),
        ("GET", "/trainings", listing),
        ("GET", "/trainings/{name}", one),
        ("POST", "/trainings/{name}/stop", stop),
        ("GET", "/trainings/{name}/log", log),
    ]
    return [
        Route(PREFIX + path, kit.endpoint(f"{method} {PREFIX}{path}", handler), methods=[method])
        for method, path, handler in table
    ]


register_dialect("toy", toy_routes)
