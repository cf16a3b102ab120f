"""The output policy and token logprobs: a redaction never lets the masked tokens out
through their logprobs."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.core.types import (
    ChoiceFinished,
    EngineEvent,
    GenerationRequest,
    ModelInfo,
    TextDelta,
    TokenLogprob,
    Usage,
)
from qwen_gateway.engines.base import READY, EngineHealth
from support.fixtures import MODEL, open_in_process

PROMPT = "Once upon a"


async def _complete(tiny_model_dir: Path, data: Path, safety: dict[str, Any] | None) -> Any:
    tree: dict[str, Any] = {
        "data_dir": str(data),
        "auth": {"enabled": False},
        "model": {"model": str(tiny_model_dir), "served_name": MODEL, "max_batch_size": 2},
    }
    if safety is not None:
        tree["safety"] = safety
    async with open_in_process(Container(load_settings(tree, env={}))) as g:
        return await g.client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2
        )


async def test_a_redacted_answer_lets_out_no_logprobs_of_the_masked_text(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    plain = await _complete(tiny_model_dir, tmp_path / "plain", None)
    text = plain.choices[0].text
    assert "".join(plain.choices[0].logprobs.tokens) == text
    # redact a word of the tiny model's greedy answer (whatever it is) that the prompt lacks
    word = next(w for w in reversed(text.split()) if len(w) >= 3 and w not in PROMPT)
    safety = {
        "rule_sets": {"words": {"keywords": {"secret": [word]}}},
        "policies": [{"name": "default", "rule_sets": ["words"], "actions": {"secret": "redact"}}],
    }
    masked = await _complete(tiny_model_dir, tmp_path / "masked", safety)
    shown = masked.choices[0].text
    assert word not in shown and "*" in shown
    lp = masked.choices[0].logprobs
    out = "".join(lp.tokens)
    # the tokens given out are those of the text before the redaction, and no more
    assert shown.startswith(out)
    assert len(out) <= shown.index("*")
    alternatives = [t for top in lp.top_logprobs for t in (top or {})]
    assert not any(word in t for t in [*lp.tokens, *alternatives])


async def test_a_flagged_answer_keeps_its_logprobs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A flag changes no text, so the logprobs still fit it and go out."""
    plain = await _complete(tiny_model_dir, tmp_path / "plain", None)
    text = plain.choices[0].text
    word = next(w for w in reversed(text.split()) if len(w) >= 3 and w not in PROMPT)
    safety = {
        "rule_sets": {"words": {"keywords": {"noted": [word]}}},
        "policies": [{"name": "default", "rule_sets": ["words"], "actions": {"noted": "flag"}}],
    }
    flagged = await _complete(tiny_model_dir, tmp_path / "flagged", safety)
    assert flagged.choices[0].text == text
    assert flagged.choices[0].logprobs.tokens == plain.choices[0].logprobs.tokens
    assert flagged.choices[0].logprobs.token_logprobs == plain.choices[0].logprobs.token_logprobs


class PartialCharEngine:
    """A fake engine (named so): "Hi é!" in deltas where "é" is split over two tokens, the
    first of which comes in a delta with no text (its character is not complete yet)."""

    info = ModelInfo(id=MODEL, context_window=4096, max_output_tokens=64, supports_logprobs=True)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        async def events() -> AsyncGenerator[EngineEvent, None]:
            yield TextDelta(0, "Hi ", (TokenLogprob("Hi ", -0.1, tuple(b"Hi ")),))
            yield TextDelta(0, "", (TokenLogprob("bytes:\\xc3", -0.2, (0xC3,)),))
            yield TextDelta(0, "é!", (TokenLogprob("bytes:\\xa9", -0.3, (0xA9,)),
                                      TokenLogprob("!", -0.4, tuple(b"!"))))  # fmt: skip
            yield ChoiceFinished(0, "stop")
            yield Usage(3, 4)

        return events()

    async def health(self) -> EngineHealth:
        return READY

    async def aclose(self) -> None:
        return None


async def test_the_logprobs_of_a_text_less_delta_are_kept(tmp_path: Path) -> None:
    safety = {
        "rule_sets": {"words": {"keywords": {"secret": ["zebra"]}}},
        "policies": [{"name": "default", "rule_sets": ["words"], "actions": {"secret": "redact"}}],
    }
    tree = {"data_dir": str(tmp_path), "auth": {"enabled": False}, "safety": safety}
    container = Container(load_settings(tree, env={}), engines={MODEL: PartialCharEngine()})
    async with open_in_process(container) as g:
        got = await g.client.completions.create(model=MODEL, prompt="x", logprobs=0)
    assert got.choices[0].text == "Hi é!"
    assert got.choices[0].logprobs.token_logprobs == [-0.1, -0.2, -0.3, -0.4]
