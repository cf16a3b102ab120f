"""The closing policy: from any matcher state, the tokens that finish the grammar (ending with
EOS), without touching the matcher; cut short at the cap; ``finished`` only when nothing but
EOS may follow."""

from __future__ import annotations

import json

import jsonschema
import pytest
import xgrammar as xgr

from qwen_gateway.engines.transformers.decoding.compiler import GrammarCompiler
from qwen_gateway.engines.transformers.decoding.grammar import CompiledGrammar
from qwen_gateway.engines.transformers.decoding.plan import ClosingPolicy
from qwen_gateway.qwen.tokenizer import IM_END_ID, QwenTokenizer
from support.decoding import SCHEMA


def matcher_after(
    grammar: CompiledGrammar, tokenizer: QwenTokenizer, text: str
) -> xgr.GrammarMatcher:
    matcher = xgr.GrammarMatcher(grammar.compiled)
    for token in tokenizer.encode_text(text):
        assert matcher.accept_token(token), text
    return matcher


def test_closes_an_empty_object(compiler: GrammarCompiler, tokenizer: QwenTokenizer) -> None:
    grammar = compiler.json_schema(None)
    tokens, complete = ClosingPolicy(grammar.vocabulary).simulate(
        xgr.GrammarMatcher(grammar.compiled)
    )
    assert complete
    assert tokens[-1] == IM_END_ID
    assert tokenizer.decode(tokens[:-1]) == "{}"


def test_closes_open_strings_arrays_and_objects(
    compiler: GrammarCompiler, tokenizer: QwenTokenizer
) -> None:
    grammar = compiler.json_schema(None)
    prefix = '{"a": [[1, "x'
    matcher = matcher_after(grammar, tokenizer, prefix)
    tokens, complete = ClosingPolicy(grammar.vocabulary).simulate(matcher)
    assert complete and tokens[-1] == IM_END_ID
    assert json.loads(prefix + tokenizer.decode(tokens[:-1])) == {"a": [[1, "x"]]}
    # The matcher was not moved: the plan can still be fed to it, up to termination.
    assert not matcher.is_completed()
    for token in tokens:
        assert matcher.accept_token(token)
    assert matcher.is_terminated()


def test_follows_what_the_schema_forces(
    compiler: GrammarCompiler, tokenizer: QwenTokenizer
) -> None:
    grammar = compiler.json_schema(SCHEMA)
    tokens, complete = ClosingPolicy(grammar.vocabulary).simulate(
        xgr.GrammarMatcher(grammar.compiled)
    )
    assert complete and tokens[-1] == IM_END_ID
    value = json.loads(tokenizer.decode(tokens[:-1]))
    jsonschema.validate(value, SCHEMA)
    assert value["v"] == 2  # const, forced


@pytest.mark.parametrize("cap", [0, 1, 2])
def test_cut_at_the_cap(compiler: GrammarCompiler, tokenizer: QwenTokenizer, cap: int) -> None:
    grammar = compiler.json_schema(None)
    matcher = matcher_after(grammar, tokenizer, '{"a": [[1, "x')
    tokens, complete = ClosingPolicy(grammar.vocabulary).simulate(matcher, cap=cap)
    assert not complete
    assert len(tokens) == cap


def test_a_completed_matcher_needs_only_eos(
    compiler: GrammarCompiler, tokenizer: QwenTokenizer
) -> None:
    grammar = compiler.json_schema(None)
    matcher = matcher_after(grammar, tokenizer, "{}")
    policy = ClosingPolicy(grammar.vocabulary)
    assert policy.simulate(matcher) == ([IM_END_ID], True)
    assert matcher.accept_token(IM_END_ID)
    assert policy.simulate(matcher) == ([], True)  # terminated: nothing left


def test_finished_only_when_nothing_but_eos_follows(
    compiler: GrammarCompiler, tokenizer: QwenTokenizer
) -> None:
    grammar = compiler.json_schema(None)
    policy = ClosingPolicy(grammar.vocabulary)
    assert not policy.finished(xgr.GrammarMatcher(grammar.compiled))
    assert not policy.finished(matcher_after(grammar, tokenizer, '{"a": 1'))
    done = matcher_after(grammar, tokenizer, "{}")
    assert policy.finished(done)
    assert done.accept_token(IM_END_ID)
    assert policy.finished(done)  # terminated


def test_a_complete_value_that_may_go_on_is_not_finished(
    compiler: GrammarCompiler, tokenizer: QwenTokenizer
) -> None:
    grammar = compiler.json_schema({"type": "integer"})
    matcher = matcher_after(grammar, tokenizer, "1")
    assert matcher.is_completed()  # "1" is an integer, but "12" would be one too
    assert not ClosingPolicy(grammar.vocabulary).finished(matcher)
