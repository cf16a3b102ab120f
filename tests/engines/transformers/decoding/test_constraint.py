"""Constraints with the tiny random model: every decode applies the constraint at each step of
a real (random-weight) model, greedy and sampled, with a generous budget and with tight ones;
outputs must be complete and valid, also when the budget rule had to force the close.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from qwen_gateway.engines.transformers.decoding.compiler import GrammarCompiler
from qwen_gateway.engines.transformers.decoding.constraint import Constraint
from qwen_gateway.qwen.tokenizer import IM_END_ID, QwenTokenizer
from support.decoding import (
    EOS,
    MODES,
    REAL_VOCAB,
    SCHEMA,
    allowed,
    budgets,
    decode,
    shortest,
)


@pytest.mark.parametrize("sampled", MODES)
def test_json_object_outputs_parse(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer, sampled: bool
) -> None:
    grammar = compiler.json_schema(None)
    for max_tokens in budgets(grammar):
        for run in decode(slot_model, tokenizer, grammar, max_tokens, sampled=sampled):
            assert run.finished, (max_tokens, run.text)
            assert isinstance(json.loads(run.text), dict), run.text
            assert "\t" not in run.text and "\n" not in run.text


@pytest.mark.parametrize("sampled", MODES)
def test_json_schema_outputs_validate(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer, sampled: bool
) -> None:
    grammar = compiler.json_schema(SCHEMA)
    forced = 0
    for max_tokens in budgets(grammar):
        for run in decode(slot_model, tokenizer, grammar, max_tokens, sampled=sampled):
            assert run.finished, (max_tokens, run.text)
            jsonschema.validate(json.loads(run.text), SCHEMA)
            forced += run.forced
    assert forced  # the tight budgets did exercise the forced close


def test_minimal_budget_closes_exactly(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer
) -> None:
    grammar = compiler.json_schema(SCHEMA)
    need = shortest(grammar)
    for run in decode(slot_model, tokenizer, grammar, need, sampled=True):
        assert run.finished and run.forced
        assert len(run.tokens) + 1 <= need
        jsonschema.validate(json.loads(run.text), SCHEMA)


def test_recursive_schema(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer
) -> None:
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["v", "kids"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    }
    grammar = compiler.json_schema(tree)
    for max_tokens in (60, shortest(grammar) + 1):
        for run in decode(slot_model, tokenizer, grammar, max_tokens, sampled=True):
            assert run.finished
            jsonschema.validate(json.loads(run.text), tree)


def test_padding_and_added_tokens_never_allowed(
    compiler: GrammarCompiler, tokenizer: QwenTokenizer
) -> None:
    vocab = compiler.model_vocab_size
    constraint = Constraint(compiler.json_schema(None), 100)
    for token in tokenizer.encode_text('{"key'):
        constraint.accept(token)
    inside_string = allowed(constraint, vocab)
    assert len(inside_string) > 100_000
    assert not {t for t in inside_string if t >= REAL_VOCAB - 22}  # added tokens and padding


def test_compact_whitespace_only(compiler: GrammarCompiler, tokenizer: QwenTokenizer) -> None:
    constraint = Constraint(compiler.json_schema(None), 100)
    constraint.accept(tokenizer.encode_text("{")[0])
    texts = [tokenizer.token_bytes(t) for t in allowed(constraint, compiler.model_vocab_size)]
    assert not [t for t in texts if t[:1] in (b" ", b"\n", b"\t", b"\r")]


def test_done_after_complete_object(compiler: GrammarCompiler, tokenizer: QwenTokenizer) -> None:
    constraint = Constraint(compiler.json_schema(None), 100)
    assert not constraint.done
    constraint.accept(tokenizer.encode_text("{}")[0])
    assert constraint.done
    assert allowed(constraint, compiler.model_vocab_size) == set(EOS)
    constraint.accept(IM_END_ID)
    assert constraint.done


def test_budget_forces_the_policy_path(compiler: GrammarCompiler, tokenizer: QwenTokenizer) -> None:
    constraint = Constraint(compiler.json_schema(None), 100)
    for token in tokenizer.encode_text('{"a": [[1, "x'):
        constraint.accept(token)
    need = constraint.shortest_completion()
    assert need >= 4  # '"', ']', ']', '}' (some merged), EOS
    assert len(allowed(constraint, compiler.model_vocab_size, remaining=1000)) > 1000
    assert not constraint.forced_close
    produced: list[int] = []
    for step in range(need):
        (token,) = allowed(constraint, compiler.model_vocab_size, remaining=need - step)
        constraint.accept(token)
        if token in EOS:
            break
        produced.append(token)
    assert constraint.forced_close and constraint.done
    assert json.loads('{"a": [[1, "x' + tokenizer.decode(produced)) == {"a": [[1, "x"]]}
