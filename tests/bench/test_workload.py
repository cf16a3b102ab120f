"""Length distributions, prompts of an exact token count, Poisson arrivals, request bodies."""

from __future__ import annotations

import random
import statistics

import pytest

from qwen_gateway.bench.workload import (
    MAX_TOKENS,
    Lengths,
    PromptMaker,
    Workload,
    arrivals,
    request_body,
)
from qwen_gateway.qwen.tokenizer import QwenTokenizer


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("64", Lengths("fixed", 64)),
        ("fixed:7", Lengths("fixed", 7)),
        ("uniform:10:20", Lengths("uniform", 10, 20)),
        ("normal:100:15", Lengths("normal", 100, 15)),
    ],
)
def test_length_specs_parse(spec: str, expected: Lengths) -> None:
    assert Lengths.parse(spec) == expected


@pytest.mark.parametrize(
    "spec", ["", "0", "uniform:20:10", "normal:5", "poisson:3", "fixed:x", f"{MAX_TOKENS + 1}"]
)
def test_bad_length_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="length"):
        Lengths.parse(spec)


def test_draws_stay_within_the_distribution() -> None:
    rng = random.Random(1)
    uniform = [Lengths.parse("uniform:10:20").sample(rng) for _ in range(2000)]
    assert min(uniform) == 10 and max(uniform) == 20
    normal = [Lengths.parse("normal:200:20").sample(rng) for _ in range(4000)]
    assert 195 < statistics.mean(normal) < 205
    assert 17 < statistics.stdev(normal) < 23
    clipped = [Lengths.parse("normal:2:50").sample(rng) for _ in range(500)]
    assert min(clipped) == 1  # never a zero or negative length
    assert {Lengths.parse("fixed:9").sample(rng) for _ in range(10)} == {9}


@pytest.mark.parametrize("tokens", [1, 3, 50, 128, 1000, 4000])
def test_prompts_have_the_asked_token_count(tokens: int) -> None:
    maker = PromptMaker()
    tok = QwenTokenizer.builtin()
    for seed in range(5):
        text, counted = maker.make(tokens, random.Random(seed))
        assert counted == tokens
        assert tok.count_text(text) == tokens


def test_the_same_seed_plans_the_same_requests_and_prompts_differ() -> None:
    maker = PromptMaker()
    w = Workload(20, Lengths.parse("uniform:30:60"), Lengths.parse("normal:50:10"), seed=4)
    first, second = list(w.plan(maker)), list(w.plan(maker))
    assert first == second
    assert len({p.prompt for p in first}) > 15  # slices start at different places
    assert all(30 <= p.prompt_tokens <= 60 for p in first)
    other = list(Workload(20, w.prompt, w.output, seed=5).plan(maker))
    assert other != first


def test_arrivals_are_a_poisson_process_of_the_rate() -> None:
    times = arrivals(50.0, seed=3)
    points = [next(times) for _ in range(20000)]
    gaps = [b - a for a, b in zip([0.0, *points], points, strict=False)]
    assert all(g > 0 for g in gaps)
    assert statistics.mean(gaps) == pytest.approx(1 / 50, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(1 / 50, rel=0.05)  # exponential: sd = mean


def test_request_bodies() -> None:
    maker = PromptMaker()
    planned = next(Workload(1, Lengths.parse("8"), Lengths.parse("5")).plan(maker))
    chat = request_body(planned, model="m", api="chat", stream=True, ignore_eos=True)
    assert chat["messages"] == [{"role": "user", "content": planned.prompt}]
    assert chat["max_tokens"] == 5 and chat["ignore_eos"] is True
    assert chat["stream_options"] == {"include_usage": True}
    legacy = request_body(planned, model="m", api="completions", stream=False, ignore_eos=False)
    assert legacy["prompt"] == planned.prompt
    assert "ignore_eos" not in legacy and "stream_options" not in legacy
