"""Seeded fault injection: 5xx, 429 with retry-after, dropped connections, latency, and the counters."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer, FaultConfig
from tests.emulator.conftest import API_KEY, AUTH, error_of, jsonl, training_lines

pytestmark = pytest.mark.integration


def outcomes(server: EmulatorServer, count: int) -> list[str]:
    """What each of ``count`` requests got: a status, or 'drop'."""
    seen = []
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=5) as http:
        for _ in range(count):
            try:
                seen.append(str(http.get("/files").status_code))
            except httpx.TransportError:
                seen.append("drop")
    return seen


def test_same_seed_same_faults_and_another_seed_other_faults(make_server: Callable[..., EmulatorServer]) -> None:
    faults = FaultConfig(seed=11, error_rate=0.2, rate_limit_rate=0.2, drop_rate=0.1)
    first = outcomes(make_server(faults=faults), 60)
    second = outcomes(make_server(faults=faults), 60)
    other = outcomes(make_server(faults=FaultConfig(seed=12, error_rate=0.2, rate_limit_rate=0.2, drop_rate=0.1)), 60)
    assert first == second
    assert first != other
    assert {"200", "429", "drop"} <= set(first)
    assert set(first) & {"500", "502", "503"}


def test_a_429_carries_retry_after_and_the_api_error_shape(make_server: Callable[..., EmulatorServer]) -> None:
    server = make_server(faults=FaultConfig(rate_limit_rate=1.0, retry_after=2.5))
    response = httpx.get(server.base_url + "/files", headers=AUTH)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.headers["retry-after-ms"] == "2500"
    assert response.headers["x-request-id"].startswith("req_")
    assert error_of(response)["code"] == "rate_limit_exceeded"
    assert error_of(response)["type"] == "requests"


def test_server_errors_have_the_api_error_shape(make_server: Callable[..., EmulatorServer]) -> None:
    server = make_server(faults=FaultConfig(error_rate=1.0, seed=3))
    statuses = set()
    for _ in range(20):
        response = httpx.get(server.base_url + "/fine_tuning/jobs", headers=AUTH)
        statuses.add(response.status_code)
        assert error_of(response)["type"] == "server_error"
    assert statuses == {500, 502, 503}


@pytest.mark.parametrize(("loop", "http"), [("auto", "auto"), ("asyncio", "h11")])
def test_a_dropped_connection_is_a_transport_error(loop: str, http: str, clock: Any) -> None:
    config = EmulatorConfig(api_key=API_KEY, clock=clock, faults=FaultConfig(drop_rate=1.0, match="^GET "))
    with (
        EmulatorServer(config, loop=loop, http=http) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as http_client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            http_client.get("/files")
        # The server survives, and a request the match leaves alone is answered.
        response = http_client.post("/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "fine-tune"})
        assert response.status_code == 200
        assert server.emulator.counters.faults["drop"] == 1


def test_latency_is_added(make_server: Callable[..., EmulatorServer]) -> None:
    server = make_server(faults=FaultConfig(latency=0.2))
    started = time.perf_counter()
    assert httpx.get(server.base_url + "/files", headers=AUTH).status_code == 200
    assert time.perf_counter() - started >= 0.2


def test_faults_change_at_run_time_and_spare_the_admin_endpoints(server: EmulatorServer) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH) as http:
        assert http.get("/v1/files").status_code == 200
        changed = http.post("/_emulator/faults", json={"error_rate": 1.0, "match": "/v1/files"})
        assert changed.json()["error_rate"] == 1.0
        assert http.get("/_emulator/faults").json()["match"] == "/v1/files"
        assert http.get("/v1/files").status_code >= 500
        assert http.get("/v1/fine_tuning/jobs").status_code == 200
        assert http.get("/_emulator/counters").status_code == 200
        assert http.post("/_emulator/faults", json={"error_rate": 2}).status_code == 400
        assert http.post("/_emulator/faults", json={"bogus": 1}).status_code == 400
        http.post("/_emulator/faults", json={"error_rate": 0.0})
        assert http.get("/v1/files").status_code == 200


def test_counters_prove_a_retried_create_made_one_job(make_server: Callable[..., EmulatorServer]) -> None:
    # The create is handled, then its answer is lost: exactly the case where a blind retry makes two jobs.
    server = make_server(faults=FaultConfig(drop_rate=1.0, match=r"^POST /v1/fine_tuning/jobs$", after_processing=True))
    with httpx.Client(base_url=server.base_url, headers=AUTH) as http:
        file_id = http.post(
            "/files", files={"file": ("t.jsonl", jsonl(training_lines()))}, data={"purpose": "fine-tune"}
        ).json()["id"]
        body = {"model": "gpt-4o-mini", "training_file": file_id, "metadata": {"task": "t1"}}
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/fine_tuning/jobs", json=body)
        # What a careful client does instead of re-sending: look the job up by its tag.
        found = http.get("/fine_tuning/jobs", params={"metadata[task]": "t1"}).json()["data"]
        assert len(found) == 1
        counters = http.get(server.url + "/_emulator/counters").json()
    assert counters["jobs_created"] == 1
    assert counters["requests"]["POST /v1/fine_tuning/jobs"] == 1
    assert counters["requests"]["GET /v1/fine_tuning/jobs"] == 1
    assert counters["faults"] == {"drop": 1}
    assert counters["statuses"]["200"] == 2


def test_reset_zeroes_the_counters_and_keeps_the_objects(server: EmulatorServer) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH) as http:
        http.post("/v1/files", files={"file": ("t.jsonl", b"{}\n")}, data={"purpose": "fine-tune"})
        assert http.get("/_emulator/counters").json()["files_created"] == 1
        reset = http.post("/_emulator/reset").json()
        assert reset["total_requests"] == 0
        assert reset["files_created"] == 0
        assert len(http.get("/v1/files").json()["data"]) == 1
        assert http.get("/_emulator/counters", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert http.get("/_emulator/health", headers={}).json() == {"status": "ok"}


def test_fault_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="at most 1 together"):
        FaultConfig(error_rate=0.6, drop_rate=0.6)
    with pytest.raises(ValueError, match="must be a number"):
        FaultConfig().updated({"latency": "slow"})
    assert json.loads(json.dumps(FaultConfig(match="x").as_dict()))["match"] == "x"


def test_the_hook_makes_one_job_when_the_create_answer_is_lost(
    make_server: Callable[..., EmulatorServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_finetune.core.client import RetryPolicy
    from airflow_provider_finetune.hooks.finetune import FineTuningHook

    # Every job create is handled and its answer lost.
    server = make_server(faults=FaultConfig(drop_rate=1.0, match=r"^POST /v1/fine_tuning/jobs$", after_processing=True))
    connection = {"conn_type": "finetune", "host": server.base_url, "password": API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(connection))
    hook = FineTuningHook(retry_policy=RetryPolicy(initial_delay=0.0, max_delay=0.0, jitter=0.0))
    try:
        file_id = httpx.post(
            server.base_url + "/files",
            headers=AUTH,
            files={"file": ("t.jsonl", jsonl(training_lines()))},
            data={"purpose": "fine-tune"},
        ).json()["id"]
        request = {"model": "gpt-4o-mini", "training_file": file_id}
        job, created = hook.ensure_job(request, tag="dag.task.run-1.0")
        again, created_again = hook.ensure_job(request, tag="dag.task.run-1.0")
    finally:
        hook.close()
    assert again.id == job.id
    assert not created_again
    counters = httpx.get(server.url + "/_emulator/counters", headers=AUTH).json()
    assert counters["jobs_created"] == 1
    assert counters["faults"]["drop"] == 1
    assert not created  # found by its tag after the lost answer, not created a second time


def test_counters_count_distinct_client_connections(server: EmulatorServer) -> None:
    # One client keeps its connection alive: three requests, one connection.
    with httpx.Client(base_url=server.base_url, headers=AUTH) as http:
        for _ in range(3):
            assert http.get("/fine_tuning/jobs").status_code == 200
    # A client per request: two more connections.
    for _ in range(2):
        with httpx.Client(base_url=server.base_url, headers=AUTH) as http:
            assert http.get("/files").status_code == 200
    with httpx.Client(base_url=server.url, headers=AUTH) as admin:
        # The admin endpoints' own connection is not counted: only /v1 requests are.
        counters = admin.get("/_emulator/counters").json()
        assert counters["total_requests"] == 5
        assert counters["connections"] == 3
        assert admin.post("/_emulator/reset").json()["connections"] == 0
    assert server.emulator.counters.as_dict()["connections"] == 0


def test_the_connection_counter_keeps_distinct_host_port_pairs() -> None:
    from airflow_provider_finetune.emulator.counters import Counters

    counters = Counters()
    for client in [("127.0.0.1", 5000), ("127.0.0.1", 5000), ("127.0.0.1", 5001), ("::1", 5000), None]:
        counters.connection(client)
    assert counters.as_dict()["connections"] == 3
    counters.reset()
    assert counters.as_dict()["connections"] == 0
