"""Graders: ``POST /fine_tuning/alpha/graders/run`` and ``/validate``.

``string_check`` and ``text_similarity`` are computed for real (stdlib only): ``eq``/``ne``/``like``
(contains)/``ilike`` (contains, any case); ``fuzzy_match`` (difflib's ratio), ``bleu`` (sentence BLEU-4,
add-one smoothing above unigrams), ``gleu`` (Google BLEU), ``meteor`` (exact-match METEOR with its
fragmentation penalty), ``rouge_1`` to ``rouge_5`` (n-gram F1), ``rouge_l`` (LCS F1) and ``cosine``
(cosine of word counts: the service uses embeddings, which an emulator does not have). A ``multi`` grader
computes its graders and then its ``calculate_output`` formula (arithmetic, ``min``, ``max``, ``abs``...),
evaluated safely. ``python``, ``score_model`` and ``label_model`` graders are checked for shape (the
Python source must compile and define ``grade``) but not run: the emulator does not execute code or call
models; their score is a deterministic function of the grader, the sample, the item and the seed.

Templates ``{{ sample.output_text }}``, ``{{ sample.output_json.x }}`` and ``{{ item.x.y }}`` are filled in
before grading; a variable that does not resolve sets ``invalid_variable_error`` and scores 0.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import hashlib
import itertools
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow_provider_finetune.emulator.errors import invalid_request
from airflow_provider_finetune.emulator.params import parse_body
from airflow_provider_finetune.models import (
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    RunGraderRequest,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    ValidateGraderRequest,
)

__all__ = ["check_grader", "run_grader", "similarity", "validate_grader"]

_TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_WORD = re.compile(r"\w+|[^\w\s]")
_ERROR_FLAGS = (
    "formula_parse_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
    "invalid_variable_error",
    "other_error",
    "python_grader_server_error",
    "python_grader_runtime_error",
    "model_grader_server_error",
    "model_grader_refusal_error",
    "model_grader_parse_error",
)
_ERROR_DETAILS = (
    "python_grader_server_error_type",
    "python_grader_runtime_error_details",
    "model_grader_server_error_details",
)
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "sqrt": math.sqrt,
    "log": math.log,
    "exp": math.exp,
}
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
    ast.Mod: lambda a, b: a % b,
}

AnyGrader = StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader | MultiGrader


class _InvalidVariable(Exception):
    """A template variable that does not resolve."""


class _FormulaError(Exception):
    """A ``calculate_output`` formula that does not parse or evaluate."""


# ---------------------------------------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------------------------------------


def validate_grader(body: Any) -> dict[str, Any]:
    """Check a grader (``/graders/validate``) and return it as the service read it."""
    request = parse_body(ValidateGraderRequest, body)
    check_grader(request.grader, param="grader")
    return {"grader": request.grader.to_body()}


def run_grader(body: Any, *, seed: int = 0) -> dict[str, Any]:
    """Run a grader on a model sample and a dataset item (``/graders/run``).

    :param body: the request body.
    :param seed: the emulator's seed, for the scores of graders that are not computed.
    """
    request = parse_body(RunGraderRequest, body)
    check_grader(request.grader, param="grader")
    started = time.perf_counter()
    errors: dict[str, Any] = dict.fromkeys(_ERROR_FLAGS, False) | dict.fromkeys(_ERROR_DETAILS)
    sample: dict[str, Any] = {"output_text": request.model_sample}
    with contextlib.suppress(ValueError):
        sample["output_json"] = json.loads(request.model_sample)
    context = _Context({"sample": sample, "item": request.item or {}}, seed, errors)
    grader = request.grader
    sub_rewards: dict[str, float] = {}
    reward = _grade_any(grader, context, sub_rewards)
    model = grader.model if isinstance(grader, ScoreModelGrader) else None
    return {
        "reward": reward,
        "metadata": {
            "name": grader.name,
            "type": grader.type,
            "errors": errors,
            "execution_time": round(time.perf_counter() - started, 6),
            "scores": dict(sub_rewards),
            "token_usage": None,
            "sampled_model_name": model,
        },
        "sub_rewards": sub_rewards,
        "model_grader_token_usage_per_model": {},
    }


def check_grader(grader: AnyGrader, *, param: str) -> None:
    """Check what the request model cannot check.

    Python sources must compile and define ``grade``; formulas must parse and use only the multi grader's
    graders.

    :raises APIError: 400 naming ``param`` and the sub-field.
    """
    if isinstance(grader, PythonGrader):
        _check_python(grader.source, param=f"{param}.source")
    elif isinstance(grader, MultiGrader):
        named = _named(grader)
        for name, sub in named.items():
            if isinstance(sub, PythonGrader):
                _check_python(sub.source, param=f"{param}.graders.{name}.source")
        try:
            _evaluate(grader.calculate_output, dict.fromkeys(named, 0.5), dry=True)
        except _FormulaError as exc:
            raise invalid_request(
                f"calculate_output {grader.calculate_output!r} is not a valid formula: {exc}",
                param=f"{param}.calculate_output",
            ) from None


def _check_python(source: str, *, param: str) -> None:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise invalid_request(
            f"The Python source does not compile: {exc.msg} (line {exc.lineno})", param=param
        ) from None
    if not any(isinstance(node, ast.FunctionDef) and node.name == "grade" for node in tree.body):
        raise invalid_request("The Python source must define grade(sample, item)", param=param)


# ---------------------------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------------------------


class _Context:
    def __init__(self, namespaces: dict[str, Any], seed: int, errors: dict[str, Any]) -> None:
        self.namespaces = namespaces
        self.seed = seed
        self.errors = errors

    def render(self, template: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            value = self._lookup(match.group(1))
            return value if isinstance(value, str) else json.dumps(value)

        return _TEMPLATE.sub(substitute, template)

    def _lookup(self, path: str) -> Any:
        parts = [part for part in path.split(".") if part]
        if not parts or parts[0] not in self.namespaces:
            raise _InvalidVariable(path)
        node: Any = self.namespaces[parts[0]]
        for part in parts[1:]:
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise _InvalidVariable(path)
        return node

    def render_all(self, value: Any) -> Any:
        """Fill in every template string found in nested messages."""
        if isinstance(value, str):
            return self.render(value)
        if isinstance(value, list):
            return [self.render_all(item) for item in value]
        if isinstance(value, dict):
            return {key: self.render_all(item) for key, item in value.items()}
        return value

    def pseudo_score(self, *parts: Any) -> float:
        text = json.dumps([self.seed, *parts], sort_keys=True, default=str)
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64


def _grade(grader: AnyGrader, context: _Context) -> float:
    try:
        if isinstance(grader, StringCheckGrader):
            return _string_check(context.render(grader.input), context.render(grader.reference), grader.operation)
        if isinstance(grader, TextSimilarityGrader):
            hypothesis, reference = context.render(grader.input), context.render(grader.reference)
            return round(similarity(hypothesis, reference, grader.evaluation_metric), 6)
        if isinstance(grader, ScoreModelGrader):
            messages = context.render_all(grader.input)
            low, high = grader.range or [0.0, 1.0]
            return round(low + (high - low) * context.pseudo_score(grader.model, messages), 4)
        if isinstance(grader, LabelModelGrader):
            messages = context.render_all(grader.input)
            label = grader.labels[int(context.pseudo_score(grader.model, messages) * len(grader.labels))]
            return 1.0 if label in grader.passing_labels else 0.0
        if isinstance(grader, PythonGrader):
            return round(context.pseudo_score(grader.source, context.namespaces), 4)
    except _InvalidVariable:
        context.errors["invalid_variable_error"] = True
        return 0.0
    raise AssertionError(f"unknown grader {grader!r}")  # pragma: no cover - the models allow no other


def _grade_any(grader: AnyGrader, context: _Context, sub_rewards: dict[str, float]) -> float:
    if isinstance(grader, MultiGrader):
        return _grade_multi(grader, context, sub_rewards)
    return _grade(grader, context)


def _grade_multi(grader: MultiGrader, context: _Context, sub_rewards: dict[str, float]) -> float:
    for name, sub in _named(grader).items():
        sub_rewards[name] = _grade(sub, context)
    try:
        return round(_evaluate(grader.calculate_output, sub_rewards), 6)
    except _FormulaError:
        context.errors["formula_parse_error"] = True
        return 0.0


def _named(grader: MultiGrader) -> dict[str, Any]:
    """The graders of a multi grader by the names its formula uses."""
    graders = grader.graders
    if isinstance(graders, dict):
        return dict(graders)
    items = graders if isinstance(graders, list) else [graders]
    return {re.sub(r"\W", "_", item.name): item for item in items}


def _string_check(value: str, reference: str, operation: str) -> float:
    if operation == "eq":
        return float(value == reference)
    if operation == "ne":
        return float(value != reference)
    if operation == "like":
        return float(reference in value)
    return float(reference.lower() in value.lower())  # ilike


# ---------------------------------------------------------------------------------------------------------
# Text similarity
# ---------------------------------------------------------------------------------------------------------


def similarity(hypothesis: str, reference: str, metric: str) -> float:
    """Similarity of two texts by one of the ``text_similarity`` metrics, from 0 to 1."""
    if metric == "fuzzy_match":
        return difflib.SequenceMatcher(None, hypothesis, reference, autojunk=False).ratio()
    hyp, ref = _words(hypothesis), _words(reference)
    if metric == "bleu":
        return _bleu(hyp, ref)
    if metric == "gleu":
        return _gleu(hyp, ref)
    if metric == "meteor":
        return _meteor(hyp, ref)
    if metric == "cosine":
        return _cosine(Counter(hyp), Counter(ref))
    if metric == "rouge_l":
        return _f1(_lcs(hyp, ref), len(hyp), len(ref))
    if metric.startswith("rouge_"):
        n = int(metric.removeprefix("rouge_"))
        hyp_grams, ref_grams = _ngrams(hyp, n), _ngrams(ref, n)
        overlap = sum((hyp_grams & ref_grams).values())
        return _f1(overlap, sum(hyp_grams.values()), sum(ref_grams.values()))
    raise ValueError(f"unknown metric {metric!r}")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _f1(overlap: int, hyp_total: int, ref_total: int) -> float:
    if not overlap or not hyp_total or not ref_total:
        return 0.0
    precision, recall = overlap / hyp_total, overlap / ref_total
    return 2 * precision * recall / (precision + recall)


def _bleu(hyp: list[str], ref: list[str], max_n: int = 4) -> float:
    if not hyp or not ref:
        return 0.0
    logs = []
    for n in range(1, max_n + 1):
        hyp_grams = _ngrams(hyp, n)
        total = sum(hyp_grams.values())
        matches = sum((hyp_grams & _ngrams(ref, n)).values())
        if n == 1 and matches == 0:
            return 0.0
        if total == 0:
            # A hypothesis shorter than n words: no evidence either way at this order.
            continue
        logs.append(math.log(matches / total) if n == 1 else math.log((matches + 1) / (total + 1)))
    brevity = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return brevity * math.exp(sum(logs) / len(logs))


def _gleu(hyp: list[str], ref: list[str], max_n: int = 4) -> float:
    hyp_grams: Counter[tuple[str, ...]] = Counter()
    ref_grams: Counter[tuple[str, ...]] = Counter()
    for n in range(1, max_n + 1):
        hyp_grams += _ngrams(hyp, n)
        ref_grams += _ngrams(ref, n)
    hyp_total, ref_total = sum(hyp_grams.values()), sum(ref_grams.values())
    if not hyp_total or not ref_total:
        return 0.0
    matches = sum((hyp_grams & ref_grams).values())
    return min(matches / hyp_total, matches / ref_total)


def _meteor(hyp: list[str], ref: list[str]) -> float:
    # Align each hypothesis word with the first unused equal reference word.
    used = [False] * len(ref)
    alignment: list[int] = []
    for word in hyp:
        for index, candidate in enumerate(ref):
            if not used[index] and candidate == word:
                used[index] = True
                alignment.append(index)
                break
        else:
            alignment.append(-1)
    matched = [index for index in alignment if index >= 0]
    if not matched:
        return 0.0
    precision, recall = len(matched) / len(hyp), len(matched) / len(ref)
    f_mean = 10 * precision * recall / (recall + 9 * precision)
    chunks = 1 + sum(1 for a, b in itertools.pairwise(matched) if b != a + 1)
    return f_mean * (1 - 0.5 * (chunks / len(matched)) ** 3)


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(count * b[word] for word, count in a.items())
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0]
        for index, other in enumerate(b):
            current.append(previous[index] + 1 if word == other else max(previous[index + 1], current[index]))
        previous = current
    return previous[-1]


# ---------------------------------------------------------------------------------------------------------
# Formulas
# ---------------------------------------------------------------------------------------------------------


def _evaluate(formula: str, variables: Mapping[str, float], *, dry: bool = False) -> float:
    """Evaluate an arithmetic formula over named scores, without ``eval``.

    :param dry: only check the formula's shape and names: arithmetic errors (a division by zero with
        the stand-in values) are not errors then.
    """
    try:
        tree = ast.parse(formula.strip(), mode="eval")
    except SyntaxError as exc:
        raise _FormulaError(exc.msg) from None

    def visit(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in variables:
                raise _FormulaError(f"unknown name {node.id!r} (graders: {', '.join(variables) or 'none'})")
            return float(variables[node.id])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = visit(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            try:
                return float(_BINARY[type(node.op)](visit(node.left), visit(node.right)))
            except (ZeroDivisionError, OverflowError, ValueError) as exc:
                if dry:
                    return 0.0
                raise _FormulaError(str(exc)) from None
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
            and node.args
        ):
            try:
                return float(_FUNCTIONS[node.func.id](*(visit(arg) for arg in node.args)))
            except (TypeError, ValueError, OverflowError) as exc:
                if dry:
                    return 0.0
                raise _FormulaError(str(exc)) from None
        raise _FormulaError(
            f"{ast.unparse(node)!r} is not allowed (numbers, grader names, + - * / ** %, {', '.join(_FUNCTIONS)})"
        )

    return visit(tree)
