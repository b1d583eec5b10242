"""Together's multipart upload of large files: the SDK's own upload manager drives the emulator's, and the hook
sends a file above the single upload's limit in parts (sync and async), aborts what fails, and uses the file the
service already holds of the same content.

The limits are made small here (parts of 5 MiB, S3's least, above a threshold of 8 MiB) so that a file of about
11 MiB goes in three parts; the rule that sizes them is the SDK's, and is checked against it.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_finetune.backends import together_multipart
from airflow_provider_finetune.backends.together import TogetherBackend
from airflow_provider_finetune.core.client import RetryPolicy
from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.emulator.dialects.together import TogetherDialect
from airflow_provider_finetune.emulator.errors import APIError
from airflow_provider_finetune.exceptions import FineTuningAPIError, InvalidRequestError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from tests.backends.together_conformance import TogetherConformance
from tests.hook_doors import async_call

KEY = "together-emulator-key-5ecret"
MIB = 2**20
INITIATE = "POST /together/v1/files/multipart/initiate"
COMPLETE = "POST /together/v1/files/multipart/complete"
ABORT = "POST /together/v1/files/multipart/abort"
PART = "PUT /together/storage/{upload_id}/{part}"
SINGLE = "POST /together/v1/files"


def big_file(size: int = 11 * MIB) -> bytes:
    """A valid conversational JSONL file of about ``size`` bytes."""
    line = {"messages": [{"role": "user", "content": "q" * 200}, {"role": "assistant", "content": "a" * 200}]}
    text = json.dumps(line) + "\n"
    return (text * math.ceil(size / len(text))).encode()[: size // len(text) * len(text)]


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=KEY, seed=11)) as running:
        yield running


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts of 5 MiB above 8 MiB, for the provider and for the SDK alike."""
    import together.lib.resources.files as sdk_files

    monkeypatch.setattr(TogetherBackend, "multipart_threshold", 8 * MIB)
    monkeypatch.setattr(together_multipart, "TARGET_PART", 5 * MIB)
    monkeypatch.setattr(sdk_files, "MULTIPART_THRESHOLD_GB", 8 / 1024)
    monkeypatch.setattr(sdk_files, "TARGET_PART_SIZE_MB", 5)


