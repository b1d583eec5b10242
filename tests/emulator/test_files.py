"""Files (multipart upload, retrieve, list, delete, content) and uploads (parts, md5-checked complete)."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator import ManualClock
from tests.emulator.conftest import error_of, jsonl, training_lines, upload

pytestmark = pytest.mark.integration


def test_a_file_is_uploaded_retrieved_read_and_deleted(client: httpx.Client) -> None:
    data = jsonl(training_lines())
    created = client.post("/files", files={"file": ("train.jsonl", data)}, data={"purpose": "fine-tune"}).json()
    assert created["object"] == "file"
    assert created["bytes"] == len(data)
    assert created["status"] == "processed"
    assert "expires_at" not in created
    assert client.get(f"/files/{created['id']}").json() == created
    assert client.get(f"/files/{created['id']}/content").content == data
    assert client.delete(f"/files/{created['id']}").json() == {"id": created["id"], "object": "file", "deleted": True}
    for response in (client.get(f"/files/{created['id']}"), client.delete(f"/files/{created['id']}")):
        assert response.status_code == 404
        assert error_of(response)["message"] == f"No such File object: {created['id']}"


def test_files_list_in_order_with_after_limit_and_purpose(client: httpx.Client) -> None:
    ids = [
        upload(client, training_lines(), name=f"f{i}.jsonl", purpose="fine-tune" if i % 2 else "batch")
        for i in range(5)
    ]
    listed = client.get("/files").json()
    assert [item["id"] for item in listed["data"]] == list(reversed(ids))
    assert listed["first_id"] == ids[-1]
    assert listed["last_id"] == ids[0]
    assert not listed["has_more"]
    page = client.get("/files", params={"limit": 2, "order": "asc"}).json()
    assert [item["id"] for item in page["data"]] == ids[:2]
    assert page["has_more"]
    rest = client.get("/files", params={"order": "asc", "after": page["last_id"]}).json()
    assert [item["id"] for item in rest["data"]] == ids[2:]
    assert [item["id"] for item in client.get("/files", params={"purpose": "fine-tune"}).json()["data"]] == [
        ids[3],
        ids[1],
    ]
    empty = client.get("/files", params={"purpose": "vision"}).json()
    assert empty["data"] == []
    assert not empty["has_more"]
    assert client.get("/files", params={"order": "sideways"}).status_code == 400
    assert client.get("/files", params={"after": "file-unknown"}).status_code == 400


def test_a_file_expires(client: httpx.Client, clock: ManualClock) -> None:
    created = client.post(
        "/files",
        files={"file": ("train.jsonl", b"{}\n")},
        data={"purpose": "fine-tune", "expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
    ).json()
    assert created["expires_at"] == created["created_at"] + 3600
    clock.advance(3601)
    assert client.get(f"/files/{created['id']}").status_code == 404
    assert client.get("/files").json()["data"] == []


@pytest.mark.parametrize(
    ("files", "data", "param"),
    [
        ({"file": ("train.txt", b"{}")}, {"purpose": "fine-tune"}, "file"),
        ({"file": ("train.jsonl", b"{}")}, {"purpose": "fun"}, "purpose"),
        ({"file": ("train.jsonl", b"{}")}, {}, "purpose"),
        ({"other": ("train.jsonl", b"{}")}, {"purpose": "fine-tune"}, "file"),
        (
            {"file": ("train.jsonl", b"{}")},
            {"purpose": "fine-tune", "expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
            "expires_after.seconds",
        ),
    ],
)
def test_bad_uploads_are_refused(client: httpx.Client, files: dict[str, Any], data: dict[str, str], param: str) -> None:
    response = client.post("/files", files=files, data=data)
    assert response.status_code == 400
    assert error_of(response)["param"] == param


def test_a_file_upload_must_be_multipart(client: httpx.Client) -> None:
    assert client.post("/files", json={"purpose": "fine-tune"}).status_code == 400


def start_upload(client: httpx.Client, data: bytes, **fields: Any) -> dict[str, Any]:
    body = {"filename": "big.jsonl", "purpose": "fine-tune", "bytes": len(data), "mime_type": "text/jsonl", **fields}
    response = client.post("/uploads", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def add_parts(client: httpx.Client, upload_id: str, data: bytes, size: int) -> list[str]:
    return [
        client.post(f"/uploads/{upload_id}/parts", files={"data": ("blob", data[i : i + size])}).json()["id"]
        for i in range(0, len(data), size)
    ]


def test_an_upload_in_parts_becomes_a_file_when_the_md5_matches(client: httpx.Client) -> None:
    data = jsonl(training_lines(30))
    started = start_upload(client, data, expires_after={"anchor": "created_at", "seconds": 7200})
    assert started["status"] == "pending"
    assert started["file"] is None
    assert started["expires_at"] == started["created_at"] + 3600
    part_ids = add_parts(client, started["id"], data, 1000)
    assert len(part_ids) > 1
    wrong = client.post(f"/uploads/{started['id']}/complete", json={"part_ids": part_ids, "md5": "0" * 32})
    assert wrong.status_code == 400
    assert error_of(wrong)["param"] == "md5"
    assert error_of(wrong)["code"] == "md5_mismatch"
    # Parts are joined in the order given: out of order, the md5 does not match either.
    md5 = hashlib.md5(data).hexdigest()
    shuffled = client.post(f"/uploads/{started['id']}/complete", json={"part_ids": part_ids[::-1], "md5": md5})
    assert shuffled.status_code == 400
    done = client.post(f"/uploads/{started['id']}/complete", json={"part_ids": part_ids, "md5": md5.upper()}).json()
    assert done["status"] == "completed"
    assert done["file"]["bytes"] == len(data)
    assert done["file"]["filename"] == "big.jsonl"
    assert done["file"]["expires_at"] == done["file"]["created_at"] + 7200
    assert client.get(f"/files/{done['file']['id']}/content").content == data
    late = client.post(f"/uploads/{started['id']}/parts", files={"data": ("blob", b"x")})
    assert late.status_code == 400
    assert error_of(late)["code"] == "upload_not_pending"
    assert client.post(f"/uploads/{started['id']}/cancel").status_code == 400


def test_an_upload_checks_sizes_and_parts(client: httpx.Client) -> None:
    data = b"0123456789"
    started = start_upload(client, data)
    too_much = client.post(f"/uploads/{started['id']}/parts", files={"data": ("blob", data + b"!")})
    assert too_much.status_code == 400
    part_ids = add_parts(client, started["id"], data[:5], 5)
    short = client.post(f"/uploads/{started['id']}/complete", json={"part_ids": part_ids})
    assert short.status_code == 400
    assert "5 bytes" in error_of(short)["message"]
    unknown = client.post(f"/uploads/{started['id']}/complete", json={"part_ids": ["part_nope"]})
    assert unknown.status_code == 400
    assert error_of(unknown)["param"] == "part_ids"
    twice = client.post(f"/uploads/{started['id']}/complete", json={"part_ids": part_ids * 2})
    assert twice.status_code == 400
    assert client.post(f"/uploads/{started['id']}/complete", json={"part_ids": []}).status_code == 400
    cancelled = client.post(f"/uploads/{started['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert client.post(f"/uploads/{started['id']}/complete", json={"part_ids": part_ids}).status_code == 400


def test_an_upload_expires_after_an_hour(client: httpx.Client, clock: ManualClock) -> None:
    started = start_upload(client, b"12345")
    clock.advance(3601)
    response = client.post(f"/uploads/{started['id']}/parts", files={"data": ("blob", b"12345")})
    assert response.status_code == 400
    assert "expired" in error_of(response)["message"]


def test_upload_requests_are_checked(client: httpx.Client) -> None:
    bad = client.post(
        "/uploads", json={"filename": "a.jsonl", "purpose": "fine-tune", "bytes": 0, "mime_type": "text/jsonl"}
    )
    assert bad.status_code == 400
    assert error_of(bad)["param"] == "bytes"
    wrong_name = client.post(
        "/uploads", json={"filename": "a.csv", "purpose": "fine-tune", "bytes": 3, "mime_type": "text/csv"}
    )
    assert wrong_name.status_code == 400
    assert error_of(wrong_name)["param"] == "filename"
    for path in ("/uploads/upload_nope/parts", "/uploads/upload_nope/cancel"):
        assert client.post(path, files={"data": ("b", b"x")}).status_code in (400, 404)
    assert client.post("/uploads/upload_nope/cancel").status_code == 404
