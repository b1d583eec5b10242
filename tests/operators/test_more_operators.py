"""File upload, checkpoint permission and grader operators, and pausing twice, at the HTTP layer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.exceptions import FineTuningError, InvalidRequestError, NotFoundError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.operators.finetune import (
    FineTuningCheckpointPermissionOperator,
    FineTuningCheckpointPermissionRevokeOperator,
    FineTuningFileUploadOperator,
    FineTuningGraderRunOperator,
    FineTuningGraderValidateOperator,
    FineTuningJobPauseOperator,
)
from airflow_provider_finetune.training_data import TrainingDataError
from tests.hooks.conftest import GRADER, FakeAPI, file_obj, grader_result, job, page, permission, upload
from tests.operators.conftest import FakeTI

CKPT = "ft:gpt-4o-mini-2024-07-18:org:weather:B7R9VjQd:ckpt-step-10"
PERMISSIONS = "fine_tuning/checkpoints/[^/]+/permissions"
CHAT = {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


def training_file(path: Path, lines: list[str] | None = None, count: int = 12) -> Path:
    path.write_text("\n".join(lines if lines is not None else [json.dumps(CHAT)] * count) + "\n")
    return path


def uploader(source: Any, **kwargs: Any) -> FineTuningFileUploadOperator:
    return FineTuningFileUploadOperator(**{"task_id": "upload", "source": source, **kwargs})


@pytest.fixture
def ti(context: dict[str, Any]) -> FakeTI:
    """The context's task instance, to read the XComs pushed."""
    ti: FakeTI = context["ti"]
    return ti


# -- FineTuningFileUploadOperator ------------------------------------------------------------------------------


def test_upload_checks_then_uploads_a_local_file(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI, tmp_path: Path
) -> None:
    path = training_file(tmp_path / "train.jsonl")
    api.on("POST", "files", file_obj("file-42", "train.jsonl", path.stat().st_size))

    assert uploader(str(path)).execute(context) == "file-42"

    assert ti.xcoms["file_id"] == "file-42"
    assert ti.xcoms["bytes"] == path.stat().st_size
    assert ti.xcoms["examples"] == 12
    assert ti.xcoms["estimated_tokens"] > 0
    (request,) = api.requests
    assert b'filename="train.jsonl"' in request.content
    assert b'name="purpose"\r\n\r\nfine-tune' in request.content
    assert path.read_bytes() in request.content


def test_upload_refuses_a_bad_file_before_sending_anything(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI, tmp_path: Path
) -> None:
    lines = [json.dumps(CHAT)] * 12
    lines[2] = '{"messages": [}'
    lines[6] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    path = training_file(tmp_path / "train.jsonl", lines)
    api.on("POST", "files", file_obj())

    with pytest.raises(TrainingDataError) as info:
        uploader(path).execute(context)

    message = str(info.value)
    assert "train.jsonl is not valid supervised training data" in message
    assert "line 3: not valid JSON" in message
    assert "line 7: messages: no assistant message to learn from" in message
    assert [issue.line for issue in info.value.issues] == [3, 7]
    assert api.requests == []
    assert ti.xcoms == {}


def test_upload_checks_for_the_method(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], tmp_path: Path
) -> None:
    path = training_file(tmp_path / "train.jsonl")

    with pytest.raises(TrainingDataError, match="not valid dpo training data: line 1: looks like a chat example"):
        uploader(path, method="dpo").execute(context)
    assert api.requests == []


def test_upload_refuses_an_unknown_method(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequestError, match="method must be one of supervised, dpo, reinforcement") as info:
        uploader(training_file(tmp_path / "train.jsonl"), method="sft").execute(context)
    assert info.value.field == "method"
    assert api.requests == []


def test_upload_refuses_too_few_examples(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], tmp_path: Path
) -> None:
    path = training_file(tmp_path / "valid.jsonl", count=3)

    with pytest.raises(TrainingDataError, match="at least 10"):
        uploader(path).execute(context)
    assert api.requests == []


def test_upload_min_examples_for_a_validation_file(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI, tmp_path: Path
) -> None:
    path = training_file(tmp_path / "valid.jsonl", count=3)
    api.on("POST", "files", file_obj("file-v", "valid.jsonl"))

    assert uploader(path, min_examples=1).execute(context) == "file-v"
    assert ti.xcoms["examples"] == 3


