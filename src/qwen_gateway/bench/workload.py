"""What the benchmark sends: length distributions, prompts and arrival times.

Prompts are slices of a fixed English passage cut at token boundaries of the Qwen2.5 tokenizer,
so a prompt of N tokens is N tokens for that tokenizer (the chat template adds its own few);
each request starts its slice at a different place, so that prefix caches do not turn the
benchmark into a cache test. Every request ``i`` draws from its own seeded generator: the same
seed gives every target the same requests, whatever order they finish in.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from qwen_gateway.qwen.tokenizer import QwenTokenizer

MAX_TOKENS = 131_072  # the largest prompt or output length accepted

PASSAGE = (
    "The lighthouse keeper wrote the weather in a narrow book every morning before the kettle "
    "boiled. Wind from the west meant the fishing boats would leave late, and fog meant they "
    "would not leave at all. Over thirty years the book grew into a shelf, and the shelf into a "
    "record that scientists from the university came to copy by hand. They counted storms, "
    "measured how often the harbour froze, and compared the dates on which the swallows "
    "returned. None of it had been written for them. The keeper only wanted to know whether "
    "the coming week resembled a week he had already lived through, because a familiar week "
    "was easier to plan for. Numbers, he said, are a way of remembering without having to "
    "feel everything twice. When the light was finally automated, the station kept running "
    "without him: a small computer switched the lamp on at dusk, sent a message when a bulb "
    "failed, and logged the wind speed every ten minutes. It recorded far more than he ever "
    "had, yet nobody came to read it, and the files were overwritten each spring to make "
    "room. The old books went to a museum on the mainland, where children now turn the pages "
    "and try to guess which year had the longest winter. Some of them find the note from the "
    "night the supply ship ran aground, written in a shakier hand than the rest, and ask "
    "whether everyone was saved. The answer is on the next page, in the same careful columns "
    "as always: wind north east, visibility poor, all crew ashore, tea at six. "
)


@dataclass(frozen=True)
class Lengths:
    """A token-length distribution: ``fixed:N``, ``uniform:LOW:HIGH`` or ``normal:MEAN:STD``
    (a plain ``N`` is ``fixed:N``); every draw is clipped to 1..MAX_TOKENS."""

    kind: Literal["fixed", "uniform", "normal"]
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Lengths:
        parts = spec.strip().split(":")
        refused = ValueError(
            f"{spec!r} is not a length distribution: use N, fixed:N, uniform:LOW:HIGH "
            "or normal:MEAN:STD"
        )
        try:
            numbers = [float(p) for p in parts[1:]] if not parts[0].isdigit() else []
            if parts[0].isdigit() and len(parts) == 1:
                return cls._checked("fixed", float(parts[0]))
            kind = parts[0]
            if kind == "fixed" and len(numbers) == 1:
                return cls._checked("fixed", numbers[0])
            if kind == "uniform" and len(numbers) == 2 and numbers[0] <= numbers[1]:
                return cls._checked("uniform", numbers[0], numbers[1])
            if kind == "normal" and len(numbers) == 2 and numbers[1] >= 0:
                return cls._checked("normal", numbers[0], numbers[1])
        except ValueError as exc:  # a number that does not parse, or one out of range
            raise refused from exc
        raise refused

    @classmethod
    def _checked(
        cls, kind: Literal["fixed", "uniform", "normal"], a: float, b: float = 0.0
    ) -> Lengths:
        if not 1 <= a <= MAX_TOKENS or b > MAX_TOKENS:
            raise ValueError(f"lengths must lie within 1..{MAX_TOKENS} tokens")
        return cls(kind, a, b)

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = rng.randint(int(self.a), int(self.b))
        else:
            value = rng.gauss(self.a, self.b)
        return max(1, min(MAX_TOKENS, round(value)))

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.a:g}"
        return f"{self.kind}:{self.a:g}:{self.b:g}"


@dataclass(frozen=True)
class Planned:
    """One request of the plan."""

    index: int
    prompt: str
    prompt_tokens: int  # of the text alone, by the Qwen2.5 tokenizer
    max_tokens: int


class PromptMaker:
    """Prompts of an exact token count cut from :data:`PASSAGE`."""

    def __init__(self, tokenizer: QwenTokenizer | None = None) -> None:
        self._tok = tokenizer or QwenTokenizer.builtin()
        self._ids = self._tok.encode_text(" " + PASSAGE.strip())  # one cycle, wraps cleanly

    def make(self, tokens: int, rng: random.Random) -> tuple[str, int]:
        """A text of ``tokens`` tokens (re-encoding is checked; the count returned is the
        re-encoded one, equal to ``tokens`` unless the text refused every cut tried)."""
        ids = self._ids
        best: tuple[str, int] | None = None
        for _ in range(8):
            start = rng.randrange(len(ids))
            repeats = (start + tokens) // len(ids) + 1
            window = (ids * (repeats + 1))[start : start + tokens]
            text = self._tok.decode(window)
            count = self._tok.count_text(text)
            if count == tokens:
                return text, count
            if best is None or abs(count - tokens) < abs(best[1] - tokens):
                best = (text, count)
        assert best is not None
        return best


@dataclass(frozen=True)
class Workload:
    """The requests of a run: ``requests`` of them, lengths drawn with ``seed``."""

    requests: int
    prompt: Lengths
    output: Lengths
    seed: int = 0

    def plan(self, maker: PromptMaker) -> Iterator[Planned]:
        for i in range(self.requests):
            rng = random.Random(self.seed * 1_000_003 + i)
            n_prompt = self.prompt.sample(rng)
            n_out = self.output.sample(rng)
            text, counted = maker.make(n_prompt, rng)
            yield Planned(i, text, counted, n_out)


def arrivals(rate: float, seed: int) -> Iterator[float]:
    """Open-loop arrival offsets in seconds: a Poisson process of ``rate`` per second
    (exponential gaps), from its own seeded generator."""
    rng = random.Random(seed ^ 0x5EED)
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t


def request_body(
    planned: Planned,
    *,
    model: str,
    api: Literal["chat", "completions"],
    stream: bool,
    ignore_eos: bool,
) -> dict[str, Any]:
    """The JSON body for one planned request."""
    body: dict[str, Any] = {"model": model, "max_tokens": planned.max_tokens, "stream": stream}
    if api == "chat":
        body["messages"] = [{"role": "user", "content": planned.prompt}]
    else:
        body["prompt"] = planned.prompt
    if stream:
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:  # vLLM's extension: generate exactly max_tokens
        body["ignore_eos"] = True
    return body
