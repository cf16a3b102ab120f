"""A compiled grammar: its initial plan is the closing policy's path from the start state,
computed once and shared."""

from __future__ import annotations

import pytest
import xgrammar as xgr

from qwen_gateway.engines.transformers.decoding import grammar as grammar_module
from qwen_gateway.engines.transformers.decoding.compiler import GrammarCompiler
from qwen_gateway.engines.transformers.decoding.grammar import CompiledGrammar
from qwen_gateway.engines.transformers.decoding.plan import ClosingPolicy, Plan
from support.decoding import SCHEMA


def fresh(compiler: GrammarCompiler, description: str = "fresh") -> CompiledGrammar:
    """A grammar whose initial plan was never computed (the compiler's are precomputed)."""
    compiled = compiler.json_schema(SCHEMA)
    return CompiledGrammar(compiled.compiled, compiled.vocabulary, description)


def test_initial_plan_is_the_policy_path_from_the_start(compiler: GrammarCompiler) -> None:
    grammar = fresh(compiler)
    expected = ClosingPolicy(grammar.vocabulary).simulate(xgr.GrammarMatcher(grammar.compiled))
    tokens, complete = grammar.initial_plan()
    assert complete
    assert (tokens, complete) == expected
    assert tokens[-1] == grammar.vocabulary.stop_id


def test_initial_plan_is_computed_once(
    compiler: GrammarCompiler, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulations: list[Plan] = []

    class Counting(ClosingPolicy):
        def simulate(self, matcher: xgr.GrammarMatcher, cap: int = 512) -> Plan:
            plan = super().simulate(matcher, cap)
            simulations.append(plan)
            return plan

    monkeypatch.setattr(grammar_module, "ClosingPolicy", Counting)
    grammar = fresh(compiler)
    first = grammar.initial_plan()
    assert grammar.initial_plan() is first
    assert len(simulations) == 1


def test_repr_names_the_grammar(compiler: GrammarCompiler) -> None:
    assert repr(fresh(compiler, "json_schema(abc)")) == "CompiledGrammar(json_schema(abc))"
