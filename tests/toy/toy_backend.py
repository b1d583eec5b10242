"""A seventh service, made up for the test: its whole backend, registered by this one file.

Toy has its own words for everything: trainings (not jobs) in phases, blobs (not files), labels (not metadata),
a log (not events), a ``next`` cursor. This backend translates both ways, says what Toy can do (events, cancel,
files, labels on a training) and leaves every other ability off, as the seam promises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import IO, Any, ClassVar, TypeVar

from pydantic import BaseModel

from airflow_provider_finetune.backends import Service, register
from airflow_provider_finetune.backends.base import (
    Backend,
    Call,
    Capabilities,
    HeaderAuth,
    model,
    refuse_untranslatable,
)
from airflow_provider_finetune.core.client import path_param
from airflow_provider_finetune.core.flows import Flow, raised
from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.models import (
    CreateFineTuningJobRequest,
    FileObject,
    FineTuningJob,
    FineTuningJobEvent,
    JobState,
    Page,
)

M = TypeVar("M", bound=BaseModel)

#: Toy's phases, in the provider's words.
PHASES = {
    "waiting": "queued",
    "training": "running",
    "finished": "succeeded",
    "broken": "failed",
    "stopped": "cancelled",
}


def job_from(training: Mapping[str, Any]) -> dict[str, Any]:
    """A Toy training in the canonical job's shape."""
    failure = training.get("failure")
    return {
        "id": training["name"],
        "status": PHASES.get(str(training.get("phase")), str(training.get("phase"))),
        "model": training.get("base"),
        "training_file": training.get("data"),
        "fine_tuned_model": training.get("output"),
        "metadata": training.get("labels") or None,
        "created_at": training.get("created"),
        "error": {"code": "toy_failure", "message": failure, "param": None} if failure else None,
    }


def page_from(answer: Mapping[str, Any]) -> dict[str, Any]:
    """Toy's list of trainings as a canonical page (its ``next`` cursor is the page's last id)."""
    return {
        "data": [job_from(training) for training in answer["trainings"]],
        "has_more": answer.get("next") is not None,
        "last_id": answer.get("next"),
    }


def events_from(answer: Mapping[str, Any]) -> dict[str, Any]:
    """Toy's log, oldest first, as a canonical page of events, newest first."""
    entries = sorted(answer["entries"], key=lambda entry: entry["seq"], reverse=True)
    return {
        "data": [
            {"id": f"toy-event-{e['seq']}", "created_at": e["at"], "message": e["text"], "data": e.get("data")}
            for e in entries
        ]
    }


def file_from(blob: Mapping[str, Any]) -> dict[str, Any]:
    """A Toy blob as a canonical file."""
    return {"id": blob["blob"], "bytes": blob["size"], "filename": blob["name"], "purpose": "fine-tune"}


class ToyBackend(Backend):
    """Toy's dialect: ``/trainings``, ``/blobs``, Bearer keys."""

    service: ClassVar[str] = "toy"
    label: ClassVar[str] = "Toy"
    capabilities = Capabilities(events=True, cancel=True, files=True, job_metadata=True)
    metadata_field = "labels"

    def auth(self) -> HeaderAuth:
        """The key as a Bearer token."""
        return HeaderAuth("Authorization", f"Bearer {self.settings.api_key}")

    def job_body(self, request: CreateFineTuningJobRequest, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Toy takes a base model, one data blob and labels; it refuses what it has no word for."""
        if options:
            raise InvalidRequestError("service_options: Toy takes no options of its own", field="service_options")
        refuse_untranslatable(
            request,
            {
                "validation_file": "Toy trains on one blob",
                "hyperparameters": "Toy chooses its own",
                "method": "Toy trains one way",
                "suffix": "Toy names its models itself",
            },
        )
        return {"base": request.model, "data": request.training_file, "labels": dict(request.metadata or {})}

    def create_prepared_job(self, body: Mapping[str, Any], *, job_id: str | None = None) -> Call[FineTuningJob]:
        """``POST /trainings``: not re-sent when its outcome is unknown."""
        if job_id is not None:
            self.require("client_job_id")
        return Call("POST", "trainings", model(FineTuningJob, job_from), json=dict(body), idempotent=False)

    def create_job(
        self, request: CreateFineTuningJobRequest | Mapping[str, Any], options: Mapping[str, Any] | None = None
    ) -> Call[FineTuningJob]:
        """A create with no once-only guard."""
        return self.create_prepared_job(self.job_body(CreateFineTuningJobRequest.model_validate(request), options))

    def job_call(self, method: str, job_id: str, action: str | None = None) -> Call[FineTuningJob]:
        """``GET /trainings/{name}``, or ``POST .../stop`` for a cancel."""
        path = f"trainings/{path_param('job_id', job_id)}"
        if action is not None:
            self.require(action, job_id=job_id)
            path += "/stop"
        return Call(method, path, model(FineTuningJob, job_from))

    def list_jobs(
        self, after: str | None, limit: int | None, metadata: Mapping[str, str] | None
    ) -> Call[Page[FineTuningJob]]:
        """``GET /trainings``, newest first (Toy filters nothing: labels are checked on each training)."""
        if metadata:
            self.require("metadata_filter")
        return Call("GET", "trainings", model(Page[FineTuningJob], page_from), params={"cursor": after, "max": limit})

    def list_job_states(self, after: str | None, limit: int | None) -> Call[Page[JobState]]:
        """The same list, read as lean states."""
        return Call("GET", "trainings", model(Page[JobState], page_from), params={"cursor": after, "max": limit})

    def next_page(self, call: Call[Page[M]], page: Page[M]) -> Call[Page[M]] | None:
        """The next page, by Toy's ``next`` cursor."""
        if not page.has_more or page.next_after is None:
            return None
        return replace(call, params={**(call.params or {}), "cursor": page.next_after})

    def events(self, job_id: str, after: str | None, limit: int | None) -> Call[Page[FineTuningJobEvent]]:
        """``GET /trainings/{name}/log``: the whole log (the wait keeps what is new)."""
        self.require("events", job_id=job_id)
        return Call(
            "GET", f"trainings/{path_param('job_id', job_id)}/log", model(Page[FineTuningJobEvent], events_from)
        )

    def get_file(self, file_id: str) -> Call[FileObject]:
        """``GET /blobs/{blob}``."""
        return Call("GET", f"blobs/{path_param('file_id', file_id)}", model(FileObject, file_from))

    def file_flow(self, stream: IO[bytes], name: str, purpose: str) -> Flow[FileObject]:
        """``POST /blobs``, a form of the blob and its name: one request."""
        data = stream.read()
        call = Call(
            "POST", "blobs", model(FileObject, file_from), multipart=lambda: ({"name": name}, {"blob": (name, data)})
        )
        return raised((yield call))  # type: ignore[no-any-return]


register(Service("toy", f"{__name__}:ToyBackend"))
