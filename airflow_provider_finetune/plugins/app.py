"""The Fine-tuning page's server: a FastAPI app that Airflow's api-server mounts at ``/finetune``.

Every route goes through Airflow's auth manager, as Airflow's own routes do: the user comes from the session
cookie or a bearer token (:func:`airflow.api_fastapi.core_api.security.get_user`: none gives 401), a job is
shown only to a user who may read its DAG, and pause, resume and cancel need edit permission on it (403).
Writes also refuse cross-site requests: the session cookie is ``SameSite=Lax`` already, and a write must carry
a JSON body and come from this origin (``Origin`` and ``Sec-Fetch-Site`` are checked where the browser sends
them). Nothing of a connection but its id and service reaches the browser.

The page is one self-contained document (its script and style inline), so that one authenticated request
shows it. Airflow 3.3's UI keeps the user's token in the ``_token`` cookie, which the page's request carries;
Airflow 3.1's UI moves it into the browser's local storage and deletes the cookie, so the page that its
navigation frames arrives with no credential. Such a browser request gets 401 with a page holding no data
(``static/signin.html``) that asks for the page again with that token in the ``Authorization`` header, as the
UI's own calls send it, and the page's calls then do the same.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from airflow_provider_finetune.core import statuses
from airflow_provider_finetune.plugins.assets import ICON
from airflow_provider_finetune.plugins.curves import ResultFiles
from airflow_provider_finetune.plugins.jobs import (
    Directory,
    JobRecord,
    database_connections,
    environment_connections,
    load_records,
    newest_first,
    rendered_request,
)
from airflow_provider_finetune.rules import job_actions

if TYPE_CHECKING:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook

log = logging.getLogger(__name__)

#: Most events and checkpoints read for one job view.
MAX_EVENTS = 5000
MAX_CHECKPOINTS = 500
STATIC = resources.files("airflow_provider_finetune.plugins") / "static"

directory = Directory()
result_files = ResultFiles()


async def _user(request: Request) -> BaseUser:
    # As Airflow's own ``get_user``: an explicit bearer token wins, else the session cookie; neither gives 401.
    # Written out because that dependency's signature differs between Airflow 3.1 (bearer only) and 3.3.
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    bearer = _bearer(request)
    if bearer is not None:
        return await resolve_user_from_token(bearer)
    return await resolve_user_from_token(request.cookies.get(COOKIE_NAME_JWT_TOKEN))


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else None


# A real class, not a string: the FastAPI of Airflow 3.1 does not resolve a forward reference here.
UserDep = Annotated[BaseUser, Depends(_user)]


def _auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def _may(user: BaseUser, dag_id: str, method: str) -> bool:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return bool(_auth_manager().is_authorized_dag(method=method, details=DagDetails(id=dag_id), user=user))


def _readable_dags(user: BaseUser) -> set[str]:
    return set(_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def _session() -> Any:
    from airflow.utils.session import create_session

    return create_session()


def _connections(session: Any) -> list[str]:
    names = [*database_connections(session), *environment_connections()]
    return list(dict.fromkeys(names or ["finetune_default"]))


def _same_origin(request: Request) -> None:
    """Refuse a write that a browser sent from another site (cross-site request forgery)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, "Cross-site request refused")
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            raise HTTPException(403, "Cross-site request refused")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        # A form post cannot set this type without a CORS preflight, which this app never allows.
        raise HTTPException(415, "A JSON body is required")


app = FastAPI(title="Fine-tuning", docs_url=None, redoc_url=None, openapi_url=None)
_NO_STORE = {"Cache-Control": "no-store"}


@cache
def _page_parts() -> tuple[str, str]:
    """The page around its ``data-auth`` value, with the script, style and icon inline."""
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    for marker, text in (
        ("<!--style-->", (STATIC / "app.css").read_text(encoding="utf-8")),
        ("<!--script-->", (STATIC / "app.js").read_text(encoding="utf-8")),
        ("<!--icon-->", ICON),
    ):
        page = page.replace(marker, text)
    before, after = page.split("<!--auth-->")
    return before, after


def _navigation(request: Request) -> bool:
    """Whether a browser asked for the page itself (in a tab or a frame), not a script for data."""
    mode = request.headers.get("sec-fetch-mode")
    if mode is not None:
        return mode == "navigate"
    return "text/html" in request.headers.get("accept", "")


