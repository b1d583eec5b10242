"""The API key appears nowhere: not in logs, XCom, trigger kwargs, rendered fields, error messages or reprs.

A whole DAG run (``dag.test()``) with a recognisable key: an upload, a deferred fine-tuning job, a job that
fails (its wait, on the worker, reads events from a service that echoes the key in 503s), and a call that the
service refuses with a 401 that echoes the key in every field of its error. Then everything that run left
behind is scanned: what was printed, every log record, the task log files, the whole metadata database
(XComs, trigger rows, rendered fields, task instances: a dump of every table), the trigger kwargs, and the
errors and objects themselves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import sqlite3
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorApp, EmulatorConfig
from airflow_provider_finetune.exceptions import AuthenticationError, FineTuningError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.operators.finetune import FineTuningJobCancelOperator, FineTuningJobOperator
from tests.chaos.conftest import MODEL, FakeTI, TaskDeferred, chat_lines, dag_bag, serving, set_connection
from tests.hooks.conftest import SECRET, FakeAPI
from tests.hooks.test_finetune import call

pytestmark = pytest.mark.integration

CANARY = "sk-SECRET-canary-4f1d9b27c06e"
DAG_ID = "ft_secrets"


class EchoesTheKey:
    """A service (in front of the emulator) that repeats the key it was sent.

    ``GET /v1/fine_tuning/jobs/ftjob-echo`` is refused with a 401 that carries the key in its message,
    code, param, type, body and request id; every second read of a job's events fails with a 503 whose
    message carries it.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.events = 0
        self.echoed: Counter[str] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = dict(scope["headers"])
            key = headers.get(b"authorization", b"").decode().removeprefix("Bearer ").strip()
            if scope["path"].startswith("/v1/fine_tuning/jobs/ftjob-echo"):
                self.echoed["401"] += 1
                error = {
                    "message": f"Incorrect API key provided: {key}.",
                    "type": f"invalid_request_error:{key}",
                    "param": f"key={key}",
                    "code": f"invalid_api_key:{key}",
                }
                await _answer(send, 401, {"error": error, "you_sent": key}, {"x-request-id": f"req_{key}"})
                return
            if scope["path"].endswith("/events"):
                self.events += 1
                if self.events % 2 == 0:
                    self.echoed["503"] += 1
                    error = {"message": f"upstream failed for key {key}", "type": "server_error"}
                    await _answer(send, 503, {"error": error}, {})
                    return
        await self.app(scope, receive, send)


