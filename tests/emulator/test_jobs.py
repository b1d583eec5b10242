"""Fine-tuning jobs over real loopback HTTP, with an injected clock: the trainer's state machine, file
validation, pause/resume/cancel legality, events, checkpoints, listing and its metadata filter."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator import FORCE_FAILURE_KEY, ManualClock
from tests.emulator.conftest import (
    GRADER,
    create_job,
    dpo_lines,
    error_of,
    jsonl,
    rft_lines,
    training_lines,
    upload,
)

pytestmark = pytest.mark.integration

# With 12 examples at speed 1: validating 3 s, queued 5 s, then 8 epochs of 12 steps (96 steps) in 48 s.
VALIDATED, STARTED, FINISHED = 3.0, 8.0, 56.0


def get_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/fine_tuning/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def all_events(client: httpx.Client, job_id: str, page_size: int = 100) -> list[dict[str, Any]]:
    """Every event of a job, newest first, walking the pages with `after`."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": page_size}
    while True:
        page = client.get(f"/fine_tuning/jobs/{job_id}/events", params=params).json()
        events += page["data"]
        if not page["has_more"]:
            return events
        params["after"] = page["data"][-1]["id"]


def new_job(client: httpx.Client, count: int = 12, **body: Any) -> dict[str, Any]:
    return create_job(client, training_file=upload(client, training_lines(count)), **body)


