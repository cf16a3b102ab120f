"""Token logprobs in OpenAI's wire shapes."""

from __future__ import annotations

from qwen_gateway.core.types import TokenLogprob
from qwen_gateway.service.logprobs import CompletionLogprobsBuilder, chat_logprobs, merge


def _entry(data: bytes, logprob: float | None = -1.0) -> TokenLogprob:
    text = data.decode("utf-8", errors="replace")
    return TokenLogprob(text, logprob, tuple(data), (TokenLogprob(text, -0.5, tuple(data)),))


def test_text_offsets_count_characters_and_place_a_split_character_where_it_starts() -> None:
    euro = "€".encode()  # three bytes, split over two tokens below
    builder = CompletionLogprobsBuilder()
    head = builder.add([_entry(b"ab", None), _entry(b" " + euro[:2])])
    tail = builder.add([_entry(euro[2:] + b"x"), _entry(b"yz")])
    merge(head, tail)
    # "ab" at 0, " €" at 2; the token finishing "€" is placed where "€" starts (3)
    assert head["text_offset"] == [0, 2, 3, 5]
    assert head["token_logprobs"] == [None, -1.0, -1.0, -1.0]
    assert head["top_logprobs"][0] is None  # the first prompt token: nothing predicts it
    assert head["top_logprobs"][1] == {" \ufffd": -0.5}


def test_an_echoed_prompt_without_tokens_shifts_the_offsets() -> None:
    builder = CompletionLogprobsBuilder()
    builder.skip("héllo")
    assert builder.add([_entry(b"!")])["text_offset"] == [5]


def test_chat_entries_carry_bytes_and_alternatives() -> None:
    got = chat_logprobs([_entry(b"hi", -0.25)])
    assert got == {
        "content": [
            {
                "token": "hi",
                "logprob": -0.25,
                "bytes": [104, 105],
                "top_logprobs": [{"token": "hi", "logprob": -0.5, "bytes": [104, 105]}],
            }
        ],
        "refusal": None,
    }