def test_upload_without_checking(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI, tmp_path: Path
) -> None:
    path = training_file(tmp_path / "raw.jsonl", ["not json at all"])
    api.on("POST", "files", file_obj("file-raw", "raw.jsonl", None))

    assert uploader(path, validate=False, filename="renamed.jsonl").execute(context) == "file-raw"

    assert {k: v for k, v in ti.xcoms.items() if k != "file_digest"} == {
        "file_id": "file-raw",
        "bytes": 16,
        "examples": None,
        "estimated_tokens": None,
    }
    assert ti.xcoms["file_digest"]["file_id"] == "file-raw"
    assert b'filename="renamed.jsonl"' in api.requests[0].content


def test_upload_through_object_storage_path(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI, tmp_path: Path
) -> None:
    from airflow.sdk import ObjectStoragePath

    path = training_file(tmp_path / "remote.jsonl")
    api.on("POST", "files", file_obj("file-os", "remote.jsonl"))

    assert uploader(ObjectStoragePath(f"file://{path}")).execute(context) == "file-os"

    assert ti.xcoms["examples"] == 12
    assert b'filename="remote.jsonl"' in api.requests[0].content
    assert path.read_bytes() in api.requests[0].content


def test_upload_through_a_url(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI, tmp_path: Path
) -> None:
    path = training_file(tmp_path / "url.jsonl")
    api.on("POST", "files", file_obj("file-url", "url.jsonl"))

    assert uploader(f"file://{path}").execute(context) == "file-url"
    assert b'filename="url.jsonl"' in api.requests[0].content


def test_upload_of_a_bad_file_through_object_storage_path_sends_nothing(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], tmp_path: Path
) -> None:
    lines = [json.dumps(CHAT)] * 11 + ["[1, 2]"]
    path = training_file(tmp_path / "remote.jsonl", lines)

    with pytest.raises(TrainingDataError, match="line 12"):
        uploader(f"file://{path}").execute(context)
    assert api.requests == []


def test_upload_of_a_large_file_goes_through_the_uploads_api(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI, tmp_path: Path
) -> None:
    path = training_file(tmp_path / "big.jsonl", count=40)
    done = file_obj("file-big", "big.jsonl", path.stat().st_size)
    api.on("POST", "uploads", upload())
    api.on("POST", "uploads/upload_1/parts", {"object": "upload.part", "id": "part_1", "upload_id": "upload_1"})
    api.on("POST", "uploads/upload_1/complete", upload(status="completed", file=done))
    operator = uploader(path)
    operator.__dict__["hook"] = FineTuningHook(upload_threshold=1024, part_size=1024)

    assert operator.execute(context) == "file-big"

    parts = -(-path.stat().st_size // 1024)
    assert [r.url.path for r in api.requests] == [
        "/v1/uploads",
        *["/v1/uploads/upload_1/parts"] * parts,
        "/v1/uploads/upload_1/complete",
    ]
    assert body(api.requests[0])["bytes"] == path.stat().st_size
    assert ti.xcoms["bytes"] == path.stat().st_size


def test_upload_of_a_missing_file(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequestError, match=r"cannot read .*missing\.jsonl") as info:
        uploader(tmp_path / "missing.jsonl").execute(context)
    assert info.value.field == "source"
    assert api.requests == []


def test_upload_source_paths_are_rendered_as_they_are(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], tmp_path: Path
) -> None:
    from airflow.sdk import DAG

    path = training_file(tmp_path / "train.jsonl")
    (tmp_path / "link.jsonl").symlink_to(path)
    with DAG("upload_templates", schedule=None):
        missing = uploader(tmp_path / "missing.jsonl", task_id="missing")
        link = uploader(tmp_path / "link.jsonl", task_id="link")
        text = uploader(str(tmp_path / "{{ ds }}.jsonl"), task_id="text")
    for operator in (missing, link, text):
        operator.render_template_fields({**context, "ds": "2024-07-01"})

    assert missing.source == tmp_path / "missing.jsonl"
    assert link.source == tmp_path / "link.jsonl"  # not the symlink's target
    assert text.source == str(tmp_path / "2024-07-01.jsonl")
    with pytest.raises(InvalidRequestError, match="cannot read"):
        missing.execute(context)
    assert api.requests == []


def test_upload_of_something_that_is_no_file(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError, match="source must be a path, a URL or an object with open"):
        uploader(42).execute(context)


