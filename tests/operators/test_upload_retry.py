"""The upload operator when an upload's answer is lost: a retry adopts the file it made, never a stranger's.

Most tests run the operator against the emulator over real loopback HTTP, with the emulator's fault that
handles a request and then drops its answer; the files on the service are counted through its own list.
The last ones script the service at the transport to show which fields a listed file must have to be
adopted.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator
from airflow_provider_finetune.training_data import TrainingDataError
from tests.hooks.conftest import FakeAPI, file_obj, page
from tests.integration.conftest import API_KEY, Emulator, chat_lines, emulator, emulator_server
from tests.operators.conftest import FakeStateStore, FakeTI

__all__ = ["emulator", "emulator_server"]

POST_FILES = r"^POST /v1/files$"


def all_files(emulator: Emulator) -> list[dict[str, Any]]:
    response = httpx.get(f"{emulator.base_url}/files", headers=emulator.headers, params={"limit": 10000})
    response.raise_for_status()
    return list(response.json()["data"])


@pytest.fixture
def service(emulator: Emulator) -> Emulator:
    """The session's emulator, with the files earlier tests left there set aside."""
    emulator.earlier = {f["id"] for f in all_files(emulator)}  # type: ignore[attr-defined]
    return emulator


def service_files(emulator: Emulator) -> list[dict[str, Any]]:
    """The files this test made on the service, through the service's own list."""
    earlier: set[str] = getattr(emulator, "earlier", set())
    return [f for f in all_files(emulator) if f["id"] not in earlier]


def connect(monkeypatch: pytest.MonkeyPatch, emulator: Emulator, max_retries: int) -> None:
    """Point ``finetune_default`` at the emulator with few retries, so that a faulted try ends quickly."""
    conn = {
        "conn_type": "finetune",
        "host": emulator.base_url,
        "password": API_KEY,
        "extra": {"max_retries": max_retries},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))


def try_of(store: FakeStateStore | None, try_number: int, **context: Any) -> dict[str, Any]:
    """The context of one try of the same task instance; the state store outlives the try, like Airflow's."""
    ctx: dict[str, Any] = {"ti": FakeTI(dag_id="retrain", task_id="upload", try_number=try_number), **context}
    if store is not None:
        ctx["task_state_store"] = store
    return ctx


def upload_task(source: Path, **kwargs: Any) -> FineTuningFileUploadOperator:
    """The operator as a new try builds it: a fresh object, nothing kept from the last try."""
    return FineTuningFileUploadOperator(task_id="upload", source=source, **kwargs)


def run(operator: FineTuningFileUploadOperator, context: dict[str, Any]) -> str:
    try:
        return operator.execute(context)  # type: ignore[arg-type]
    finally:
        operator.hook.close()


def lost_try(operator: FineTuningFileUploadOperator, context: dict[str, Any]) -> None:
    """A try that fails after its upload reached the service: its answer and every look-up are lost."""
    with pytest.raises(FineTuningError):
        run(operator, context)


# -- over real HTTP ---------------------------------------------------------------------------------------------


