"""Every response example of the published spec parses into the matching model, keeping every value.

The examples are collected from the spec itself (operations' ``x-oaiMeta.examples`` and component schemas'
``x-oaiMeta.example``), so an operation or schema added to the spec without a model here fails the suite.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

import pytest
from pydantic import BaseModel

from airflow_provider_finetune.models import (
    CheckpointPermission,
    DeletedCheckpointPermission,
    DeletedFile,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    FineTuningJobStatus,
    GraderRunResult,
    GraderValidation,
    LabelModelGrader,
    MultiGrader,
    Page,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    Upload,
    UploadPart,
    ValidateGraderRequest,
    build_request,
)
from tests.spec import (
    SpecExample,
    iter_operations,
    lenient_json,
    load_openapi_spec,
    openapi_spec_path,
    operation_response_examples,
    schema_examples,
)

if not openapi_spec_path().is_file():
    pytest.skip(f"reference spec not found at {openapi_spec_path()}", allow_module_level=True)

# Component schema name -> the model that reads it. Operations are mapped through their 200 answer's schema.
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "OpenAIFile": FileObject,
    "ListFilesResponse": Page[FileObject],
    "DeleteFileResponse": DeletedFile,
    "Upload": Upload,
    "UploadPart": UploadPart,
    "FineTuningJob": FineTuningJob,
    "ListPaginatedFineTuningJobsResponse": Page[FineTuningJob],
    "FineTuningJobEvent": FineTuningJobEvent,
    "ListFineTuningJobEventsResponse": Page[FineTuningJobEvent],
    "FineTuningJobCheckpoint": FineTuningJobCheckpoint,
    "ListFineTuningJobCheckpointsResponse": Page[FineTuningJobCheckpoint],
    "FineTuningCheckpointPermission": CheckpointPermission,
    "ListFineTuningCheckpointPermissionResponse": Page[CheckpointPermission],
    "DeleteFineTuningCheckpointPermissionResponse": DeletedCheckpointPermission,
    "RunGraderResponse": GraderRunResult,
    "ValidateGraderResponse": GraderValidation,
    "GraderStringCheck": StringCheckGrader,
    "GraderTextSimilarity": TextSimilarityGrader,
    "GraderPython": PythonGrader,
    "GraderScoreModel": ScoreModelGrader,
    "GraderLabelModel": LabelModelGrader,
    "GraderMulti": MultiGrader,
}

# Operations whose answer is not a JSON object, and so have nothing to parse.
NO_JSON_ANSWER = {"downloadFile"}

SPEC = load_openapi_spec()
OPERATIONS = list(iter_operations(SPEC))
EXAMPLES: list[SpecExample] = [
    example
    for _, _, operation_id, operation in OPERATIONS
    for example in operation_response_examples(operation_id, operation)
] + schema_examples(SPEC)
EXAMPLES_BY_ID = {example.example_id: example for example in EXAMPLES}


def parse(example: SpecExample) -> BaseModel:
    assert example.schema_name in SCHEMA_MODELS, (
        f"{example.example_id}: no model is mapped to schema {example.schema_name!r}; add it to SCHEMA_MODELS"
    )
    return SCHEMA_MODELS[example.schema_name].model_validate(lenient_json(example.text))


def parse_id(example_id: str) -> Any:
    assert example_id in EXAMPLES_BY_ID, f"the spec no longer has the example {example_id!r}"
    return parse(EXAMPLES_BY_ID[example_id])


def _is_empty_error(raw: Any) -> bool:
    return isinstance(raw, dict) and not raw.get("code") and not raw.get("message")


def assert_carried(parsed: Any, raw: Any, path: str = "$") -> None:
    """Every value of the example is in the parsed object, as a field or as a kept extra."""
    if isinstance(raw, dict):
        if isinstance(parsed, BaseModel):
            fields = type(parsed).model_fields
            extra = parsed.model_extra or {}
            for key, raw_value in raw.items():
                if key in fields:
                    value = getattr(parsed, key)
                    if key == "error" and isinstance(parsed, FineTuningJob) and _is_empty_error(raw_value):
                        # A job that has not failed: `{}` or an error whose fields are all null reads as None.
                        assert value is None, f"{path}.error"
                        continue
                else:
                    assert key in extra, f"{path}.{key} was dropped"
                    value = extra[key]
                assert_carried(value, raw_value, f"{path}.{key}")
        else:
            assert isinstance(parsed, dict), f"{path}: {type(parsed).__name__} instead of an object"
            assert parsed.keys() == raw.keys(), path
            for key, raw_value in raw.items():
                assert_carried(parsed[key], raw_value, f"{path}.{key}")
    elif isinstance(raw, list):
        assert isinstance(parsed, list), f"{path}: {type(parsed).__name__} instead of a list"
        assert len(parsed) == len(raw), path
        for index, (item, raw_item) in enumerate(zip(parsed, raw, strict=True)):
            assert_carried(item, raw_item, f"{path}[{index}]")
    elif raw is None:
        # Lists and maps the service may send as null read as empty.
        assert parsed in (None, [], {}), f"{path}: {parsed!r} instead of null"
    elif isinstance(parsed, Enum):
        assert parsed.value == raw, path
    else:
        assert parsed == raw, f"{path}: {parsed!r} != {raw!r}"
        assert isinstance(parsed, bool) == isinstance(raw, bool), path


# --- coverage of the spec ------------------------------------------------------------------------------


def test_spec_has_examples() -> None:
    assert OPERATIONS
    assert len(EXAMPLES) >= 30


@pytest.mark.parametrize(
    ("operation_id", "operation"),
    [(operation_id, operation) for _, _, operation_id, operation in OPERATIONS],
    ids=[operation_id for _, _, operation_id, _ in OPERATIONS],
)
def test_every_operation_has_a_mapped_response_example(operation_id: str, operation: dict[str, Any]) -> None:
    examples = operation_response_examples(operation_id, operation)
    if operation_id in NO_JSON_ANSWER:
        assert not examples, f"{operation_id} has grown a JSON example: map it and drop it from NO_JSON_ANSWER"
        return
    assert examples, f"{operation_id} has no response example"
    for example in examples:
        assert example.schema_name in SCHEMA_MODELS, (
            f"{example.example_id}: no model mapped to schema {example.schema_name!r}"
        )


# --- every example -------------------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.example_id for example in EXAMPLES])
def test_example_parses_and_keeps_every_value(example: SpecExample) -> None:
    raw = lenient_json(example.text)
    parsed = parse(example)
    assert_carried(parsed, raw)


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.example_id for example in EXAMPLES])
def test_example_dumps_and_round_trips(example: SpecExample) -> None:
    parsed = parse(example)
    dumped = parsed.model_dump(mode="json")
    json.dumps(dumped)
    assert type(parsed).model_validate(dumped) == parsed


# --- key values of particular examples -----------------------------------------------------------------


def test_retrieved_job() -> None:
    job = parse_id("retrieveFineTuningJob")
    assert job.id == "ftjob-abc123"
    assert job.status is FineTuningJobStatus.SUCCEEDED
    assert job.status.is_terminal()
    assert job.fine_tuned_model == "ft:davinci-002:my-org:custom_suffix:7q8mpxmy"
    assert job.trained_tokens == 5768
    assert job.result_files == ["file-abc123"]
    assert job.method_type == "supervised"
    assert job.method.supervised.hyperparameters.n_epochs == 4
    assert job.error is None


@pytest.mark.parametrize(
    ("example_id", "status", "terminal"),
    [
        ("pauseFineTuningJob", FineTuningJobStatus.PAUSED, False),
        ("resumeFineTuningJob", FineTuningJobStatus.QUEUED, False),
        ("cancelFineTuningJob", FineTuningJobStatus.CANCELLED, True),
        ("createFineTuningJob[Reinforcement]", FineTuningJobStatus.VALIDATING_FILES, False),
    ],
    ids=["paused", "resumed", "cancelled", "validating"],
)
def test_job_status(example_id: str, status: FineTuningJobStatus, terminal: bool) -> None:
    job = parse_id(example_id)
    assert job.status is status
    assert job.status.is_terminal() is terminal


def test_created_jobs_by_method() -> None:
    rl = parse_id("createFineTuningJob[Reinforcement]")
    assert rl.error is None  # "error": {}
    assert rl.method_type == "reinforcement"
    assert isinstance(rl.method.reinforcement.grader, StringCheckGrader)
    assert rl.method.reinforcement.grader.operation == "eq"
    assert rl.method.reinforcement.hyperparameters.reasoning_effort == "medium"
    assert rl.method.reinforcement.hyperparameters.eval_interval == "auto"

    dpo = parse_id("createFineTuningJob[DPO]")
    assert dpo.error is None  # every field null
    assert dpo.method_type == "dpo"
    assert dpo.method.dpo.hyperparameters.beta == 0.1
    assert dpo.hyperparameters is None

    epochs = parse_id("createFineTuningJob[Epochs]")
    assert epochs.hyperparameters.n_epochs == 2
    assert epochs.seed == 683058546
    assert epochs.model_extra["shared_with_openai"] is False  # not in the spec's schema: kept

    wandb = parse_id("createFineTuningJob[W&B Integration]")
    assert wandb.integrations[0].type == "wandb"
    assert wandb.integrations[0].wandb.project == "my-wandb-project"
    assert wandb.integrations[0].wandb.entity is None  # Python `None` in the example
    assert wandb.integrations[0].wandb.run_id == "ftjob-abc123"


def test_job_list_drops_placeholders() -> None:
    page = parse_id("listPaginatedFineTuningJobs")
    assert [job.id for job in page.data] == ["ftjob-abc123"]  # `{ ... }, { ... }` are not jobs
    assert page.data[0].metadata == {"key": "value"}
    assert page.has_more is True
    assert page.next_after == "ftjob-abc123"


def test_event_page() -> None:
    page = parse_id("listFineTuningEvents")
    assert page.first_id is None
    assert page.last_id is None
    assert [event.level for event in page.data] == ["info", "info"]
    assert all(event.data is None and event.type == "message" for event in page.data)
    assert page.next_after == "ft-event-tyiGuB72evQncpH87xe505Sv"
    event = parse_id("schema:FineTuningJobEvent")  # the one with a missing comma
    assert event.id == "ftevent-abc123"
    assert event.created_at == 1677610602
    assert event.data == {}


def test_checkpoint_page() -> None:
    page = parse_id("listFineTuningJobCheckpoints")
    assert [checkpoint.step_number for checkpoint in page.data] == [2000, 1000]
    assert page.data[0].metrics.full_valid_loss == 0.134
    assert page.data[0].metrics.train_loss is None
    assert page.next_after == page.last_id == "ftckpt_enQCFmOTGj3syEpYVhBRLTSy"
    checkpoint = parse_id("schema:FineTuningJobCheckpoint")
    assert checkpoint.metrics.step == 88
    assert checkpoint.fine_tuning_job_id == "ftjob-fpbNQ3H1GrMehXRf8cO97xTN"


def test_permissions() -> None:
    page = parse_id("listFineTuningCheckpointPermissions")  # trailing comma in the list
    assert [permission.project_id for permission in page.data] == [
        "proj_abGMw1llN8IrBb6SvvY5A1iH",
        "proj_iqGMw1llN8IrBb6SvvY5A1oF",
    ]
    deleted = parse_id("deleteFineTuningCheckpointPermission")
    assert deleted.deleted is True
    assert deleted.id == "cp_zc4Q7MP6XxulcVzj4MZdwsAB"


def test_files_and_uploads() -> None:
    files = parse_id("listFiles")
    assert [(file.id, file.purpose) for file in files.data] == [
        ("file-abc123", "assistants"),
        ("file-abc456", "fine-tune"),
    ]
    assert files.next_after == "file-abc456"
    assert parse_id("deleteFile").deleted is True
    assert parse_id("createFile").bytes == 120000
    completed = parse_id("completeUpload")
    assert completed.status == "completed"
    assert completed.file.id == "file-xyz321"
    assert parse_id("createUpload").file is None
    assert parse_id("addUploadPart").upload_id == "upload_abc123"


def test_grader_answers() -> None:
    result = parse_id("runGrader[Score text alignment]")
    assert result.reward == 1.0
    assert result.metadata.type == "score_model"
    assert result.metadata.errors.failed() == []
    # The spec's schema says `token_usage` is an integer; its own example (and the service) send an object.
    assert result.metadata.token_usage["total_tokens"] == 324
    assert result.model_grader_token_usage_per_model["gpt-4o-2024-08-06"]["prompt_tokens"] == 190
    validation = parse_id("validateGrader")
    assert isinstance(validation.grader, StringCheckGrader)
    assert validation.grader.reference == "{{item.label}}"


def test_grader_examples() -> None:
    python = parse_id("schema:GraderPython")  # a Python triple-quoted string
    assert python.source.lstrip().startswith("def grade(sample: dict, item: dict) -> float:")
    assert '"""' in python.source
    score = parse_id("schema:GraderScoreModel")  # a parenthesised string concatenation
    text = score.input[0]["content"][0]["text"]
    assert text.startswith("Score how close")
    assert text.endswith("Model answer: {{sample.output_text}}")
    assert score.input[0]["content"][1]["file_id"] is None
    multi = parse_id("schema:GraderMulti")  # `graders` as a list, where the schema says one grader
    assert [type(grader) for grader in multi.graders] == [TextSimilarityGrader, StringCheckGrader]
    label = parse_id("schema:GraderLabelModel")
    assert label.passing_labels == ["positive"]


