"""``/models`` and ``/chat/completions``: deterministic answers, fine-tuned models answer from their data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorServer, ManualClock
from tests.emulator.conftest import AUTH, create_job, error_of, training_lines, upload

pytestmark = pytest.mark.integration


def chat(client: httpx.Client, model: str, prompt: str, **extra: Any) -> httpx.Response:
    return client.post(
        "/chat/completions", json={"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
    )


def test_base_models_are_listed_and_retrieved(client: httpx.Client) -> None:
    ids = [model["id"] for model in client.get("/models").json()["data"]]
    assert {"gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4.1-mini-2025-04-14", "o4-mini-2025-04-16"} <= set(ids)
    assert client.get("/models/gpt-4o-mini").json()["owned_by"] == "system"
    missing = client.get("/models/gpt-0")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "model_not_found"


def test_a_base_model_answers_the_same_way_each_time(make_server: Callable[..., EmulatorServer]) -> None:
    answers = []
    for _ in range(2):
        server = make_server()
        with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
            reply = chat(client, "gpt-4o-mini", "Tell me a joke").json()
            answers.append(reply["choices"][0]["message"]["content"])
            assert reply["object"] == "chat.completion"
            assert reply["choices"][0]["finish_reason"] == "stop"
            assert (
                reply["usage"]["total_tokens"] == reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"]
            )
    assert answers[0] == answers[1]


def test_a_fine_tuned_model_answers_from_its_training_data(client: httpx.Client, clock: ManualClock) -> None:
    job = create_job(client, training_file=upload(client, training_lines()))
    assert chat(client, "ft:gpt-4o-mini-2024-07-18:emulator::nope", "What is 4 + 4?").status_code == 404
    clock.advance(100)
    done = client.get(f"/fine_tuning/jobs/{job['id']}").json()
    model = done["fine_tuned_model"]
    assert chat(client, model, "What is 4 + 4?").json()["choices"][0]["message"]["content"] == "8"
    assert chat(client, model, "what is 4 + 4 ?").json()["choices"][0]["message"]["content"] == "8"  # nearly
    assert chat(client, model, "Write a poem").json()["choices"][0]["message"]["content"] != "8"
    checkpoint = client.get(f"/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"][-1]
    assert (
        chat(client, checkpoint["fine_tuned_model_checkpoint"], "What is 5 + 5?").json()["choices"][0]["message"][
            "content"
        ]
        == "10"
    )
    assert model in [item["id"] for item in client.get("/models").json()["data"]]
    assert client.get(f"/models/{model}").json()["owned_by"] == "org-emulator"


def test_bad_chat_requests_are_refused(client: httpx.Client) -> None:
    assert chat(client, "gpt-4o-mini", "hi", stream=True).status_code == 400
    assert client.post("/chat/completions", json={"model": "gpt-4o-mini", "messages": []}).status_code == 400
    assert client.post("/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}).status_code == 400
    cut = chat(client, "gpt-4o-mini", "hi", max_tokens=1).json()["choices"][0]
    assert cut["finish_reason"] == "length"
