"""The output policy and token logprobs: a redaction never lets the masked tokens out
through their logprobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
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