@pytest.mark.parametrize(
    "name",
    ["GraderStringCheck", "GraderTextSimilarity", "GraderPython", "GraderScoreModel", "GraderMulti"],
)
def test_grader_examples_are_valid_requests(name: str) -> None:
    grader = lenient_json(EXAMPLES_BY_ID[f"schema:{name}"].text)
    request = build_request(ValidateGraderRequest, grader=grader)
    assert request.to_body()["grader"]["type"] == grader["type"]


def test_label_model_example_is_valid_inside_a_multi_grader() -> None:
    label = lenient_json(EXAMPLES_BY_ID["schema:GraderLabelModel"].text)
    multi = {"type": "multi", "name": "m", "graders": {"sentiment": label}, "calculate_output": "sentiment"}
    body = build_request(ValidateGraderRequest, grader=multi).to_body()
    assert body["grader"]["graders"]["sentiment"]["labels"] == ["positive", "neutral", "negative"]


# --- the repair helper itself --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('{"a": 1,}', {"a": 1}),
        ("[1, 2,]", [1, 2]),
        ('{"a": 1\n "b": 2}', {"a": 1, "b": 2}),
        ('{"a": None, "b": True, "c": False}', {"a": None, "b": True, "c": False}),
        ('[{"a": 1}, { ... }, {...}]', [{"a": 1}]),
        ('{"s": """x\n\\"""y"""}', {"s": 'x\n"""y'}),
        ('{"s": ("a" "b"\n "c")}', {"s": "abc"}),
        ('{"s": "\\u00e9\\n"}', {"s": "é\n"}),
    ],
    ids=[
        "json",
        "trailing-comma",
        "list-trailing-comma",
        "missing-comma",
        "python-words",
        "placeholder",
        "triple-quoted",
        "concatenation",
        "escapes",
    ],
)
def test_lenient_json(text: str, expected: Any) -> None:
    assert lenient_json(text) == expected


@pytest.mark.parametrize(
    "text",
    ['{"a": undefined}', '{"a": 1', "[1, 2", '{"a": 1} 2', '{"a": (1 2)}', "{1: 2}"],
    ids=[
        "unknown-word",
        "unclosed-object",
        "unclosed-array",
        "trailing-text",
        "non-string-concat",
        "int-key",
    ],
)
def test_lenient_json_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="lenient_json"):
        lenient_json(text)