def test_a_job_goes_through_its_phases_as_time_passes(client: httpx.Client, clock: ManualClock) -> None:
    job = new_job(client, suffix="phases")
    created = job["created_at"]
    assert job["status"] == "validating_files"
    assert job["hyperparameters"] == {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
    assert job["estimated_finish"] is None
    assert job["finished_at"] is None
    assert job["error"] is None
    seen = []
    for moment in (VALIDATED - 0.1, VALIDATED + 0.1, STARTED + 0.1, FINISHED - 0.1, FINISHED + 0.1):
        clock.advance(moment - (clock() - created))
        seen.append(get_job(client, job["id"])["status"])
    assert seen == ["validating_files", "queued", "running", "running", "succeeded"]

    done = get_job(client, job["id"])
    resolved = {"batch_size": 1, "learning_rate_multiplier": 1.8, "n_epochs": 8}
    assert done["hyperparameters"] == resolved
    assert done["method"] == {"type": "supervised", "supervised": {"hyperparameters": resolved}}
    assert done["finished_at"] == created + int(FINISHED)
    assert done["fine_tuned_model"].startswith("ft:gpt-4o-mini-2024-07-18:emulator:phases:")
    assert done["trained_tokens"] > 0
    assert done["estimated_finish"] is None

    events = all_events(client, job["id"])
    messages = [event["message"] for event in reversed(events)]
    assert messages[:4] == [
        f"Created fine-tuning job: {job['id']}",
        f"Validating training file: {job['training_file']}",
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
    ]
    assert messages[-2:] == [
        f"New fine-tuned model created: {done['fine_tuned_model']}",
        "The job has successfully completed",
    ]
    metrics = [event["data"] for event in events if event["type"] == "metrics"]
    assert len(metrics) == 96
    assert metrics[0]["step"] == 96
    assert metrics[0]["total_steps"] == 96
    assert {"step", "train_loss", "train_mean_token_accuracy"} <= set(metrics[0])
    assert metrics[0]["train_loss"] < metrics[-1]["train_loss"]

    checkpoints = client.get(f"/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert [item["step_number"] for item in checkpoints["data"]] == [96, 84, 72]
    assert all(
        item["fine_tuned_model_checkpoint"].endswith(f":ckpt-step-{item['step_number']}")
        for item in checkpoints["data"]
    )
    results = client.get(f"/files/{done['result_files'][0]}")
    assert results.json()["purpose"] == "fine-tune-results"
    csv = client.get(f"/files/{done['result_files'][0]}/content").text.splitlines()
    assert len(csv) == 97
    assert csv[1].startswith("1,")


def test_estimated_finish_while_running(client: httpx.Client, clock: ManualClock) -> None:
    job = new_job(client)
    clock.advance(VALIDATED + 0.5)
    queued = get_job(client, job["id"])
    assert queued["status"] == "queued"
    assert queued["estimated_finish"] == job["created_at"] + int(FINISHED)
    clock.advance(STARTED)
    assert get_job(client, job["id"])["estimated_finish"] == job["created_at"] + int(FINISHED)


def test_steps_come_from_examples_epochs_and_batch_size(client: httpx.Client, clock: ManualClock) -> None:
    hyperparameters = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    job = new_job(client, 25, method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}})
    clock.advance(1000)
    done = get_job(client, job["id"])
    assert done["hyperparameters"] == {"batch_size": 4, "learning_rate_multiplier": 0.5, "n_epochs": 2}
    steps = [e["data"]["step"] for e in all_events(client, job["id"]) if e["type"] == "metrics"]
    assert steps[0] == 14  # ceil(25 / 4) * 2
    checkpoints = client.get(f"/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    assert [item["step_number"] for item in checkpoints] == [14, 7]


def test_deprecated_top_level_hyperparameters_are_honoured(client: httpx.Client, clock: ManualClock) -> None:
    job = new_job(client, hyperparameters={"n_epochs": 1})
    clock.advance(VALIDATED + 0.1)
    assert get_job(client, job["id"])["method"]["supervised"]["hyperparameters"]["n_epochs"] == 1


def test_a_bad_training_file_fails_the_job_naming_the_line(client: httpx.Client, clock: ManualClock) -> None:
    lines: list[Any] = training_lines(12)
    lines[2] = '{"messages": [{"role": "user", "content": "hi"}'  # line 3: not JSON
    job = create_job(client, training_file=upload(client, lines))
    assert job["status"] == "validating_files"
    clock.advance(VALIDATED + 0.1)
    failed = get_job(client, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "invalid_training_file"
    assert failed["error"]["param"] == "training_file"
    assert "line 3" in failed["error"]["message"]
    assert failed["finished_at"] == job["created_at"] + int(VALIDATED)
    assert failed["fine_tuned_model"] is None
    assert failed["trained_tokens"] is None
    events = all_events(client, job["id"])
    assert events[0]["level"] == "error"
    assert "line 3" in events[0]["message"]
    assert client.get(f"/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"] == []


def test_a_file_needs_ten_examples(client: httpx.Client, clock: ManualClock) -> None:
    job = new_job(client, 5)
    clock.advance(VALIDATED + 0.1)
    error = get_job(client, job["id"])["error"]
    assert error["code"] == "invalid_training_file"
    assert "10" in error["message"]


def test_a_bad_validation_file_is_named(client: httpx.Client, clock: ManualClock) -> None:
    training = upload(client, training_lines(12))
    validation = upload(client, [{"prompt": "a", "completion": "b"}], name="valid.jsonl")
    job = create_job(client, training_file=training, validation_file=validation)
    clock.advance(VALIDATED + 0.1)
    error = get_job(client, job["id"])["error"]
    assert error["code"] == "invalid_validation_file"
    assert error["param"] == "validation_file"


def test_a_validation_file_adds_validation_metrics(client: httpx.Client, clock: ManualClock) -> None:
    training = upload(client, training_lines(12))
    validation = upload(client, training_lines(3, start=50), name="valid.jsonl")
    job = create_job(client, training_file=training, validation_file=validation)
    clock.advance(FINISHED + 1)
    metrics = next(e for e in all_events(client, job["id"]) if e["type"] == "metrics")
    assert {"valid_loss", "valid_mean_token_accuracy"} <= set(metrics["data"])
    checkpoint = client.get(f"/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"][0]
    assert {"valid_loss", "full_valid_loss", "full_valid_mean_token_accuracy"} <= set(checkpoint["metrics"])


def test_dpo_needs_preference_examples(client: httpx.Client, clock: ManualClock) -> None:
    method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}}
    good = create_job(client, training_file=upload(client, dpo_lines()), method=method)
    bad = create_job(client, training_file=upload(client, training_lines(12)), method=method)
    clock.advance(VALIDATED + 0.1)
    assert get_job(client, good["id"])["method"]["dpo"]["hyperparameters"]["beta"] == 0.1
    failed = get_job(client, bad["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "invalid_training_file"


def test_reinforcement_takes_a_grader_and_a_reasoning_model(client: httpx.Client, clock: ManualClock) -> None:
    training = upload(client, rft_lines())
    method = {"type": "reinforcement", "reinforcement": {"grader": GRADER}}
    job = create_job(client, model="o4-mini", training_file=training, method=method)
    assert job["method"]["reinforcement"]["grader"] == GRADER
    clock.advance(FINISHED * 3)
    done = get_job(client, job["id"])
    assert done["status"] == "succeeded"
    assert done["method"]["reinforcement"]["hyperparameters"]["eval_interval"] >= 1

    refused = client.post(
        "/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": training, "method": method}
    )
    assert refused.status_code == 400
    assert error_of(refused)["code"] == "unsupported_method"
    no_grader = client.post(
        "/fine_tuning/jobs", json={"model": "o4-mini", "training_file": training, "method": {"type": "reinforcement"}}
    )
    assert no_grader.status_code == 400
    assert "grader" in error_of(no_grader)["param"]
    bad_source = {"type": "python", "name": "p", "source": "def grade(:"}
    bad = client.post(
        "/fine_tuning/jobs",
        json={
            "model": "o4-mini",
            "training_file": training,
            "method": {"type": "reinforcement", "reinforcement": {"grader": bad_source}},
        },
    )
    assert bad.status_code == 400
    assert error_of(bad)["param"] == "method.reinforcement.grader.source"


def test_legacy_models_take_prompt_completion_files(client: httpx.Client, clock: ManualClock) -> None:
    legacy = upload(client, [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)])
    good = create_job(client, model="babbage-002", training_file=legacy)
    chat_for_legacy = create_job(client, model="davinci-002", training_file=upload(client, training_lines()))
    legacy_for_chat = create_job(client, model="gpt-4o-mini", training_file=legacy)
    clock.advance(VALIDATED + 0.1)
    assert get_job(client, good["id"])["status"] == "queued"
    assert get_job(client, chat_for_legacy["id"])["error"]["code"] == "invalid_training_file"
    assert "chat examples" in get_job(client, legacy_for_chat["id"])["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "gpt-9-ultra"}, "model", "model_not_available"),
        ({"training_file": "file-missing"}, "training_file", "invalid_training_file"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
            "method.supervised.hyperparameters.n_epochs",
            None,
        ),
        ({"suffix": ""}, "suffix", None),
        ({"colour": "blue"}, "colour", None),
        ({"metadata": {"k": 1}}, "metadata.k", None),
    ],
)
def test_bad_requests_are_refused_naming_the_field(
    client: httpx.Client, body: dict[str, Any], param: str, code: str | None
) -> None:
    request = {"model": "gpt-4o-mini", "training_file": upload(client, training_lines()), **body}
    response = client.post("/fine_tuning/jobs", json=request)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code