@pytest.fixture(autouse=True)
def conformance(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[TogetherConformance]:
    """Every request the backend's clients send is one the SDK sends, with the SDK's fields."""
    checker = TogetherConformance("/together/v1", server.url)
    sync_hook, async_hook = checker.hooks()
    make, amake = TogetherBackend.make_client, TogetherBackend.make_async_client
    monkeypatch.setattr(TogetherBackend, "make_client", lambda self: _hooked(make(self), sync_hook))
    monkeypatch.setattr(TogetherBackend, "make_async_client", lambda self: _hooked(amake(self), async_hook))
    yield checker
    assert checker.problems == []


def _hooked(client: Any, hook: Any) -> Any:
    client.event_hooks["request"].append(hook)
    return client


def hook_of(monkeypatch: pytest.MonkeyPatch, server: EmulatorServer) -> FineTuningHook:
    conn = {
        "conn_type": "finetune",
        "host": server.url + "/together/v1",
        "password": KEY,
        "extra": {"service": "together"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FT_TOGETHER_BIG", json.dumps(conn))
    return FineTuningHook("ft_together_big", retry_policy=RetryPolicy(initial_delay=0, max_delay=0, jitter=0))


def requests(server: EmulatorServer) -> dict[str, int]:
    return {k: v for k, v in server.emulator.counters.requests.items() if v}


def test_the_part_rule_is_the_sdk_s() -> None:
    from together.lib.resources.files import _calculate_parts

    for size in (1, 5 * MIB, 250 * MIB, 250 * MIB + 1, 6 * 2**30, 50 * 2**30, 62_500 * MIB + 17):
        assert together_multipart.part_plan(size) == _calculate_parts(size), size


@pytest.mark.usefixtures("small_parts")
def test_the_sdk_s_multipart_upload_is_served_by_the_emulator(server: EmulatorServer, tmp_path: Path) -> None:
    from together import Together

    path = tmp_path / "big.jsonl"
    path.write_bytes(content := big_file())
    client = Together(api_key=KEY, base_url=server.url + "/together/v1", max_retries=0)
    uploaded = client.files.upload(file=path, purpose="fine-tune", check=False)
    assert uploaded.id.startswith("file-")
    assert server.emulator.files.content(uploaded.id) == content
    assert requests(server)[PART] == 3
    assert (requests(server)[INITIATE], requests(server)[COMPLETE]) == (1, 1)


@pytest.mark.usefixtures("small_parts")
def test_the_hook_sends_a_large_file_in_parts_and_the_service_checks_it(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, conformance: TogetherConformance
) -> None:
    hook = hook_of(monkeypatch, server)
    content = big_file()
    uploaded = hook.upload_file(content, filename="big.jsonl")
    assert uploaded.status == "processed"  # the service's check, read from the complete's answer
    assert uploaded.bytes == len(content)
    assert uploaded.filename == "big.jsonl"
    assert server.emulator.files.content(uploaded.id) == content
    counted = requests(server)
    assert (counted[INITIATE], counted[PART], counted[COMPLETE]) == (1, 3, 1)
    assert {("POST", "/files/multipart/initiate"), ("POST", "/files/multipart/complete")} <= conformance.seen
    assert SINGLE not in counted
    assert ABORT not in counted
    # A file under the threshold still goes in one upload.
    hook.upload_file(big_file(2 * MIB), filename="small.jsonl")
    assert requests(server)[SINGLE] == 1


@pytest.mark.usefixtures("small_parts")
def test_the_async_hook_sends_it_in_parts_too(monkeypatch: pytest.MonkeyPatch, server: EmulatorServer) -> None:
    hook = hook_of(monkeypatch, server)
    content = big_file()
    uploaded = asyncio.run(async_call(hook, "upload_file", content, filename="big.jsonl"))
    assert server.emulator.files.content(uploaded.id) == content
    assert requests(server)[PART] == 3


@pytest.mark.usefixtures("small_parts")
def test_a_part_that_fails_aborts_the_upload_and_makes_no_file(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, conformance: TogetherConformance
) -> None:
    received = TogetherDialect.receive_part

    def refuse_the_second(self: TogetherDialect, upload_id: str, number: int, *args: Any) -> str:
        if number == 2:
            raise APIError(403, "Request has expired", code="AccessDenied")
        return received(self, upload_id, number, *args)

    monkeypatch.setattr(TogetherDialect, "receive_part", refuse_the_second)
    hook = hook_of(monkeypatch, server)
    with pytest.raises(FineTuningAPIError, match="Request has expired"):
        hook.upload_file(big_file(), filename="big.jsonl")
    counted = requests(server)
    assert (counted[INITIATE], counted[ABORT]) == (1, 1)
    assert COMPLETE not in counted
    assert ("POST", "/files/multipart/abort") in conformance.seen
    assert hook.list_files().data == []
    assert server.emulator.store.records("together_multipart") == {}  # the service discarded it


@pytest.mark.usefixtures("small_parts")
def test_the_file_the_service_holds_of_the_same_content_is_used(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer
) -> None:
    hook = hook_of(monkeypatch, server)
    content = big_file()
    first = hook.upload_file(content, filename="big.jsonl")
    again = hook.upload_file(content, filename="big.jsonl")  # a 409 to the initiate names the first
    assert again.id == first.id
    counted = requests(server)
    assert (counted[INITIATE], counted[PART], counted[COMPLETE]) == (2, 3, 1)


def test_a_file_above_together_s_largest_is_refused_before_any_request(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer
) -> None:
    monkeypatch.setattr(TogetherBackend, "max_file_size", 4 * MIB)
    hook = hook_of(monkeypatch, server)
    with pytest.raises(InvalidRequestError, match="at most 4194304 bytes") as refused:
        hook.upload_file(big_file(5 * MIB), filename="big.jsonl")
    assert refused.value.field == "file"
    assert requests(server) == {}


class BreaksAtThePart(io.BytesIO):
    """A file whose second part cannot be read (a disk error), though its checksum could be."""

    def read(self, size: int | None = -1) -> bytes:
        if size == 5 * MIB and self.tell() == 5 * MIB:
            raise OSError("Input/output error")
        return super().read(size)


@pytest.mark.usefixtures("small_parts")
def test_a_failure_that_is_not_the_service_s_aborts_the_upload_too(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer
) -> None:
    hook = hook_of(monkeypatch, server)
    with pytest.raises(OSError, match="Input/output error"):
        hook.upload_file(BreaksAtThePart(big_file()), filename="big.jsonl")
    counted = requests(server)
    assert (counted[INITIATE], counted[PART], counted[ABORT]) == (1, 1, 1)
    assert COMPLETE not in counted
    assert server.emulator.store.records("together_multipart") == {}


@pytest.mark.usefixtures("small_parts")
def test_a_file_together_s_check_finds_invalid_is_refused_by_name_and_not_kept(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer
) -> None:
    hook = hook_of(monkeypatch, server)
    line = json.dumps({"nothing": "useful" * 40}) + "\n"
    bad = (line * (11 * MIB // len(line))).encode()
    with pytest.raises(InvalidRequestError, match=r"Together's check of bad\.jsonl") as refused:
        hook.upload_file(bad, filename="bad.jsonl")
    assert refused.value.field == "file"
    assert requests(server)[COMPLETE] == 1
    assert ABORT not in requests(server)  # the file was made: deleted, not aborted
    assert hook.list_files().data == []


def test_a_file_named_by_a_409_is_used_only_when_its_own_fields_say_it_is_this_one() -> None:
    from airflow_provider_finetune.exceptions import ConflictError
    from airflow_provider_finetune.models import FileObject

    class Files:
        def multipart_initiate(self, body: Any) -> str:
            return "initiate"

        def get_file(self, file_id: str) -> str:
            return f"get {file_id}"

    def adopt(existing: dict[str, Any]) -> FileObject:
        steps = together_multipart.multipart_steps(Files(), "big.jsonl", 100, "jsonl", "ab" * 32, "fine-tune")
        assert next(steps) == "initiate"
        assert steps.send(ConflictError(409, "exists", body={"file_id": "file-1"})) == "get file-1"
        try:
            steps.send(FileObject.model_validate({"id": "file-1", "object": "file", "created_at": 1, **existing}))
        except StopIteration as done:
            return done.value
        raise AssertionError("not ended")

    good = {"bytes": 100, "purpose": "fine-tune", "filename": "big.jsonl", "status": "processed"}
    assert adopt(good).id == "file-1"
    for unlike, why in [
        ({"bytes": 99}, "it has 99 bytes, not 100"),
        ({"purpose": "eval"}, "its purpose is 'eval', not 'fine-tune'"),
        ({"status": "error", "status_details": "bad line 3"}, "Together's check of it failed (bad line 3)"),
    ]:
        with pytest.raises(FineTuningAPIError, match=re.escape(why)):
            adopt({**good, **unlike})


@pytest.mark.usefixtures("small_parts")
def test_the_upload_operator_sends_a_large_file_in_parts(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, tmp_path: Path
) -> None:
    from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator
    from tests.operators.conftest import FakeStateStore, FakeTI

    hook_of(monkeypatch, server)
    source = tmp_path / "big.jsonl"
    source.write_bytes(content := big_file())
    ti = FakeTI()
    task = FineTuningFileUploadOperator(task_id="up", source=source, finetune_conn_id="ft_together_big")
    task.hook.upload_threshold = 4 * MIB  # the Uploads API's threshold does not apply: Together has its own way
    file_id = task.execute({"ti": ti, "task_state_store": FakeStateStore()})  # type: ignore[arg-type]
    assert server.emulator.files.content(file_id) == content
    assert ti.xcoms["bytes"] == len(content)
    assert requests(server)[PART] == 3
