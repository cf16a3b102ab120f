"""Aligning token logprobs with the text the engine lets out."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

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


@settings(max_examples=200)
@given(
    pieces=st.lists(
        st.sampled_from(["a", "bc", " d", "é", "€", "😀", "\n"]), min_size=1, max_size=12
    ),
    cuts=st.lists(st.integers(0, 40), max_size=6),
    token_split=st.integers(1, 3),
)
def test_every_token_goes_out_once_in_order_and_never_before_its_text(
    pieces: list[str], cuts: list[int], token_split: int
) -> None:
    """However the text is let out (any split), tokens come out in order, each once, and a
    token only once some of its text has been."""
    data = "".join(pieces).encode()
    tokens = [data[i : i + token_split] for i in range(0, len(data), token_split)]
    a = Aligner()
    for t in tokens:
        a.add(_t(t))
    text = data.decode()
    bounds = sorted({min(c, len(text)) for c in cuts} | {len(text)})
    out: list[TokenLogprob] = []
    emitted = 0
    for bound in bounds:
        got = a.take(bound - emitted)
        emitted = bound
        out += got
        # the tokens handed out so far start within the text let out so far
        if got:
            before = b"".join(bytes(e.bytes) for e in out[:-1])
            assert len(before.decode("utf-8", errors="ignore")) < emitted
    out += a.rest()
    assert [e.bytes for e in out] == [tuple(t) for t in tokens]
