"""Sampling parameters change generation the way OpenAI and vLLM define them."""

from __future__ import annotations

from typing import Any

from support.fixtures import MODEL, InProcess

ASK = [{"role": "user", "content": "Hello, who are you?"}]


async def _text(gateway: InProcess, **params: Any) -> str:
    c = await gateway.client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=24, **params
    )
    return c.choices[0].message.content or ""


async def test_top_k_one_and_tiny_top_p_are_greedy(gateway: InProcess) -> None:
    greedy = await _text(gateway, temperature=0)
    assert await _text(gateway, temperature=1.0, seed=5, extra_body={"top_k": 1}) == greedy
    assert await _text(gateway, temperature=1.5, seed=5, top_p=1e-6) == greedy


async def test_temperatures_too_small_to_divide_by_are_greedy(gateway: InProcess) -> None:
    greedy = await _text(gateway, temperature=0)
    for temperature in (1e-300, 1e-45, 9e-6):
        assert await _text(gateway, temperature=temperature, seed=5) == greedy, temperature


async def test_penalties_change_greedy_output(gateway: InProcess) -> None:
    greedy = await _text(gateway, temperature=0)
    assert len(set(greedy)) < len(greedy)  # the random model repeats itself
    for params in (
        {"frequency_penalty": 2.0},
        {"presence_penalty": 2.0},
        {"extra_body": {"repetition_penalty": 2.0}},
    ):
        assert await _text(gateway, temperature=0, **params) != greedy, params


async def test_string_tool_call_arguments_render_like_objects(
    gateway: InProcess, tiny_model_dir: object
) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    args = {"city": "Paris", "unit": "c"}
    call = {"id": "call_1", "type": "function", "function": {"name": "weather"}}
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21"},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    tools = [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    ]
    ref_history = [dict(m) for m in history]
    ref_history[1] = {**history[1], "tool_calls": [{**call, "function": {**call["function"], "arguments": args}}]}  # fmt: skip
    ref_history[1].pop("content")
    text = reference.apply_chat_template(
        ref_history, tools=tools, add_generation_prompt=True, tokenize=False
    )
    expected = len(reference(text, add_special_tokens=False)["input_ids"])
    wire_history = [dict(m) for m in history]
    wire_history[1] = {**history[1], "tool_calls": [{**call, "function": {**call["function"], "arguments": '{"city": "Paris", "unit": "c"}'}}]}  # fmt: skip
    c = await gateway.client.chat.completions.create(
        model=MODEL,
        messages=wire_history,  # type: ignore[arg-type]
        tools=tools,  # type: ignore[arg-type]
        max_tokens=1,
    )
    assert c.usage is not None
    assert c.usage.prompt_tokens == expected