# -- checkpoint permissions ------------------------------------------------------------------------------------


def grant(project_ids: Any = ("proj-2", "proj-3")) -> FineTuningCheckpointPermissionOperator:
    return FineTuningCheckpointPermissionOperator(task_id="grant", checkpoint=CKPT, project_ids=project_ids)


def revoke(**kwargs: Any) -> FineTuningCheckpointPermissionRevokeOperator:
    return FineTuningCheckpointPermissionRevokeOperator(task_id="revoke", checkpoint=CKPT, **kwargs)


def test_grant_creates_the_permissions(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI
) -> None:
    api.on("GET", PERMISSIONS, page([]))
    api.on("POST", PERMISSIONS, page([permission("cp_2", "proj-2"), permission("cp_3", "proj-3")]))

    assert grant(["proj-2", "proj-3"]).execute(context) == ["cp_2", "cp_3"]

    assert body(api.sent("POST")[0]) == {"project_ids": ["proj-2", "proj-3"]}
    assert ti.xcoms["permissions"] == {"proj-2": "cp_2", "proj-3": "cp_3"}
    assert "ckpt-step-10" in api.requests[0].url.path


def test_grant_twice_creates_nothing_the_second_time(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    made = [permission("cp_2", "proj-2"), permission("cp_3", "proj-3")]
    api.on("GET", PERMISSIONS, page([]), page([permission("cp_other", "proj-9"), *made]))
    api.on("POST", PERMISSIONS, page(made))

    first = grant().execute(context)
    second = grant().execute(context)

    assert first == second == ["cp_2", "cp_3"]
    assert len(api.sent("POST")) == 1


def test_grant_only_creates_what_is_missing(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    api.on("GET", PERMISSIONS, page([permission("cp_3", "proj-3")]))
    api.on("POST", PERMISSIONS, page([permission("cp_2", "proj-2")]))

    assert grant(["proj-2", "proj-3", "proj-2"]).execute(context) == ["cp_2", "cp_3"]
    assert body(api.sent("POST")[0]) == {"project_ids": ["proj-2"]}


def test_grant_reads_every_page_of_permissions(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on(
        "GET",
        PERMISSIONS,
        page([permission("cp_1", "proj-1")], has_more=True, last_id="cp_1"),
        page([permission("cp_2", "proj-2")]),
    )

    assert grant("proj-2").execute(context) == ["cp_2"]
    assert api.sent("POST") == []
    assert "after=cp_1" in str(api.requests[1].url)


@pytest.mark.parametrize("project_ids", [[], [""], ["proj 2"], [42], None, {"proj": 1}])
def test_grant_refuses_bad_project_ids_before_any_request(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], project_ids: Any
) -> None:
    with pytest.raises(InvalidRequestError, match="project_ids"):
        grant(project_ids).execute(context)
    assert api.requests == []


def test_grant_refuses_a_blank_checkpoint(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    operator = FineTuningCheckpointPermissionOperator(task_id="grant", checkpoint=" ", project_ids=["proj-2"])

    with pytest.raises(InvalidRequestError, match="checkpoint"):
        operator.execute(context)
    assert api.requests == []


def test_revoke_by_project(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    api.on("GET", PERMISSIONS, page([permission("cp_2", "proj-2"), permission("cp_3", "proj-3")]))
    api.on("DELETE", f"{PERMISSIONS}/cp_2", {"object": "checkpoint.permission", "id": "cp_2", "deleted": True})

    assert revoke(project_ids=["proj-2"]).execute(context) == ["cp_2"]
    assert [r.method for r in api.requests] == ["GET", "DELETE"]


def test_revoke_that_the_service_says_it_did_not_do_fails(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", PERMISSIONS, page([permission("cp_2", "proj-2")]))
    api.on("DELETE", f"{PERMISSIONS}/cp_2", {"object": "checkpoint.permission", "id": "cp_2", "deleted": False})

    with pytest.raises(FineTuningError, match=r"answered cp_2 deleted=False; the permission may still be in force"):
        revoke(project_ids=["proj-2"]).execute(context)


def test_revoke_twice_deletes_nothing_the_second_time(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on(
        "GET",
        PERMISSIONS,
        page([permission("cp_2", "proj-2"), permission("cp_3", "proj-3")]),
        page([permission("cp_3", "proj-3")]),
    )
    api.on("DELETE", f"{PERMISSIONS}/cp_2", {"object": "checkpoint.permission", "id": "cp_2", "deleted": True})

    assert revoke(project_ids="proj-2").execute(context) == ["cp_2"]
    assert revoke(project_ids="proj-2").execute(context) == []
    assert len(api.sent("DELETE")) == 1


def test_revoke_by_permission_id_skips_what_is_not_there(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", PERMISSIONS, page([permission("cp_2", "proj-2"), permission("cp_3", "proj-3")]))
    api.on("DELETE", f"{PERMISSIONS}/cp_3", {"object": "checkpoint.permission", "id": "cp_3", "deleted": True})

    assert revoke(permission_ids=["cp_3", "cp_gone"]).execute(context) == ["cp_3"]
    assert len(api.sent("DELETE")) == 1


def test_revoke_of_a_permission_deleted_meanwhile(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", PERMISSIONS, page([permission("cp_2", "proj-2")]))
    api.on("DELETE", f"{PERMISSIONS}/cp_2", httpx.Response(404, json={"error": {"message": "No such permission"}}))

    assert revoke(project_ids=["proj-2"]).execute(context) == []


def test_revoke_on_an_unknown_checkpoint_fails(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    api.on("GET", PERMISSIONS, httpx.Response(404, json={"error": {"message": "No such checkpoint"}}))

    with pytest.raises(NotFoundError):
        revoke(project_ids=["proj-2"]).execute(context)


def test_revoke_needs_something_to_revoke() -> None:
    with pytest.raises(InvalidRequestError, match="project_ids or permission_ids"):
        revoke()


# -- pausing twice ---------------------------------------------------------------------------------------------


def test_pause_twice_pauses_once(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="running"), job(status="paused"))
    api.on("POST", "fine_tuning/jobs/ftjob-1/pause", job(status="pausing"))
    operator = FineTuningJobPauseOperator(task_id="pause", job_id="ftjob-1")

    assert operator.execute(context) == "pausing"
    assert operator.execute(context) == "paused"
    assert len(api.sent("POST")) == 1


# -- graders ---------------------------------------------------------------------------------------------------


def test_grader_validate(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    api.on("POST", "fine_tuning/alpha/graders/validate", {"grader": GRADER})

    result = FineTuningGraderValidateOperator(task_id="check", grader=GRADER).execute(context)

    assert result == GRADER
    assert body(api.requests[0]) == {"grader": GRADER}


def test_grader_validate_takes_json_text(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    api.on("POST", "fine_tuning/alpha/graders/validate", {"grader": GRADER})

    assert FineTuningGraderValidateOperator(task_id="check", grader=json.dumps(GRADER)).execute(context) == GRADER


@pytest.mark.parametrize(
    ("grader", "field"),
    [
        ({**GRADER, "operation": "startswith"}, "grader.operation"),
        ({k: v for k, v in GRADER.items() if k != "reference"}, "grader.reference"),
        ({**GRADER, "type": "label_model"}, "grader"),
        ("{not json", "grader"),
    ],
)
def test_grader_validate_refuses_a_bad_grader_before_any_request(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], grader: Any, field: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        FineTuningGraderValidateOperator(task_id="check", grader=grader).execute(context)

    assert info.value.field == field
    assert api.requests == []


def test_grader_validate_service_refusal(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]) -> None:
    api.on(
        "POST",
        "fine_tuning/alpha/graders/validate",
        httpx.Response(400, json={"error": {"message": "bad template", "param": "grader.input"}}),
    )

    with pytest.raises(FineTuningError, match="bad template"):
        FineTuningGraderValidateOperator(task_id="check", grader=GRADER).execute(context)


def test_grader_templates_keep_the_graders_own_placeholders() -> None:
    from airflow.sdk import DAG

    python_grader = {
        "type": "python",
        "name": "py-{{ ds }}",
        "source": 'def grade(sample, item):\n    return float(f"{{x}}" == "{x}")\n',
    }
    with DAG("grader_templates", schedule=None):
        validate = FineTuningGraderValidateOperator(
            task_id="check", grader={**GRADER, "name": "exact-{{ ds }}", "reference": "{{ item.label }}"}
        )
        run = FineTuningGraderRunOperator(
            task_id="run",
            grader=python_grader,
            samples=[{"model_sample": "{{ ds }}", "item": {"label": "{{sample.output_text}}"}}],
        )
    context = {"ds": "2024-07-01", "ti": FakeTI()}

    validate.render_template_fields(context)
    run.render_template_fields(context)

    assert validate.grader == {**GRADER, "name": "exact-2024-07-01", "reference": "{{ item.label }}"}
    assert run.grader == {**python_grader, "name": "py-2024-07-01"}
    assert run.samples == [{"model_sample": "2024-07-01", "item": {"label": "{{sample.output_text}}"}}]


SAMPLES = [
    {"model_sample": "Paris", "item": {"label": "Paris"}},
    {"model_sample": "Lyon", "item": {"label": "Paris"}},
    {"model_sample": "Paris"},
]


def runner(**kwargs: Any) -> FineTuningGraderRunOperator:
    return FineTuningGraderRunOperator(**{"task_id": "grade", "grader": GRADER, "samples": SAMPLES, **kwargs})


def test_grader_run(api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI) -> None:
    api.on("POST", "fine_tuning/alpha/graders/run", grader_result(1.0), grader_result(0.0), grader_result(0.5))

    assert runner(min_mean_reward=0.5).execute(context) == pytest.approx(0.5)

    assert ti.xcoms == {"rewards": [1.0, 0.0, 0.5], "mean_reward": pytest.approx(0.5)}
    sent = [body(r) for r in api.requests]
    assert [b["model_sample"] for b in sent] == ["Paris", "Lyon", "Paris"]
    assert [b.get("item") for b in sent] == [{"label": "Paris"}, {"label": "Paris"}, None]
    assert all(b["grader"] == GRADER for b in sent)


def test_grader_run_below_the_minimum_fails_after_pushing(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI
) -> None:
    api.on("POST", "fine_tuning/alpha/graders/run", grader_result(1.0), grader_result(0.0), grader_result(0.0))

    with pytest.raises(FineTuningError, match=r"mean reward 0.3333 .* below min_mean_reward 0.5"):
        runner(min_mean_reward=0.5).execute(context)
    assert ti.xcoms["rewards"] == [1.0, 0.0, 0.0]


def test_grader_run_stops_at_a_run_that_reports_errors(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], ti: FakeTI
) -> None:
    broken = grader_result(0.0)
    broken["metadata"]["errors"] |= {
        "python_grader_runtime_error": True,
        "python_grader_runtime_error_details": "ZeroDivisionError: division by zero",
    }
    api.on("POST", "fine_tuning/alpha/graders/run", grader_result(1.0), broken, grader_result(1.0))

    with pytest.raises(FineTuningError) as info:
        runner().execute(context)

    assert str(info.value) == (
        "Grader 'exact' failed on samples[1]: python_grader_runtime_error "
        "(python_grader_runtime_error_details: ZeroDivisionError: division by zero)"
    )
    assert len(api.requests) == 2
    assert ti.xcoms == {}


@pytest.mark.parametrize(
    ("samples", "match"),
    [
        ([], "samples must be a non-empty list"),
        ("Paris", "samples must be a non-empty list"),
        ([SAMPLES[0], "Lyon"], r"samples\[1\] must be a mapping"),
        ([SAMPLES[0], {"sample": "Lyon"}], r"samples\[1\] has unknown keys sample"),
        ([SAMPLES[0], {"item": {}}], r"samples\[1\]: .*model_sample"),
        ([SAMPLES[0], {"model_sample": "x", "item": ["a"]}], r"samples\[1\]: .*item"),
    ],
)
def test_grader_run_refuses_bad_samples_before_any_request(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any], samples: Any, match: str
) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        runner(samples=samples).execute(context)
    assert api.requests == []


def test_grader_run_refuses_a_bad_grader_before_any_request(
    api: FakeAPI, connection: dict[str, Any], context: dict[str, Any]
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        runner(grader={**GRADER, "input": 3}).execute(context)
    assert info.value.field == "grader.input"
    assert api.requests == []


# -- cheap imports ---------------------------------------------------------------------------------------------


def test_importing_operators_and_sensors_stays_cheap() -> None:
    code = (
        "import sys\n"
        "import airflow_provider_finetune.operators.finetune, airflow_provider_finetune.sensors.finetune\n"
        "heavy = ['models', 'hooks.finetune', 'client', 'training_data', 'triggers.finetune']\n"
        "print([m for m in heavy if 'airflow_provider_finetune.' + m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"