def test_the_same_file_for_training_and_validation_is_refused(client: httpx.Client) -> None:
    file_id = upload(client, training_lines())
    response = client.post(
        "/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": file_id, "validation_file": file_id}
    )
    assert response.status_code == 400
    assert error_of(response)["param"] == "validation_file"


def test_a_training_file_needs_purpose_fine_tune(client: httpx.Client) -> None:
    file_id = upload(client, training_lines(), purpose="batch")
    response = client.post("/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": file_id})
    assert response.status_code == 400
    assert "purpose" in error_of(response)["message"]


def test_a_body_that_is_not_json_is_refused(client: httpx.Client) -> None:
    response = client.post("/fine_tuning/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_request_error"
    assert client.post("/fine_tuning/jobs", json=[1, 2]).status_code == 400


def test_pause_resume_and_cancel_follow_the_rules(client: httpx.Client, clock: ManualClock) -> None:
    job_id = new_job(client)["id"]

    def act(action: str) -> httpx.Response:
        return client.post(f"/fine_tuning/jobs/{job_id}/{action}")

    conflict = act("resume")  # validating: not paused
    assert conflict.status_code == 409
    assert conflict.headers["x-should-retry"] == "false"
    assert error_of(conflict)["code"] == "invalid_job_state"
    assert act("pause").json()["status"] == "paused"
    assert act("pause").status_code == 409
    assert act("resume").json()["status"] == "validating_files"  # no re-queue before the files are validated
    clock.advance(STARTED + 1)
    assert act("resume").status_code == 409  # running
    assert act("pause").json()["status"] == "paused"
    assert act("resume").json()["status"] == "queued"
    assert act("pause").json()["status"] == "paused"  # paused while re-queued
    assert act("cancel").json()["status"] == "cancelled"
    for action in ("pause", "resume", "cancel"):
        assert act(action).status_code == 409
    cancelled = get_job(client, job_id)
    assert cancelled["finished_at"] == int(clock())
    assert cancelled["estimated_finish"] is None
    assert all_events(client, job_id)[0]["message"] == "Fine-tuning job cancelled"

    done = new_job(client)["id"]
    clock.advance(FINISHED + 1)
    for action in ("pause", "resume", "cancel"):
        assert client.post(f"/fine_tuning/jobs/{done}/{action}").status_code == 409
    assert client.post("/fine_tuning/jobs/ftjob-nope/cancel").status_code == 404


def test_a_paused_job_does_not_progress_and_resumes_where_it_stopped(client: httpx.Client, clock: ManualClock) -> None:
    job = new_job(client)
    clock.advance(STARTED + 10)  # 20 of 96 steps (0.5 s each)
    client.post(f"/fine_tuning/jobs/{job['id']}/pause")
    events_when_paused = all_events(client, job["id"])
    paused = get_job(client, job["id"])
    assert paused["status"] == "paused"
    assert paused["estimated_finish"] is None
    clock.advance(3600)
    assert all_events(client, job["id"]) == events_when_paused
    resumed = client.post(f"/fine_tuning/jobs/{job['id']}/resume").json()
    # Re-queued for 2 s, then the remaining 38 s of training.
    assert resumed["estimated_finish"] == int(clock() + 2 + FINISHED - STARTED - 10)
    clock.advance(2.1)
    running = get_job(client, job["id"])
    assert running["status"] == "running"
    latest = next(e for e in all_events(client, job["id"]) if e["type"] == "metrics")
    assert latest["data"]["step"] == 20
    clock.advance(38)
    assert get_job(client, job["id"])["status"] == "succeeded"


def test_a_forced_failure_fails_the_job_half_way(client: httpx.Client, clock: ManualClock) -> None:
    job = new_job(client, metadata={FORCE_FAILURE_KEY: "server_error"})
    clock.advance(STARTED + 10)
    assert get_job(client, job["id"])["status"] == "running"
    clock.advance(FINISHED)
    failed = get_job(client, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"
    assert failed["error"]["param"] is None
    assert "48/96" in failed["error"]["message"]
    assert failed["fine_tuned_model"] is None
    assert failed["result_files"] == []
    assert failed["finished_at"] == job["created_at"] + int(STARTED + 24)
    assert client.get(f"/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"] == []


def test_listing_pages_newest_first_and_filters_by_metadata(client: httpx.Client) -> None:
    file_id = upload(client, training_lines())
    ids = []
    for metadata in ({"team": "a", "env": "prod"}, {"team": "b"}, {"team": "a"}, None, {"team": "a", "env": "prod"}):
        body: dict[str, Any] = {"training_file": file_id}
        if metadata:
            body["metadata"] = metadata
        ids.append(create_job(client, **body)["id"])
    newest_first = list(reversed(ids))

    first = client.get("/fine_tuning/jobs", params={"limit": 2}).json()
    assert [job["id"] for job in first["data"]] == newest_first[:2]
    assert first["has_more"]
    rest = client.get("/fine_tuning/jobs", params={"limit": 10, "after": first["data"][-1]["id"]}).json()
    assert [job["id"] for job in rest["data"]] == newest_first[2:]
    assert not rest["has_more"]

    def filtered(**params: Any) -> list[str]:
        return [job["id"] for job in client.get("/fine_tuning/jobs", params=params).json()["data"]]

    assert filtered(**{"metadata[team]": "a"}) == [ids[4], ids[2], ids[0]]
    assert filtered(**{"metadata[team]": "a", "metadata[env]": "prod"}) == [ids[4], ids[0]]
    assert filtered(**{"metadata[team]": "a", "limit": 1, "after": ids[4]}) == [ids[2]]
    assert filtered(**{"metadata[team]": "c"}) == []
    assert filtered(metadata="null") == [ids[3]]
    assert client.get("/fine_tuning/jobs", params={"after": "ftjob-unknown"}).status_code == 400
    assert client.get("/fine_tuning/jobs", params={"limit": 0}).status_code == 400


def test_events_page_backwards_in_time(client: httpx.Client, clock: ManualClock) -> None:
    job_id = new_job(client)["id"]
    clock.advance(FINISHED + 1)
    everything = all_events(client, job_id)
    walked = all_events(client, job_id, page_size=7)
    assert walked == everything
    assert len(walked) == 105  # 6 messages, 96 metrics, 3 checkpoints
    assert len({event["id"] for event in walked}) == len(walked)
    times = [event["created_at"] for event in walked]
    assert times == sorted(times, reverse=True)


def test_checkpoints_page_with_after(client: httpx.Client, clock: ManualClock) -> None:
    job_id = new_job(client)["id"]
    clock.advance(STARTED + 37)  # step 74: one checkpoint (72) so far
    assert [c["step_number"] for c in client.get(f"/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]] == [72]
    clock.advance(20)
    first = client.get(f"/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 1}).json()
    assert first["has_more"]
    assert first["first_id"] == first["last_id"]
    second = client.get(
        f"/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 5, "after": first["last_id"]}
    ).json()
    assert [c["step_number"] for c in second["data"]] == [84, 72]
    assert not second["has_more"]


def test_an_unknown_job_is_a_404(client: httpx.Client) -> None:
    for path in ("", "/events", "/checkpoints"):
        response = client.get(f"/fine_tuning/jobs/ftjob-nope{path}")
        assert response.status_code == 404
        assert error_of(response)["code"] == "fine_tune_not_found"


def test_a_job_can_continue_from_a_fine_tuned_model(client: httpx.Client, clock: ManualClock) -> None:
    first = new_job(client, suffix="v1")
    clock.advance(FINISHED + 1)
    model = get_job(client, first["id"])["fine_tuned_model"]
    second = create_job(client, model=model, training_file=first["training_file"], suffix="v2")
    assert second["model"] == model
    clock.advance(FINISHED + 1)
    assert get_job(client, second["id"])["fine_tuned_model"].startswith("ft:gpt-4o-mini-2024-07-18:emulator:v2:")


def test_integrations_are_reported(client: httpx.Client) -> None:
    job = new_job(client, integrations=[{"type": "wandb", "wandb": {"project": "p", "tags": ["x"]}}])
    assert job["integrations"] == [
        {"type": "wandb", "wandb": {"project": "p", "tags": ["x"], "name": None, "entity": None, "run_id": job["id"]}}
    ]


def test_the_result_is_the_same_however_often_it_is_looked_at(client: httpx.Client, clock: ManualClock) -> None:
    job_id = new_job(client)["id"]
    clock.advance(FINISHED + 1)
    first = get_job(client, job_id)
    assert get_job(client, job_id) == first
    assert (
        client.get("/files", params={"purpose": "fine-tune-results"}).json()["data"][0]["id"]
        == first["result_files"][0]
    )
    _ = jsonl  # the helpers module is shared