async def _answer(send: Any, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    content = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    raw += [(name.encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})


def leaks(where: str, value: Any) -> list[str]:
    """Where the canary shows up in a value (text, bytes, or anything with a repr)."""
    if isinstance(value, bytes):
        found = CANARY.encode() in value
    else:
        found = CANARY in (value if isinstance(value, str) else repr(value))
    return [where] if found else []


def database_rows(run_id: str) -> dict[str, Any]:
    """Everything the run left in the metadata database that could hold a value of the task's."""
    from airflow.models.dagrun import DagRun
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    rows: dict[str, Any] = {}
    with create_session() as session:
        for row in session.query(XComModel).filter_by(dag_id=DAG_ID, run_id=run_id):
            rows[f"xcom {row.task_id}.{row.key}"] = (row.value, XComModel.deserialize_value(row))
        for row in session.query(RenderedTaskInstanceFields).filter_by(dag_id=DAG_ID, run_id=run_id):
            rows[f"rendered fields of {row.task_id}"] = row.rendered_fields
        for row in session.query(TaskInstance).filter_by(dag_id=DAG_ID, run_id=run_id):
            rows[f"task instance {row.task_id}"] = (row.state, row.next_method, row.next_kwargs)
        for row in session.query(Trigger):
            rows[f"trigger {row.id}"] = (row.classpath, row.encrypted_kwargs, row.kwargs)
        for row in session.query(DagRun).filter_by(dag_id=DAG_ID, run_id=run_id):
            rows["dag run conf"] = row.conf
        assert any(key.startswith("xcom fine_tune.") for key in rows), "the run left no XCom: nothing was scanned"
    return rows


def database_dump() -> str:
    """Every table of the metadata database, every column, encrypted or not, as SQL text.

    Read through SQLite (a second connection), never as a file: a process that opens and closes the database
    file itself drops SQLite's locks on it (POSIX locks are per process), and the database gets corrupted.
    """
    from airflow.configuration import conf

    url = conf.get("database", "sql_alchemy_conn")
    assert url.startswith("sqlite:///"), url
    with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
        return "\n".join(db.iterdump())


def log_files() -> dict[str, bytes]:
    home = Path(os.environ["AIRFLOW_HOME"])
    return {str(p): p.read_bytes() for p in home.rglob("*.log") if p.is_file()}


def error_views(error: BaseException) -> dict[str, Any]:
    """Every way an error is shown or kept: message, repr, args, attributes, traceback, pickle, its causes."""
    views: dict[str, Any] = {
        "str": str(error),
        "repr": repr(error),
        "args": error.args,
        "attributes": vars(error),
        "traceback": "".join(traceback.format_exception(error)),
        "pickle": pickle.dumps(error),
    }
    if error.__cause__ is not None:
        views["cause"] = error_views(error.__cause__)
    return views


@pytest.mark.timeout(180)
def test_the_api_key_appears_nowhere(
    chaos_airflow_db: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Everything the provider logs, at every level; other libraries at Airflow's default level (INFO): at
    # DEBUG, httpcore traces the raw answers, which here carry the key the service echoed.
    caplog.set_level(logging.INFO)
    for name in ("airflow_provider_finetune", "airflow.task"):
        caplog.set_level(logging.DEBUG, logger=name)
    layer: dict[str, EchoesTheKey] = {}

    def echo(app: EmulatorApp) -> None:
        layer["echo"] = app.app = EchoesTheKey(app.app)

    triggers: list[tuple[str, dict[str, Any]]] = []
    import airflow.sdk.definitions.dag as dag_module

    inline = dag_module._run_inline_trigger

    def recording(trigger: Any, ti: Any) -> Any:
        triggers.append(trigger.serialize())
        return inline(trigger, ti)

    monkeypatch.setattr(dag_module, "_run_inline_trigger", recording)

    with serving(EmulatorConfig(api_key=CANARY, speed=40, seed=5), echo) as server:
        # No retries: every echoed 503 reaches the wait as an error, and its message is logged.
        set_connection(monkeypatch, "finetune_default", server.base_url, CANARY, max_retries=0)
        set_connection(monkeypatch, "finetune_echo", server.base_url, CANARY)
        source = tmp_path / "train.jsonl"
        source.write_bytes(chat_lines())

        run = dag_bag().get_dag(DAG_ID).test(run_conf={"source": str(source)})

        # The same paths outside Airflow, to keep the errors and objects themselves.
        direct: dict[str, Any] = {}
        ti = FakeTI(dag_id=DAG_ID, run_id="direct")
        hook = FineTuningHook()
        # (Airflow's own Connection object shows its password in its repr on 3.2+; the provider keeps none.)
        direct["hook"] = (repr(hook), repr(hook.settings), str(hook.settings), hook.settings.fingerprint())
        direct["test_connection"] = hook.test_connection()
        direct["hook attributes"] = repr(vars(hook))
        with pytest.raises(AuthenticationError) as refused:
            FineTuningJobCancelOperator(
                task_id="echoed_401", job_id="ftjob-echo", finetune_conn_id="finetune_echo"
            ).execute({"ti": ti})  # type: ignore[arg-type]
        direct["401"] = error_views(refused.value)
        training_file = hook.upload_file(chat_lines(), filename="direct.jsonl").id
        op = FineTuningJobOperator(
            task_id="fine_tune",
            model=MODEL,
            training_file=training_file,
            metadata={"emulator_force_failure": "server_error"},
            deferrable=True,
            poll_interval=0.2,
        )
        with pytest.raises(TaskDeferred) as deferred:
            op.execute({"ti": ti})  # type: ignore[arg-type]
        direct["trigger"] = deferred.value.trigger.serialize()
        direct["operator"] = (repr(op), {name: getattr(op, name) for name in op.template_fields})
        failed = FineTuningJobOperator(
            task_id="fine_tune", model=MODEL, training_file=training_file, poll_interval=0.2,
            metadata={"emulator_force_failure": "server_error"},
        )  # fmt: skip
        with pytest.raises(FineTuningError) as job_failed:
            failed.execute({"ti": FakeTI(dag_id=DAG_ID, run_id="direct-failure")})  # type: ignore[arg-type]
        direct["job failure"] = error_views(job_failed.value)
        direct["xcoms"] = ti.xcoms
        hook.close()
        echoed = dict(layer["echo"].echoed)

    # The run went the way the DAG says, and the service really echoed the key.
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {
        "upload": "success",
        "fine_tune": "success",
        "forced_failure": "failed",
        "echoed_401": "failed",
    }
    assert echoed["401"] >= 2
    assert echoed["503"] >= 1
    assert CANARY not in str(refused.value)
    assert "Incorrect API key provided: ***" in str(refused.value)

    out, err = capfd.readouterr()
    found: list[str] = []
    found += leaks("stdout", out) + leaks("stderr", err)
    for record in caplog.records:
        text = record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        found += leaks(f"log record {record.name}", text)
    for path, data in log_files().items():
        found += leaks(f"log file {path}", data)
    for where, value in database_rows(run.run_id).items():
        found += leaks(f"database: {where}", value)
    dump = database_dump()
    assert run.run_id in dump  # the dump holds the run
    found += leaks("database dump", dump)
    if CANARY.encode().hex() in dump.lower():  # in a BLOB column
        found.append("database dump, as hex")
    assert triggers, "the run deferred no task: no trigger kwargs were scanned"
    for classpath, kwargs in triggers:
        found += leaks(f"trigger kwargs of {classpath}", json.dumps(kwargs))
    for where, value in direct.items():
        found += leaks(f"direct: {where}", value)
    assert found == [], "the key leaked into: " + "; ".join(found)
    # What the user needs is there, without the key: the echoed errors say what went wrong.
    assert "Incorrect API key provided: ***" in out + err
    assert "upstream failed for key ***" in out + err


def test_the_scan_finds_a_planted_key() -> None:
    assert leaks("text", f"Bearer {CANARY}") == ["text"]
    assert leaks("bytes", b"x" + CANARY.encode()) == ["bytes"]
    assert leaks("object", {"kwargs": [CANARY]}) == ["object"]
    assert error_views(ValueError(CANARY))["str"] == CANARY


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_every_text_of_an_error_answer_is_redacted(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    # Before the fix only the message and the body were: a service that echoed the key in the error's code,
    # param or type, or in its request id, had it shown in the task's error.
    echo = {"message": f"bad key {SECRET}", "code": f"c-{SECRET}", "param": f"p-{SECRET}", "type": f"t-{SECRET}"}
    api.on(
        "GET",
        "fine_tuning/jobs/ftjob-1",
        httpx.Response(401, json={"error": echo, "echo": SECRET}, headers={"x-request-id": f"req-{SECRET}"}),
    )
    with pytest.raises(AuthenticationError) as info:
        await call(hook, mode, "get_job", "ftjob-1")
    error = info.value
    assert str(error) == "401 [c-***] bad key *** (param: p-***) (request id: req-***)"
    assert (error.code, error.param, error.error_type, error.request_id) == ("c-***", "p-***", "t-***", "req-***")
    assert error.body == {"error": {k: v.replace(SECRET, "***") for k, v in echo.items()}, "echo": "***"}
    assert SECRET not in repr(error) + repr(error.args) + repr(pickle.loads(pickle.dumps(error)).__dict__)
