"""``GET /models`` and ``POST /chat/completions``: enough inference to evaluate a model just trained.

Answers are deterministic. A fine-tuned model (or checkpoint) answers a prompt that matches one of its
training examples (the last user message, exactly or nearly) with that example's assistant answer, so an
evaluation of a fine-tuned model scores well; any other prompt, and any prompt to a base model, gets a
canned answer chosen by a hash of the seed, the model and the messages.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any

from airflow_provider_finetune.emulator.catalog import BASE_MODELS, find_base_model
from airflow_provider_finetune.emulator.config import Clock
from airflow_provider_finetune.emulator.errors import invalid_request, not_found
from airflow_provider_finetune.emulator.files import FileService
from airflow_provider_finetune.emulator.jobs import JobService
from airflow_provider_finetune.emulator.store import token
from airflow_provider_finetune.emulator.trainer import SimJob

__all__ = ["InferenceService", "answer_from"]

_CANNED = (
    "I am not sure; could you give me more details?",
    "Here is a short answer: it depends on the context.",
    "That is a good question. The answer is yes.",
    "The answer is no.",
    "Let me summarise: the main point is the first one.",
    "I would recommend checking the documentation.",
    "Thank you for your message. I will look into it.",
    "The result is 42.",
)
# Prompts at least this similar to a training prompt get its answer.
_MATCH_RATIO = 0.8
# Near matches are searched only in files up to this many examples (exact matches in any).
_MAX_FUZZY_EXAMPLES = 2000


class InferenceService:
    """Model listing and chat completions over base models and the emulator's fine-tuned models.

    :param jobs: the jobs that made fine-tuned models.
    :param files: the training files whose examples fine-tuned models answer from.
    :param clock: the time source.
    :param seed: the emulator's seed.
    """

    def __init__(self, jobs: JobService, files: FileService, clock: Clock, seed: int) -> None:
        self._jobs = jobs
        self._files = files
        self._clock = clock
        self._seed = seed
        self._examples: dict[str, dict[str, str]] = {}
        self._count = 0

    def list_models(self) -> dict[str, Any]:
        """``GET /models``: base models and their aliases, then the fine-tuned models that exist."""
        data = [
            {"id": name, "object": "model", "created": model.created, "owned_by": "system"}
            for model in BASE_MODELS
            for name in (model.id, *model.aliases)
        ]
        now = self._clock()
        for job in self._jobs:
            snapshot = job.snapshot(now)
            if snapshot.status == "succeeded":
                data.append(_fine_tuned(job, int(snapshot.finished_at or now)))
        return {"object": "list", "data": data}

    def retrieve_model(self, name: str) -> dict[str, Any]:
        """``GET /models/{model}``."""
        base = find_base_model(name)
        if base is not None:
            return {"id": name, "object": "model", "created": base.created, "owned_by": "system"}
        found = self._jobs.find_model(name)
        if found is None:
            raise _model_not_found(name)
        job, _ = found
        created = job.snapshot(self._clock()).finished_at or job.record["t0"]
        return {**_fine_tuned(job, int(created)), "id": name}

    def chat_completion(self, body: Any) -> dict[str, Any]:
        """``POST /chat/completions``: one deterministic choice."""
        if not isinstance(body, dict):
            raise invalid_request("The request body must be a JSON object")
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise invalid_request("you must provide a model parameter", param="model")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and "role" in m for m in messages)
        ):
            raise invalid_request("messages must be a non-empty list of messages with a role", param="messages")
        if body.get("stream"):
            raise invalid_request("The emulator does not stream; send stream=false", param="stream")
        answer = self._answer(model, messages)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish_reason = "stop"
        if isinstance(limit, int) and limit > 0 and _tokens(answer) > limit:
            answer, finish_reason = answer[: limit * 4], "length"
        prompt_tokens = sum(_tokens(_text(message.get("content"))) + 4 for message in messages)
        completion_tokens = _tokens(answer)
        self._count += 1
        return {
            "id": "chatcmpl-" + token(self._seed, model, json.dumps(messages, sort_keys=True), self._count),
            "object": "chat.completion",
            "created": int(self._clock()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "service_tier": "default",
            "system_fingerprint": None,
        }

    def _answer(self, model: str, messages: list[dict[str, Any]]) -> str:
        examples: Mapping[str, str] = {}
        if find_base_model(model) is None:
            found = self._jobs.find_model(model)
            if found is None:
                raise _model_not_found(model)
            examples = self._training_examples(found[0])
        return answer_from(examples, messages, seed=self._seed, model=model)

    def _training_examples(self, job: SimJob) -> dict[str, str]:
        """The (last user message -> answer) pairs of a job's training file."""
        if job.id in self._examples:
            return self._examples[job.id]
        pairs: dict[str, str] = {}
        record = self._files.find(str(job.record["training_file"]))
        if record is not None:
            for line in self._files.content(record["id"]).splitlines():
                try:
                    example = json.loads(line)
                except ValueError:
                    continue
                if isinstance(example, dict):
                    pair = _example_pair(example)
                    if pair is not None:
                        pairs.setdefault(*pair)
        self._examples[job.id] = pairs
        return pairs


def answer_from(examples: Mapping[str, str], messages: list[dict[str, Any]], *, seed: int, model: str) -> str:
    """A model's answer to a conversation, from the examples it was trained on.

    The answer of a training prompt that matches the last user message (exactly or nearly), else a canned
    answer chosen by a hash of the seed, the model and the messages.

    :param examples: the (prompt -> answer) pairs the model was trained on; none for a base model.
    :param messages: the conversation, as chat messages (``{"role", "content"}``).
    """
    prompt = _last_user_text(messages)
    if prompt in examples:
        return examples[prompt]
    if prompt and len(examples) <= _MAX_FUZZY_EXAMPLES:
        close = difflib.get_close_matches(prompt, list(examples), n=1, cutoff=_MATCH_RATIO)
        if close:
            return examples[close[0]]
    digest = token(seed, model, json.dumps(messages, sort_keys=True, default=str), length=6)
    return _CANNED[int.from_bytes(digest.encode(), "big") % len(_CANNED)]


def _fine_tuned(job: SimJob, created: int) -> dict[str, Any]:
    return {
        "id": job.fine_tuned_model(),
        "object": "model",
        "created": created,
        "owned_by": job.record["organization_id"],
    }


def _model_not_found(name: str) -> Exception:
    return not_found(
        f"The model `{name}` does not exist or you do not have access to it.", param="model", code="model_not_found"
    )


def _example_pair(example: dict[str, Any]) -> tuple[str, str] | None:
    """The prompt and answer of a training example (chat, preference or prompt-completion)."""
    if isinstance(example.get("prompt"), str) and isinstance(example.get("completion"), str):
        return example["prompt"].strip(), example["completion"].strip()
    if isinstance(example.get("input"), dict):
        preferred = example.get("preferred_output")
        if isinstance(preferred, list) and preferred and isinstance(preferred[0], dict):
            messages = example["input"].get("messages")
            if isinstance(messages, list):
                return _last_user_text(messages), _text(preferred[0].get("content"))
        return None
    messages = example.get("messages")
    if not isinstance(messages, list):
        return None
    answers = [index for index, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"]
    if not answers:
        return None
    last = answers[-1]
    return _last_user_text(messages[:last]), _text(messages[last].get("content"))


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        return " ".join(
            part["text"].strip() for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _tokens(text: str) -> int:
    return max(1, -(-len(text) // 4)) if text else 0
