"""Aligning token logprobs with the text the engine lets out."""

from __future__ import annotations

from qwen_gateway.core.types import TokenLogprob
from qwen_gateway.engines.transformers.logprob import Aligner


def _t(data: bytes) -> TokenLogprob:
    return TokenLogprob(data.decode("utf-8", errors="replace"), -1.0, tuple(data))


def test_tokens_go_with_the_text_they_make() -> None:
    a = Aligner()
    for piece in (b"Hel", b"lo", b" wor"):
        a.add(_t(piece))
    assert [e.token for e in a.take(5)] == ["Hel", "lo"]
    # " w" is let out first (a stop string might start with "or"): " wor" goes with it
    assert [e.token for e in a.take(2)] == [" wor"]
    assert a.take(2) == ()  # "or": its token went out already
    assert a.rest() == ()


def test_a_character_split_over_tokens_goes_with_its_last_token() -> None:
    a = Aligner()
    euro = "€".encode()
    a.add(_t(euro[:1]))
    a.add(_t(euro[1:]))
    assert [e.bytes for e in a.take(1)] == [tuple(euro[:1]), tuple(euro[1:])]


def test_tokens_of_text_never_let_out_are_never_handed_out() -> None:
    a = Aligner()
    for piece in (b"ok", b" STOP", b"!"):
        a.add(_t(piece))
    assert [e.token for e in a.take(2)] == ["ok"]  # then a stop string cut the rest
    assert len(a.pending) == 2
