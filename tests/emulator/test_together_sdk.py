"""The official ``together`` SDK drives a whole lifecycle against the emulator's Together dialect.

Upload (its redirect, the ``PUT`` of the content and the check after it), create (the model limits and price
estimate calls the SDK makes first), list, retrieve, events, checkpoints, cancel, and a job continued from a
checkpoint, with the SDK given ``{emulator}/together/v1`` as its base URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import together

from airflow_provider_finetune.emulator import EmulatorServer, ManualClock
from tests.emulator.conftest import API_KEY, dpo_lines, jsonl, training_lines

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"


class Seen:
    """An httpx response hook: the method and path of every request the SDK sends."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []

    def __call__(self, response: httpx.Response) -> None:
        self.requests.append((response.request.method, response.request.url.path, response.status_code))


def sdk(server: EmulatorServer, seen: Seen) -> together.Together:
    http = httpx.Client(event_hooks={"response": [seen]}, follow_redirects=True)
    return together.Together(base_url=server.url + "/together/v1", api_key=API_KEY, http_client=http, max_retries=0)


def _file(tmp_path: Path, name: str, lines: list[Any]) -> Path:
    path = tmp_path / name
    path.write_bytes(jsonl(lines))
    return path


def test_sdk_drives_a_whole_lifecycle(make_server: Any, clock: ManualClock, tmp_path: Path) -> None:
    server = make_server(speed=50)
    seen = Seen()
    client = sdk(server, seen)

    uploaded = client.files.upload(_file(tmp_path, "train.jsonl", training_lines(20)), purpose="fine-tune")
    assert uploaded.id.startswith("file-")
    assert uploaded.processed is True
    checked = client.files.retrieve(uploaded.id)
    assert checked.processing_status == "COMPLETED"
    assert checked.validation_report is not None
    assert checked.validation_report.valid is True
    paths = [(method, path.split("/together")[-1]) for method, path, _ in seen.requests]
    assert paths[:3] == [
        ("POST", "/v1/files"),
        ("PUT", f"/storage/{uploaded.id}"),
        ("POST", f"/v1/files/{uploaded.id}/preprocess"),
    ]
    assert seen.requests[0][2] == 302  # the redirect to the presigned address

    job = client.fine_tuning.create(
        training_file=uploaded.id, model=MODEL, n_epochs=2, n_checkpoints=2, lora=True, suffix="sdk"
    )
    calls = [path.split("/together")[-1] for _, path, _ in seen.requests[4:]]
    assert calls == ["/v1/fine-tunes/models/limits", "/v1/fine-tunes/estimate-price", "/v1/fine-tunes"]
    assert job.status == "pending"
    assert job.model == MODEL

    assert [item.id for item in client.fine_tuning.list().data] == [job.id]
    clock.advance(3600)
    done = client.fine_tuning.retrieve(job.id)
    assert done.status == "completed"
    assert done.x_model_output_name
    assert done.total_price is not None
    events = client.fine_tuning.list_events(job.id).data
    assert events[0].type == "JOB_PENDING"
    assert events[-1].type == "JOB_COMPLETE"
    checkpoints = client.fine_tuning.list_checkpoints(job.id).data
    assert checkpoints
    assert all(item.path for item in checkpoints)

    # Continue from a checkpoint, as DPO with full training; then cancel it.
    prefs = client.files.upload(_file(tmp_path, "prefs.jsonl", dpo_lines(12)), purpose="fine-tune")
    step = checkpoints[0].step
    follow = client.fine_tuning.create(
        training_file=prefs.id,
        from_checkpoint=f"{job.id}:{step}",
        training_method="dpo",
        dpo_beta=0.2,
        lora=False,
    )
    assert follow.from_checkpoint == f"{job.id}:{step}"
    cancelled = client.fine_tuning.cancel(follow.id)
    assert cancelled.status == "cancel_requested"
    assert client.fine_tuning.retrieve(follow.id).status == "cancelled"


def test_the_check_after_upload_reports_an_invalid_file(make_server: Any, tmp_path: Path) -> None:
    server = make_server()
    seen = Seen()
    bad = _file(tmp_path, "bad.jsonl", [{"nothing": "useful"}] * 3)
    client = sdk(server, seen)
    uploaded = client.files.upload(bad, purpose="fine-tune", check=False)
    assert uploaded.processed is False
    checked = client.files.retrieve(uploaded.id)
    assert checked.processing_status == "INVALID_FORMAT"
    assert checked.validation_report is not None
    assert checked.validation_report.valid is False


def test_the_presigned_address_refuses_a_wrong_signature_or_checksum(server: EmulatorServer) -> None:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        form = {"purpose": "fine-tune", "file_name": "a.jsonl", "file_type": "jsonl", "checksum": "0" * 64}
        answer = http.post("/together/v1/files", files={k: (None, v) for k, v in form.items()})
        assert answer.status_code == 302
        location = answer.headers["location"]
        assert http.put(location.split("?")[0] + "?signature=forged", content=b"{}").status_code == 403
        assert http.put(location, content=b"{}").status_code == 400  # not the checksum the upload named
        # Nothing arrived: the file is not listed.
        assert http.get("/together/v1/files").json()["data"] == []


def test_the_estimate_refuses_a_model_together_does_not_fine_tune(make_server: Any, tmp_path: Path) -> None:
    server = make_server()
    client = sdk(server, Seen())
    uploaded = client.files.upload(_file(tmp_path, "train.jsonl", training_lines(20)), purpose="fine-tune")
    sft = {"method": "sft", "train_on_inputs": "auto"}
    with pytest.raises(together.NotFoundError) as raised:
        client.fine_tuning.estimate_price(
            training_file=uploaded.id, model="no-such/model", training_method=sft, training_type={"type": "Full"}
        )
    body = raised.value.body
    assert isinstance(body, dict)
    error = body["error"]  # Together's ErrorData
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert "no-such/model" in error["message"]
    with pytest.raises(together.BadRequestError, match="model or from_checkpoint"):
        client.fine_tuning.estimate_price(training_file=uploaded.id, training_method=sft)
    known = client.fine_tuning.estimate_price(training_file=uploaded.id, model=MODEL, training_method=sft)
    assert known.estimation_available is True


def test_a_completed_job_reports_the_price_its_estimate_gave(
    make_server: Any, clock: ManualClock, tmp_path: Path
) -> None:
    from together.lib.utils.tools import NANODOLLAR, finetune_price_to_dollars

    server = make_server()
    client = sdk(server, Seen())
    uploaded = client.files.upload(_file(tmp_path, "train.jsonl", training_lines(20)), purpose="fine-tune")
    estimate = client.fine_tuning.estimate_price(
        training_file=uploaded.id,
        model=MODEL,
        n_epochs=2,
        training_method={"method": "sft", "train_on_inputs": "auto"},
        training_type={"type": "Lora", "lora_r": 8, "lora_alpha": 16},
    )
    assert estimate.estimation_available is True
    assert estimate.estimated_total_price
    job = client.fine_tuning.create(training_file=uploaded.id, model=MODEL, n_epochs=2, lora=True, lora_r=8)
    clock.advance(3600)
    done = client.fine_tuning.retrieve(job.id)
    assert done.status == "completed"
    # Together reports a job's price in nano-dollars (the SDK's finetune_price_to_dollars reads it so).
    assert done.total_price == round(estimate.estimated_total_price * NANODOLLAR)
    assert finetune_price_to_dollars(float(done.total_price)) == pytest.approx(estimate.estimated_total_price)
