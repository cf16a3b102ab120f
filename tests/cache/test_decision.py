"""When to cache: deterministic requests only (unless opted in), Cache-Control, exclusions;
only answers that ended cleanly, without tool calls (unless opted in), never held ones."""

from __future__ import annotations

from dataclasses import replace

from qwen_gateway.cache.decision import CacheRules, Decision, cache_directives
from qwen_gateway.core.types import (
    ChatMessage,
    ChatRequest,
    ChoiceFinished,
    SamplingParams,
    TextDelta,
    ToolCallDelta,
)

GREEDY = ChatRequest("m", (ChatMessage("user", "hi"),), SamplingParams(temperature=0.0))
SAMPLED = replace(GREEDY, sampling=SamplingParams(temperature=0.7))
SEEDED = replace(GREEDY, sampling=SamplingParams(temperature=0.7, seed=3))
RULES = CacheRules()


def test_deterministic_requests_are_read_and_stored() -> None:
    assert RULES.decide(GREEDY, "key:1", 1, None) == Decision(True, True)
    assert RULES.decide(SEEDED, "key:1", 1, None) == Decision(True, True)


def test_sampled_requests_bypass_unless_the_operator_opts_in() -> None:
    assert RULES.decide(SAMPLED, "key:1", 1, None) == Decision(False, False, "nondeterministic")
    opted = CacheRules(cache_nondeterministic=True)
    assert opted.decide(SAMPLED, "key:1", 1, None) == Decision(True, True)


def test_cache_control_no_cache_stores_without_reading_and_no_store_does_neither() -> None:
    assert RULES.decide(GREEDY, "k", None, "no-cache") == Decision(False, True, "no-cache")
    no_store = RULES.decide(GREEDY, "k", None, "max-age=0, No-Store")
    assert no_store.bypass and no_store.reason == "no-store"
    assert cache_directives(' no-cache , max-age="0"') == {"no-cache", "max-age"}
    assert cache_directives(None) == frozenset()


def test_excluded_keys_and_principals_bypass() -> None:
    rules = CacheRules(exclude_keys=frozenset({3}), exclude_principals=frozenset({"jwt:al"}))
    assert rules.decide(GREEDY, "key:3", 3, None).reason == "excluded"
    assert rules.decide(GREEDY, "jwt:al", None, None).reason == "excluded"
    assert rules.decide(GREEDY, "key:4", 4, None) == Decision(True, True)


CLEAN = [TextDelta(0, "a"), ChoiceFinished(0, "stop")]
CALL = ToolCallDelta(0, 0, "call_1", "f", "{}")


def test_only_answers_that_ended_cleanly_are_stored() -> None:
    assert RULES.storable(CLEAN, 1) is None
    assert RULES.storable([TextDelta(0, "a"), ChoiceFinished(0, "length")], 1) is None
    assert RULES.storable([TextDelta(0, "a")], 1) == "incomplete"
    assert RULES.storable(CLEAN, 2) == "incomplete"  # a choice never finished
    filtered = [TextDelta(0, "a"), ChoiceFinished(0, "content_filter")]
    assert RULES.storable(filtered, 1) == "content_filter"
    assert RULES.storable([ChoiceFinished(0, "cancelled")], 1) == "cancelled"
    assert RULES.storable(CLEAN, 1, held=True) == "held"


def test_tool_call_answers_are_stored_only_when_configured() -> None:
    answer = [CALL, ChoiceFinished(0, "tool_calls")]
    assert RULES.storable(answer, 1) == "tool_calls"
    assert CacheRules(cache_tool_calls=True).storable(answer, 1) is None