def test_lost_answer_then_a_task_retry_leaves_one_file(
    service: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emulator = service
    connect(monkeypatch, emulator, max_retries=0)
    source = tmp_path / "lost-retry.jsonl"
    source.write_bytes(chat_lines())
    store = FakeStateStore()

    # Try 1: the service makes the file, the answer is dropped, and the try dies before it can look.
    emulator.faults(drop_rate=1.0, after_processing=True, match=r"^(POST|GET) /v1/files$")
    lost_try(upload_task(source), try_of(store, 1))
    emulator.faults()
    (made,) = service_files(emulator)

    # Try 2: the same task instance again.
    context = try_of(store, 2)
    file_id = run(upload_task(source), context)

    assert [f["id"] for f in service_files(emulator)] == [made["id"]]
    assert file_id == made["id"]
    assert context["ti"].xcoms["file_id"] == made["id"]
    assert context["ti"].xcoms["bytes"] == len(chat_lines())
    assert context["ti"].xcoms["examples"] == 12
    assert emulator.requests_to("POST /v1/files") == 1


def test_lost_answer_is_recovered_in_the_same_try(
    service: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emulator = service
    # Without a state store (Airflow 3.1) and with the connection's retries: the answer to every POST
    # /files is lost after the file was made, which used to leave one file per attempt.
    connect(monkeypatch, emulator, max_retries=2)
    source = tmp_path / "lost-same-try.jsonl"
    source.write_bytes(chat_lines())
    emulator.faults(drop_rate=1.0, after_processing=True, match=POST_FILES)

    file_id = run(upload_task(source), try_of(None, 1))

    emulator.faults()
    (made,) = service_files(emulator)
    assert file_id == made["id"]
    assert made["filename"] == "lost-same-try.jsonl"


def test_lost_complete_of_a_large_upload_then_a_task_retry_leaves_one_file(
    service: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emulator = service
    connect(monkeypatch, emulator, max_retries=0)
    source = tmp_path / "big.jsonl"
    source.write_bytes(chat_lines(40))
    store = FakeStateStore()

    def in_parts(context: dict[str, Any]) -> FineTuningFileUploadOperator:
        operator = upload_task(source)
        operator.hook.upload_threshold = 100  # this file goes through the Uploads API
        operator.hook.part_size = 1024
        return operator

    emulator.faults(drop_rate=1.0, after_processing=True, match=r"^POST /v1/uploads/[^/]+/complete$|^GET /v1/files$")
    lost_try(in_parts({}), try_of(store, 1))
    emulator.faults()
    (made,) = service_files(emulator)

    assert run(in_parts({}), try_of(store, 2)) == made["id"]
    assert [f["id"] for f in service_files(emulator)] == [made["id"]]


def test_a_file_of_the_same_name_with_other_content_is_not_adopted(
    service: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emulator = service
    connect(monkeypatch, emulator, max_retries=0)
    source = tmp_path / "other-content.jsonl"
    source.write_bytes(chat_lines(prefix="a"))
    store = FakeStateStore()

    # Try 1 made a file whose answer was lost; then the source was rewritten: same name, same size.
    emulator.faults(drop_rate=1.0, after_processing=True, match=r"^(POST|GET) /v1/files$")
    lost_try(upload_task(source), try_of(store, 1))
    emulator.faults()
    (old,) = service_files(emulator)
    source.write_bytes(chat_lines(prefix="b"))
    assert source.stat().st_size == old["bytes"]

    file_id = run(upload_task(source), try_of(store, 2))

    assert file_id != old["id"]
    assert sorted(f["id"] for f in service_files(emulator)) == sorted([old["id"], file_id])


def test_a_strangers_file_of_the_same_name_is_not_adopted(
    service: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emulator = service
    connect(monkeypatch, emulator, max_retries=0)
    source = tmp_path / "stranger.jsonl"
    source.write_bytes(chat_lines())
    store = FakeStateStore()

    # Try 1 never reached the service; meanwhile someone else uploads their own stranger.jsonl.
    emulator.faults(drop_rate=1.0, match=POST_FILES)
    lost_try(upload_task(source), try_of(store, 1))
    emulator.faults()
    stranger = FineTuningHook().upload_file(chat_lines(13, prefix="other"), filename="stranger.jsonl")

    file_id = run(upload_task(source), try_of(store, 2))

    assert file_id != stranger.id
    assert sorted(f["id"] for f in service_files(emulator)) == sorted([stranger.id, file_id])


def test_with_the_digest_in_the_name_a_retry_adopts_without_a_state_store(
    service: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emulator = service
    # Airflow 3.1 keeps nothing between tries: the name itself proves the content.
    connect(monkeypatch, emulator, max_retries=0)
    source = tmp_path / "digest.jsonl"
    source.write_bytes(chat_lines(prefix="a"))
    dag_run = SimpleNamespace(start_date=datetime.now(timezone.utc))

    emulator.faults(drop_rate=1.0, after_processing=True, match=r"^(POST|GET) /v1/files$")
    lost_try(upload_task(source, digest_in_filename=True), try_of(None, 1, dag_run=dag_run))
    emulator.faults()
    (made,) = service_files(emulator)
    assert made["filename"].startswith("digest.")
    assert made["filename"].endswith(".jsonl")
    # A file of the same size and plain name, other content: not ours.
    FineTuningHook().upload_file(chat_lines(prefix="b"), filename="digest.jsonl")

    file_id = run(upload_task(source, digest_in_filename=True), try_of(None, 2, dag_run=dag_run))

    assert file_id == made["id"]
    assert len(service_files(emulator)) == 2


def test_with_the_digest_in_the_name_other_content_is_not_adopted(
    service: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emulator = service
    connect(monkeypatch, emulator, max_retries=0)
    source = tmp_path / "digest-other.jsonl"
    source.write_bytes(chat_lines(prefix="a"))
    dag_run = SimpleNamespace(start_date=datetime.now(timezone.utc))

    emulator.faults(drop_rate=1.0, after_processing=True, match=r"^(POST|GET) /v1/files$")
    lost_try(upload_task(source, digest_in_filename=True), try_of(None, 1, dag_run=dag_run))
    emulator.faults()
    (old,) = service_files(emulator)
    source.write_bytes(chat_lines(prefix="b"))

    file_id = run(upload_task(source, digest_in_filename=True), try_of(None, 2, dag_run=dag_run))

    assert file_id != old["id"]
    names = {f["id"]: f["filename"] for f in service_files(emulator)}
    assert len(names) == 2
    assert names[file_id] != names[old["id"]]


# -- the proof a listed file must give, at the transport ---------------------------------------------------------


def ours(store: FakeStateStore, path: Path, since: float, **fields: Any) -> None:
    """Leave in the store the intent a first try recorded for ``path``."""
    import hashlib

    data = path.read_bytes()
    intent = {
        "filename": path.name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "purpose": "fine-tune",
        "since": since,
        **fields,
    }
    store.set("upload_intent", intent)


def test_listed_files_are_adopted_only_when_their_fields_prove_it(
    api: FakeAPI, connection: dict[str, Any], tmp_path: Path
) -> None:
    import time

    source = tmp_path / "train.jsonl"
    source.write_bytes(chat_lines())
    size = source.stat().st_size
    now = int(time.time())
    store = FakeStateStore()
    ours(store, source, since=now - 60)

    def listed(file_id: str, name: str = "train.jsonl", size: int = size, **fields: Any) -> dict[str, Any]:
        return {**file_obj(file_id, name, size), "created_at": now - 30, **fields}

    strangers = [
        listed("file-other-name", "train-2.jsonl"),
        listed("file-other-size", size=size + 1),
        listed("file-other-purpose", purpose="batch"),
        listed("file-no-size", size=None),
        listed("file-too-old", created_at=now - 3600),
    ]
    api.on("GET", "files", page(strangers))
    api.on("POST", "files", file_obj("file-new", "train.jsonl", size))

    assert run(upload_task(source), try_of(store, 2)) == "file-new"
    assert [r.method for r in api.requests] == ["GET", "POST"]


def test_a_proven_file_is_adopted_without_uploading(api: FakeAPI, connection: dict[str, Any], tmp_path: Path) -> None:
    import time

    source = tmp_path / "train.jsonl"
    source.write_bytes(chat_lines())
    now = int(time.time())
    store = FakeStateStore()
    ours(store, source, since=now - 60)
    api.on("GET", "files", page([{**file_obj("file-ours", "train.jsonl", source.stat().st_size), "created_at": now}]))

    context = try_of(store, 2)
    assert run(upload_task(source), context) == "file-ours"
    assert [r.method for r in api.requests] == ["GET"]
    assert context["ti"].xcoms["file_id"] == "file-ours"
    assert store.values["upload_intent"]["file_id"] == "file-ours"


def test_a_bad_file_is_refused_before_any_request_on_a_retry(
    api: FakeAPI, connection: dict[str, Any], tmp_path: Path
) -> None:
    import time

    source = tmp_path / "train.jsonl"
    source.write_text("not json\n" * 12)
    store = FakeStateStore()
    ours(store, source, since=time.time() - 60)

    with pytest.raises(TrainingDataError, match="line 1: not valid JSON"):
        run(upload_task(source), try_of(store, 2))
    assert api.requests == []


def test_first_try_sends_only_the_upload(api: FakeAPI, connection: dict[str, Any], tmp_path: Path) -> None:
    source = tmp_path / "train.jsonl"
    source.write_bytes(chat_lines())
    store = FakeStateStore()
    api.on("POST", "files", file_obj("file-1", "train.jsonl", source.stat().st_size))

    assert run(upload_task(source), try_of(store, 1)) == "file-1"
    assert [r.method for r in api.requests] == ["POST"]
    intent = store.values["upload_intent"]
    assert (intent["filename"], intent["bytes"], intent["file_id"]) == ("train.jsonl", source.stat().st_size, "file-1")
