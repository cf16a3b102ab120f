"""Shared by the constrained-decoding tests: schemas, tools, and a batched decode loop that
applies a constraint at every step of the tiny random model."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
import torch

from qwen_gateway.engines.transformers.decoding.constraint import Constraint
from qwen_gateway.engines.transformers.decoding.grammar import CompiledGrammar
from qwen_gateway.qwen.tokenizer import ENDOFTEXT_ID, IM_END_ID, QwenTokenizer

EOS = frozenset({IM_END_ID, ENDOFTEXT_ID})
TOOL_OPEN_ID = 151657
TOOL_CLOSE_ID = 151658
REAL_VOCAB = 151665
SEEDS = range(20)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "v": {"const": 2},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "pos": {
            "type": "object",
            "properties": {
                "x": {"type": "number", "minimum": -5, "maximum": 5},
                "ok": {"type": "boolean"},
            },
            "required": ["x"],
            "additionalProperties": False,
        },
        "name": {"type": "string", "minLength": 1, "maxLength": 6},
        "age": {"type": "integer", "minimum": 1, "maximum": 30},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
    },
    "required": ["v", "kind", "pos"],
    "additionalProperties": False,
}

WEATHER = {
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"enum": ["c", "f"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
}
CLOCK = {"name": "now", "parameters": {"type": "object", "properties": {}}}
TOOLS = [WEATHER, CLOCK]


@dataclass
class Run:
    tokens: list[int]  # without EOS
    finished: bool  # EOS sampled within the budget
    forced: bool
    text: str


def decode(
    model: Any,
    tokenizer: QwenTokenizer,
    grammar: CompiledGrammar,
    max_tokens: int,
    *,
    sampled: bool,
) -> list[Run]:
    """Decode one sequence per seed (a different prompt each), all in one batch."""
    prompts = [tokenizer.encode_text(f"Request {seed}: reply in JSON, please.") for seed in SEEDS]
    constraints = [Constraint(grammar, max_tokens) for _ in SEEDS]
    generators = [torch.Generator().manual_seed(seed) for seed in SEEDS]
    outputs: list[list[int]] = [[] for _ in SEEDS]
    finished = [False] * len(SEEDS)
    positions = [len(p) for p in prompts]
    with torch.inference_mode():
        logits = torch.stack([model.prefill(i, p) for i, p in enumerate(prompts)])
        active = list(SEEDS)
        while active:
            last: list[int] = []
            still: list[int] = []
            for row, i in enumerate(active):
                logit_row = logits[row]
                constraints[i].apply(logit_row, max_tokens - len(outputs[i]))
                if sampled:  # inverse-CDF sampling: multinomial is slow over 152k entries
                    cdf = torch.cumsum(torch.softmax(logit_row, dim=-1), dim=0)
                    u = torch.rand(1, generator=generators[i]) * cdf[-1]
                    token = min(int(torch.searchsorted(cdf, u)), len(cdf) - 1)
                else:
                    token = int(torch.argmax(logit_row))
                constraints[i].accept(token)
                if token in EOS:
                    finished[i] = True
                    assert constraints[i].done
                    continue
                outputs[i].append(token)
                if len(outputs[i]) + 1 > max_tokens:  # EOS counts against the budget too
                    continue
                still.append(i)
                last.append(token)
            active = still
            if active:
                logits = model.decode(active, last, [positions[i] for i in active])
                for i in active:
                    positions[i] += 1
    return [
        Run(out, fin, c.forced_close, tokenizer.decode(out))
        for out, fin, c in zip(outputs, finished, constraints, strict=True)
    ]


def shortest(grammar: CompiledGrammar) -> int:
    return Constraint(grammar, 1000).shortest_completion()


def check_tool_calls(run: Run, tools: Sequence[Mapping[str, Any]], *, parallel: bool) -> None:
    params = {t["name"]: t["parameters"] for t in tools}
    assert run.text.startswith("<tool_call>\n"), run.text
    calls = run.text.split("\n</tool_call>\n<tool_call>\n") if parallel else [run.text]
    if len(calls) > 1:
        calls[0] += "\n</tool_call>"
        calls[-1] = "<tool_call>\n" + calls[-1]
        calls[1:-1] = [f"<tool_call>\n{c}\n</tool_call>" for c in calls[1:-1]]
    for call in calls:
        match = re.fullmatch(
            r'<tool_call>\n\{"name": ("(?:[^"\\]|\\.)*"), "arguments": (.*)\}\n</tool_call>',
            call,
            flags=re.DOTALL,
        )
        assert match, call
        name = json.loads(match.group(1))
        assert name in params, name
        jsonschema.validate(json.loads(match.group(2)), params[name])
    # The tags are the single added tokens, and nothing else spells them.
    assert run.tokens.count(TOOL_OPEN_ID) == len(calls)
    assert run.tokens.count(TOOL_CLOSE_ID) == len(calls)
    assert run.text.count("<tool_call>") == len(calls)


def budgets(grammar: CompiledGrammar) -> list[int]:
    return [200, shortest(grammar) + 2, 30]


MODES = [pytest.param(False, id="greedy"), pytest.param(True, id="sampled")]


def allowed(constraint: Constraint, vocab: int, remaining: int = 1000) -> set[int]:
    row = torch.zeros(vocab)
    constraint.apply(row, remaining)
    return set(torch.nonzero(row > float("-inf")).flatten().tolist())
