"""A file's content is asked for with an ``Accept`` that every service's declared answer type meets.

The emulator's Azure dialects answer 406, as a strict server does, when the request's ``Accept`` takes none of the
types Azure's own descriptions declare for that answer: ``application/octet-stream`` on v1, it or JSON on the
authoring surface. (OpenAI's own service takes what its SDK sends, ``application/binary``, and so does its dialect.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.emulator.errors import APIError, check_accept
from airflow_provider_finetune.hooks.finetune import FineTuningHook

KEY = "sk-accept-test-5ecret"
CONN_ID = "finetune_accept"
CONTENT = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 10

# Each surface: the path under the emulator's root, the connection's extra.
SURFACES = {
    "openai": ("/v1", {}),
    "azure-v1": ("/openai/v1", {"service": "azure"}),
    "azure-2024-10-21": ("/openai", {"service": "azure", "api_version": "2024-10-21"}),
    "azure-2025-04-01-preview": ("/openai", {"service": "azure", "api_version": "2025-04-01-preview"}),
}


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=KEY, speed=50, seed=7)) as running:
        yield running


@pytest.mark.parametrize("surface", SURFACES)
def test_a_file_content_is_read_on_every_surface(
    surface: str, server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix, extra = SURFACES[surface]
    conn = {"conn_type": "finetune", "host": server.url + prefix, "password": KEY, "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    hook = FineTuningHook(finetune_conn_id=CONN_ID)
    uploaded = hook.upload_file(CONTENT, purpose="fine-tune", filename="train.jsonl")

    assert hook.get_file_content(uploaded.id) == CONTENT


@pytest.mark.parametrize(
    ("accept", "produced", "refused"),
    [
        ("application/json", ("application/octet-stream",), True),
        ("application/binary", ("application/octet-stream",), True),  # what an SDK sends, and a strict server refuses
        ("application/binary", ("application/octet-stream", "application/json"), True),
        ("*/*", ("application/octet-stream",), False),
        ("application/*", ("application/octet-stream",), False),
        ("application/octet-stream;q=0, */*;q=0.1", ("application/octet-stream",), False),
        ("application/octet-stream;q=0", ("application/octet-stream",), True),
        (None, ("application/octet-stream",), False),
    ],
)
def test_the_emulator_refuses_an_accept_no_declared_type_meets(
    accept: str | None, produced: tuple[str, ...], refused: bool
) -> None:
    if refused:
        with pytest.raises(APIError) as raised:
            check_accept(accept, *produced)
        assert raised.value.status == 406
        assert produced[0] in raised.value.message
    else:
        check_accept(accept, *produced)


def test_a_refused_accept_reaches_the_client_as_406(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "finetune", "host": server.url + "/openai/v1", "password": KEY, "extra": {"service": "azure"}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    uploaded = FineTuningHook(finetune_conn_id=CONN_ID).upload_file(CONTENT, filename="train.jsonl")
    with httpx.Client(base_url=server.url, headers={"api-key": KEY}, timeout=10) as client:
        answer = client.get(f"/openai/v1/files/{uploaded.id}/content", headers={"Accept": "application/json"})
    assert answer.status_code == 406, answer.text
    assert answer.json()["error"]["code"] == "not_acceptable"
