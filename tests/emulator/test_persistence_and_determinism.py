"""SQLite persistence across restarts (running jobs go on) and determinism for a seed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorServer, ManualClock
from tests.emulator.conftest import ADMIN, AUTH, create_job, jsonl, training_lines, upload

pytestmark = pytest.mark.integration


def test_a_restart_keeps_everything_and_running_jobs_go_on(
    make_server: Callable[..., EmulatorServer], clock: ManualClock, tmp_path: Path
) -> None:
    db = tmp_path / "state" / "emulator.db"
    server = make_server(db_path=str(db))
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        file_id = upload(client, training_lines())
        done = create_job(client, training_file=file_id, metadata={"run": "1"})
        clock.advance(60)
        model = client.get(f"/fine_tuning/jobs/{done['id']}").json()["fine_tuned_model"]
        running = create_job(client, training_file=file_id, metadata={"run": "2"})
        paused = create_job(client, training_file=file_id)
        clock.advance(12)  # 4 s into training at the restart
        assert client.post(f"/fine_tuning/jobs/{paused['id']}/pause").status_code == 200
        before = client.get(f"/fine_tuning/jobs/{running['id']}").json()
        assert before["status"] == "running"
        granted = client.post(
            f"/fine_tuning/checkpoints/{model}/permissions", json={"project_ids": ["proj_a"]}, headers=ADMIN
        ).json()
        data = b"0123456789"
        pending = client.post(
            "/uploads", json={"filename": "u.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "text/jsonl"}
        ).json()
        part = client.post(f"/uploads/{pending['id']}/parts", files={"data": ("b", data[:4])}).json()
        events_before = client.get(f"/fine_tuning/jobs/{running['id']}/events", params={"limit": 100}).json()["data"]
    server.stop()
    assert db.exists()

    restarted = make_server(db_path=str(db))
    with httpx.Client(base_url=restarted.base_url, headers=AUTH) as client:
        assert client.get(f"/files/{file_id}/content").content == jsonl(training_lines())
        after = client.get(f"/fine_tuning/jobs/{running['id']}").json()
        assert after == before
        events_after = client.get(f"/fine_tuning/jobs/{running['id']}/events", params={"limit": 100}).json()["data"]
        assert events_after == events_before
        assert [job["id"] for job in client.get("/fine_tuning/jobs", params={"metadata[run]": "2"}).json()["data"]] == [
            running["id"]
        ]
        assert client.get(f"/fine_tuning/jobs/{paused['id']}").json()["status"] == "paused"
        listed = client.get(f"/fine_tuning/checkpoints/{model}/permissions", headers=ADMIN).json()
        assert [item["id"] for item in listed["data"]] == [granted["data"][0]["id"]]
        # The upload goes on where it stopped.
        second = client.post(f"/uploads/{pending['id']}/parts", files={"data": ("b", data[4:])}).json()
        completed = client.post(
            f"/uploads/{pending['id']}/complete",
            json={"part_ids": [part["id"], second["id"]], "md5": hashlib.md5(data).hexdigest()},
        ).json()
        assert completed["status"] == "completed"
        # New ids go on from the stored sequence.
        assert upload(client, training_lines()) != file_id

        clock.advance(60)
        finished = client.get(f"/fine_tuning/jobs/{running['id']}").json()
        assert finished["status"] == "succeeded"
        assert client.get(f"/files/{finished['result_files'][0]}").status_code == 200
        assert client.post(f"/fine_tuning/jobs/{paused['id']}/resume").json()["status"] == "queued"
    restarted.stop()

    # Time spent down counts: a job running when the emulator stopped has finished when it comes back.
    again = make_server(db_path=str(db))
    clock.advance(3600)
    with httpx.Client(base_url=again.base_url, headers=AUTH) as client:
        assert client.get(f"/fine_tuning/jobs/{paused['id']}").json()["status"] == "succeeded"


def scenario(server: EmulatorServer, clock: ManualClock) -> list[Any]:
    """A fixed sequence of requests; returns every answer."""
    answers: list[Any] = []
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        file_id = upload(client, training_lines(15))
        job = create_job(client, training_file=file_id, suffix="same")
        answers.append(job)
        clock.advance(20)
        answers.append(client.post(f"/fine_tuning/jobs/{job['id']}/pause").json())
        clock.advance(5)
        answers.append(client.post(f"/fine_tuning/jobs/{job['id']}/resume").json())
        clock.advance(200)
        answers.append(client.get(f"/fine_tuning/jobs/{job['id']}").json())
        answers.append(client.get(f"/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json())
        answers.append(client.get(f"/fine_tuning/jobs/{job['id']}/checkpoints").json())
        answers.append(client.get(f"/files/{answers[3]['result_files'][0]}/content").text)
        reply = client.post(
            "/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        ).json()
        answers.append(reply["choices"])
    return answers


def test_the_same_seed_gives_the_same_answers(make_server: Callable[..., EmulatorServer]) -> None:
    def run(seed: int) -> list[Any]:
        clock = ManualClock(1_800_000_000)
        return scenario(make_server(seed=seed, clock=clock), clock)

    first, second, other = run(42), run(42), run(43)
    assert first[3]["status"] == "succeeded"
    assert first == second
    assert other[0]["id"] != first[0]["id"]
    assert other[3]["fine_tuned_model"] != first[3]["fine_tuned_model"]
    assert other[6] != first[6]  # the metrics of the results file
