"""Authentication (Bearer and api-key, 401 and 403) and checkpoint permissions."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer, ManualClock
from tests.emulator.conftest import ADMIN, ADMIN_KEY, API_KEY, AUTH, create_job, error_of, training_lines, upload

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {API_KEY}"}, {"api-key": "sk-wrong"}],
)
def test_a_missing_or_wrong_key_is_a_401(server: EmulatorServer, headers: dict[str, str]) -> None:
    response = httpx.get(server.base_url + "/fine_tuning/jobs", headers=headers)
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"
    assert response.headers["x-request-id"].startswith("req_")
    assert "sk-wrong" not in response.text


@pytest.mark.parametrize("headers", [AUTH, ADMIN, {"api-key": API_KEY}, {"authorization": f"bearer {API_KEY}"}])
def test_the_api_key_and_the_admin_key_are_accepted(server: EmulatorServer, headers: dict[str, str]) -> None:
    assert httpx.get(server.base_url + "/fine_tuning/jobs", headers=headers).status_code == 200


def test_without_a_configured_key_any_key_is_accepted(make_server: Callable[..., EmulatorServer]) -> None:
    server = make_server(api_key=None)
    assert httpx.get(server.base_url + "/files", headers={"Authorization": "Bearer anything"}).status_code == 200
    assert httpx.get(server.base_url + "/files").status_code == 401


def test_the_keys_are_never_logged_nor_shown(
    make_server: Callable[..., EmulatorServer], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        server = make_server()
        httpx.get(server.base_url + "/files", headers=AUTH)
        httpx.get(server.base_url + "/files", headers={"Authorization": "Bearer sk-other-5ecret"})
    assert API_KEY not in caplog.text
    assert "sk-other-5ecret" not in caplog.text
    assert API_KEY not in repr(server.config)
    assert ADMIN_KEY not in repr(server.config)


def finished_model(client: httpx.Client, clock: ManualClock) -> tuple[str, list[str]]:
    job = create_job(client, training_file=upload(client, training_lines()))
    clock.advance(100)
    done = client.get(f"/fine_tuning/jobs/{job['id']}").json()
    checkpoints = client.get(f"/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    return done["fine_tuned_model"], [item["fine_tuned_model_checkpoint"] for item in checkpoints]


def test_checkpoint_permissions_need_the_admin_key(
    client: httpx.Client, admin: httpx.Client, clock: ManualClock
) -> None:
    model, _ = finished_model(client, clock)
    path = f"/fine_tuning/checkpoints/{model}/permissions"
    for response in (
        client.get(path),
        client.post(path, json={"project_ids": ["proj_a"]}),
        client.delete(f"{path}/cp_x"),
    ):
        assert response.status_code == 403
        assert error_of(response)["code"] == "insufficient_permissions"
    assert admin.get(path).json() == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


def test_without_an_admin_key_the_api_key_manages_permissions(
    make_server: Callable[..., EmulatorServer], clock: ManualClock
) -> None:
    server = make_server(admin_key=None)
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        model, _ = finished_model(client, clock)
        response = client.post(f"/fine_tuning/checkpoints/{model}/permissions", json={"project_ids": ["proj_a"]})
        assert response.status_code == 200


def test_permissions_are_listed_filtered_paged_and_deleted(
    client: httpx.Client, admin: httpx.Client, clock: ManualClock
) -> None:
    model, checkpoints = finished_model(client, clock)
    path = f"/fine_tuning/checkpoints/{checkpoints[0]}/permissions"
    created = admin.post(path, json={"project_ids": ["proj_a", "proj_b", "proj_c"]}).json()
    ids = [item["id"] for item in created["data"]]
    assert [item["project_id"] for item in created["data"]] == ["proj_a", "proj_b", "proj_c"]
    assert created["first_id"] == ids[0]
    assert created["last_id"] == ids[-1]
    assert not created["has_more"]
    again = admin.post(path, json={"project_ids": ["proj_b", "proj_d"]}).json()
    assert again["data"][0]["id"] == ids[1]  # a project keeps its permission
    ids.append(again["data"][1]["id"])

    newest_first = admin.get(path).json()
    assert [item["id"] for item in newest_first["data"]] == ids[::-1]
    page = admin.get(path, params={"order": "ascending", "limit": 2}).json()
    assert [item["id"] for item in page["data"]] == ids[:2]
    assert page["has_more"]
    rest = admin.get(path, params={"order": "ascending", "after": page["last_id"]}).json()
    assert [item["id"] for item in rest["data"]] == ids[2:]
    assert not rest["has_more"]
    assert [item["id"] for item in admin.get(path, params={"project_id": "proj_c"}).json()["data"]] == [ids[2]]
    assert admin.get(path, params={"order": "random"}).status_code == 400

    deleted = admin.delete(f"{path}/{ids[0]}").json()
    assert deleted == {"object": "checkpoint.permission", "id": ids[0], "deleted": True}
    assert admin.delete(f"{path}/{ids[0]}").status_code == 404
    assert len(admin.get(path).json()["data"]) == 3
    # Permissions belong to one checkpoint: the final model has none.
    assert admin.get(f"/fine_tuning/checkpoints/{model}/permissions").json()["data"] == []


def test_permissions_of_an_unknown_checkpoint_are_a_404(admin: httpx.Client) -> None:
    response = admin.get("/fine_tuning/checkpoints/ft:gpt-4o-mini-2024-07-18:emulator::nope/permissions")
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found"
    bad = admin.post("/fine_tuning/checkpoints/x/permissions", json={"project_ids": []})
    assert bad.status_code == 400
    assert error_of(bad)["param"] == "project_ids"


def test_an_unknown_path_is_a_404_in_the_api_shape(client: httpx.Client) -> None:
    response = client.get("/fine_tuning/nothing")
    assert response.status_code == 404
    assert error_of(response)["message"] == "Invalid URL (GET /v1/fine_tuning/nothing)"
    assert client.put("/files").status_code == 405


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="speed"):
        EmulatorConfig(speed=0)
    with pytest.raises(ValueError, match="api_key"):
        EmulatorConfig(api_key="has space")
