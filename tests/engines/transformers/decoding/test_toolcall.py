"""Forced tool calls in Qwen's Hermes format, decoded with the tiny random model."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_gateway.engines.transformers.decoding.compiler import GrammarCompiler
from qwen_gateway.engines.transformers.decoding.constraint import Constraint
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.qwen.tokenizer import QwenTokenizer
from support.decoding import (
    EOS,
    MODES,
    TOOL_CLOSE_ID,
    TOOL_OPEN_ID,
    TOOLS,
    WEATHER,
    allowed,
    budgets,
    check_tool_calls,
    decode,
    shortest,
)


@pytest.mark.parametrize("sampled", MODES)
@pytest.mark.parametrize("parallel", [False, True], ids=["single", "parallel"])
def test_tool_call_outputs_match_hermes_format(
    compiler: GrammarCompiler,
    slot_model: Any,
    tokenizer: QwenTokenizer,
    sampled: bool,
    parallel: bool,
) -> None:
    grammar = compiler.tool_calls(TOOLS, parallel=parallel)
    forced = 0
    for max_tokens in budgets(grammar):
        for run in decode(slot_model, tokenizer, grammar, max_tokens, sampled=sampled):
            assert run.finished, (max_tokens, run.text)
            check_tool_calls(run, TOOLS, parallel=parallel)
            forced += run.forced
    assert forced


def test_named_tool_choice_forces_that_tool(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer
) -> None:
    grammar = compiler.tool_calls([WEATHER], parallel=False)
    for run in decode(slot_model, tokenizer, grammar, 40, sampled=True):
        assert run.finished
        check_tool_calls(run, [WEATHER], parallel=False)
        assert '"name": "get_weather"' in run.text


def test_tool_tags_only_as_single_tokens(
    compiler: GrammarCompiler, tokenizer: QwenTokenizer
) -> None:
    vocab = compiler.model_vocab_size
    constraint = Constraint(compiler.tool_calls(TOOLS, parallel=False), 100)
    assert allowed(constraint, vocab) == {TOOL_OPEN_ID}
    with pytest.raises(ValueError, match="not allowed"):
        constraint.accept(tokenizer.encode_text("<")[0])
    constraint.accept(TOOL_OPEN_ID)
    for token in tokenizer.encode_text('\n{"name": "get_weather", "arguments": {"city": "'):
        assert token in allowed(constraint, vocab)
        constraint.accept(token)
    assert TOOL_CLOSE_ID not in allowed(constraint, vocab)
    for token in tokenizer.encode_text('Oslo"}}\n'):
        constraint.accept(token)
    assert allowed(constraint, vocab) == {TOOL_CLOSE_ID}
    constraint.accept(TOOL_CLOSE_ID)
    assert constraint.done
    assert allowed(constraint, vocab) <= EOS


def test_invalid_tools_are_invalid_requests(compiler: GrammarCompiler) -> None:
    bad = {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": 3}}}}
    with pytest.raises(InvalidRequest, match="tool 'f'") as info:
        compiler.tool_calls([bad], parallel=False)
    assert info.value.param == "tools"
    with pytest.raises(InvalidRequest, match="no name"):
        compiler.tool_calls([{"parameters": {}}], parallel=False)
    with pytest.raises(InvalidRequest):
        compiler.tool_calls([], parallel=False)


def test_two_hundred_tools(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer
) -> None:
    tools = [
        {
            "name": f"tool_{i}",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}, "n": {"type": "integer", "minimum": 0}},
                "required": ["q"],
            },
        }
        for i in range(200)
    ]
    try:
        grammar = compiler.tool_calls(tools, parallel=True)
    except InvalidRequest:  # failing cleanly is acceptable too
        return
    for run in decode(slot_model, tokenizer, grammar, 40, sampled=True):
        assert run.finished
        check_tool_calls(run, tools, parallel=True)


def test_unicode_tool_names(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer
) -> None:
    tools = [
        {
            "name": 'météo_天気"q',
            "parameters": {
                "type": "object",
                "properties": {"城市": {"type": "string", "maxLength": 4}},
                "required": ["城市"],
            },
        },
        {"name": "ñ", "parameters": {"type": "object", "properties": {}}},
    ]
    grammar = compiler.tool_calls(tools, parallel=True)
    for run in decode(slot_model, tokenizer, grammar, shortest(grammar) + 2, sampled=True):
        assert run.finished
        check_tool_calls(run, tools, parallel=True)