@app.get("/", response_class=HTMLResponse)
async def index(request: Request) -> HTMLResponse:
    """The page: a shell that its script fills from the JSON routes below.

    With no credential it is 401, as every route; a browser's page request then gets the sign-in page.
    """
    try:
        await _user(request)
    except HTTPException as refused:
        if refused.status_code != 401 or not _navigation(request):
            raise
        signin = (STATIC / "signin.html").read_text(encoding="utf-8")
        return HTMLResponse(signin, status_code=401, headers=_NO_STORE)
    before, after = _page_parts()
    auth = "bearer" if _bearer(request) is not None else "cookie"
    return HTMLResponse(before + auth + after, headers=_NO_STORE)


@app.get("/api/jobs")
def list_jobs(
    user: UserDep,
    dag_id: str | None = None,
    status: str | None = None,
    service: str | None = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """The jobs of the DAGs the user may read, newest first, filtered and paged."""
    with _session() as session:
        readable = _readable_dags(user)
        records = load_records(session, readable_dags=readable, dag_id=dag_id or None)
        connections = _connections(session)
    live = [r.job_id for r in records if r.recorded_status not in statuses.TERMINAL]
    # The connections the tasks recorded first: a job is then found where it was made.
    recorded = [r.conn_id for r in records if r.conn_id]
    directory.locate([r.job_id for r in records], [*dict.fromkeys(recorded), *connections], live=live)
    # Newest first by the service's creation time where known (tasks of one run may run in any order).
    rows = newest_first([directory.view(r) for r in records])
    services = sorted({r["service"] for r in rows if r["service"]})
    found_statuses = sorted({r["status"] for r in rows if r["status"]})
    dags = sorted({r["dag_id"] for r in rows})
    if status:
        rows = [r for r in rows if r["status"] == status]
    if service:
        rows = [r for r in rows if r["service"] == service]
    return {
        "total": len(rows),
        "offset": offset,
        "limit": limit,
        "jobs": rows[offset : offset + limit],
        "filters": {"dags": dags, "statuses": found_statuses, "services": services},
    }


def _record_for_job(session: Any, user: BaseUser, job_id: str) -> JobRecord:
    readable = _readable_dags(user)
    for record in load_records(session, readable_dags=readable):
        if record.job_id == job_id:
            return record
    # The same answer whether the job is unknown or only hidden: nothing is learnt of others' DAGs.
    raise HTTPException(404, f"No fine-tuning job {job_id} among the DAGs you may read")


def _record_for_task(
    session: Any, user: BaseUser, dag_id: str, run_id: str, task_id: str, map_index: int
) -> JobRecord | None:
    if not _may(user, dag_id, "GET"):
        raise HTTPException(403, "You may not read this DAG")
    for record in load_records(session, readable_dags=[dag_id], dag_id=dag_id):
        if (record.run_id, record.task_id, record.map_index) == (run_id, task_id, map_index):
            return record
    return None


def _hook_for(record: JobRecord, connections: list[str]) -> tuple[str, FineTuningHook]:
    directory.locate([record.job_id], [record.conn_id, *connections] if record.conn_id else connections)
    conn_id = directory.connection_of(record.job_id)
    if conn_id is None and record.conn_id:
        # A list may not show it (a service listing one kind of job, or only the newest): asked for by its id.
        try:
            job = directory.hook(record.conn_id).get_job(record.job_id)
        except Exception:  # not there, or the connection cannot be read: not found, below
            job = None
        if job is not None:
            directory.remember(record.conn_id, job)
            conn_id = record.conn_id
    if conn_id is None:
        raise HTTPException(404, f"Fine-tuning job {record.job_id} was not found on any fine-tuning connection")
    return conn_id, directory.hook(conn_id)


def _best(checkpoints: list[dict[str, Any]]) -> str | None:
    def loss(c: dict[str, Any]) -> float | None:
        m = c["metrics"]
        for key in ("full_valid_loss", "valid_loss", "train_loss"):
            if m.get(key) is not None:
                return float(m[key])
        return None

    scored = [(value, c["id"]) for c in checkpoints if (value := loss(c)) is not None]
    return min(scored)[1] if scored else None


def _detail(user: BaseUser, record: JobRecord, session: Any) -> dict[str, Any]:
    from airflow_provider_finetune.exceptions import FineTuningError

    connections = _connections(session)
    request_fields = rendered_request(session, record)
    conn_id, hook = _hook_for(record, connections)
    backend = hook.backend
    try:
        job = hook.get_job(record.job_id)
    except FineTuningError as err:
        raise HTTPException(502, f"{backend.label} did not answer for job {record.job_id}: {err}") from err
    directory.remember(conn_id, job)
    events: list[Any] = []
    if backend.supports("events"):
        for event in hook.iter_events(job.id, limit=100):
            events.append(event)
            if len(events) >= MAX_EVENTS:
                break
    checkpoints: list[dict[str, Any]] = []
    if backend.supports("checkpoints"):
        for checkpoint in hook.iter_checkpoints(job.id, limit=100):
            checkpoints.append(
                {
                    "id": checkpoint.id,
                    "step_number": checkpoint.step_number,
                    "created_at": checkpoint.created_at,
                    "fine_tuned_model_checkpoint": checkpoint.fine_tuned_model_checkpoint,
                    "metrics": checkpoint.metrics.model_dump(mode="json", exclude_none=True),
                }
            )
            if len(checkpoints) >= MAX_CHECKPOINTS:
                break
    checkpoints.sort(key=lambda c: int(c["step_number"] or 0))
    can_edit = _may(user, record.dag_id, "PUT")
    status = job.status.value
    actions = []
    if can_edit:
        for rule in job_actions.ACTIONS.values():
            if backend.supports(rule.capability) and rule.applies(status):
                actions.append(rule.verb)
    view = directory.view(record).to_json()
    curves = result_files.curves(conn_id, hook, job, events)
    return {
        **view,
        "status": status,
        "model": job.model,
        "fine_tuned_model": job.fine_tuned_model,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "trained_tokens": job.trained_tokens,
        "estimated_finish": job.estimated_finish,
        "error": job.error.describe() if job.error else None,
        "hyperparameters": job.hyperparameters.model_dump(mode="json", exclude_none=True)
        if job.hyperparameters
        else None,
        "job_url": hook.job_url(job.id),
        "supports": {name: backend.supports(name) for name in ("events", "checkpoints", "pause", "resume", "cancel")},
        "metrics": curves.points,
        "curves": {"source": curves.source, "file_id": curves.file_id},
        "events": [
            {"id": e.id, "created_at": e.created_at, "level": e.level, "type": e.type, "message": e.message}
            for e in events
            if e.type != "metrics"
        ],
        "checkpoints": checkpoints,
        "best_checkpoint": _best(checkpoints),
        "request": request_fields,
        "can_edit": can_edit,
        "actions": actions,
    }


@app.get("/api/jobs/{job_id}")
def get_job(job_id: str, user: UserDep) -> dict[str, Any]:
    """One job: its state, curves, checkpoints, events and request, and what the user may do with it."""
    with _session() as session:
        record = _record_for_job(session, user, job_id)
        return _detail(user, record, session)


@app.get("/api/task")
def task_job(
    user: UserDep, dag_id: str, run_id: str, task_id: str, map_index: Annotated[int, Query()] = -1
) -> dict[str, Any]:
    """The job a create task made (the task instance's tab), or ``{"job": null}`` for any other task."""
    with _session() as session:
        record = _record_for_task(session, user, dag_id, run_id, task_id, map_index)
        if record is None:
            return {"job": None}
        return {"job": _detail(user, record, session)}


@app.post("/api/jobs/{job_id}/{action}")
def act(job_id: str, action: str, request: Request, user: UserDep) -> dict[str, Any]:
    """Pause, resume or cancel a job through the hook, with the operators' rules; needs edit on the DAG."""
    from airflow_provider_finetune.exceptions import ConflictError, FineTuningError, InvalidRequestError

    _same_origin(request)
    rule = job_actions.ACTIONS.get(action)
    if rule is None:
        raise HTTPException(404, f"No action {action!r}: pause, resume or cancel")
    with _session() as session:
        record = _record_for_job(session, user, job_id)
        if not _may(user, record.dag_id, "PUT"):
            raise HTTPException(403, f"You may not edit DAG {record.dag_id}")
        conn_id, hook = _hook_for(record, _connections(session))
    try:
        hook.require(rule.capability, job_id=job_id)
        job = hook.get_job(job_id)
        refused = job_actions.refusal(rule, job.id, job.status.value)
        if refused is not None:
            raise HTTPException(409, refused)
        if job.status.value not in rule.done:
            conflict: ConflictError | None = None
            try:
                getattr(hook, rule.method)(job.id)
            except ConflictError as err:  # it moved on between the read and the action
                conflict = err
            # What the service says of the job now, not what the action's answer suggests (some answer nothing).
            job = hook.get_job(job.id)
            if conflict is not None and job.status.value not in rule.done:
                raise conflict
    except (ConflictError, InvalidRequestError) as err:  # an unsupported action is an InvalidRequestError
        raise HTTPException(409, str(err)) from err
    except FineTuningError as err:
        raise HTTPException(502, str(err)) from err
    directory.remember(conn_id, job)
    log.info("%s %s fine-tuning job %s (DAG %s): now %s", user.get_name(), rule.verb, job.id, record.dag_id, job.status)
    return {"job_id": job.id, "status": job.status.value}
