"""The vocabulary constrained decoding sees: stop tokens, the tool-call tags hidden behind a
byte no JSON text contains, other added tokens blanked, and the closing policy's tokens."""

from __future__ import annotations

import numpy as np
import pytest
import xgrammar as xgr

from qwen_gateway.engines.transformers.decoding.vocabulary import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    Vocabulary,
    build_vocabulary,
)
from qwen_gateway.qwen.tokenizer import (
    ENDOFTEXT_ID,
    FIRST_ADDED_ID,
    IM_END_ID,
    IM_START_ID,
    QwenTokenizer,
)
from support.decoding import REAL_VOCAB, TOOL_CLOSE_ID, TOOL_OPEN_ID

MODEL_VOCAB = 151_936  # Qwen2.5's embedding rows: padded past the tokenizer's vocabulary


@pytest.fixture(scope="module")
def built(tokenizer: QwenTokenizer) -> tuple[Vocabulary, xgr.TokenizerInfo]:
    return build_vocabulary(tokenizer, MODEL_VOCAB)


@pytest.fixture(scope="module")
def vocab(built: tuple[Vocabulary, xgr.TokenizerInfo]) -> Vocabulary:
    return built[0]


def test_sizes_follow_the_model(vocab: Vocabulary) -> None:
    assert vocab.vocab_size == MODEL_VOCAB
    assert vocab.words == MODEL_VOCAB // 32
    assert vocab.masks.vocab_size == MODEL_VOCAB


def test_stop_tokens_are_im_end_then_endoftext(vocab: Vocabulary) -> None:
    assert vocab.stop_ids == [IM_END_ID, ENDOFTEXT_ID]
    assert vocab.stop_id == IM_END_ID


def test_tool_call_tags_are_known_by_id(vocab: Vocabulary) -> None:
    assert vocab.tag_ids == {TOOL_CALL_OPEN: TOOL_OPEN_ID, TOOL_CALL_CLOSE: TOOL_CLOSE_ID}


def test_xgrammar_sees_tags_hidden_and_other_added_tokens_blank(
    built: tuple[Vocabulary, xgr.TokenizerInfo], tokenizer: QwenTokenizer
) -> None:
    info = built[1]
    decoded = info.decoded_vocab
    assert info.vocab_size == MODEL_VOCAB
    assert sorted(info.stop_token_ids) == sorted([IM_END_ID, ENDOFTEXT_ID])
    assert decoded[TOOL_OPEN_ID] == b"\xff<tool_call>"
    assert decoded[TOOL_CLOSE_ID] == b"\xff</tool_call>"
    assert decoded[IM_START_ID] == b""
    assert IM_START_ID in info.special_token_ids
    (hello,) = tokenizer.encode_text("hello")
    assert decoded[hello] == b"hello"  # plain tokens keep their text
    tags = (TOOL_OPEN_ID, TOOL_CLOSE_ID)
    added = [t for t in range(FIRST_ADDED_ID, REAL_VOCAB) if t not in tags]
    assert [decoded[t] for t in added] == [b""] * len(added)
    never = set(added) - {IM_END_ID, ENDOFTEXT_ID} | set(range(REAL_VOCAB, MODEL_VOCAB))
    assert never <= set(info.special_token_ids)  # padding too


def test_policy_tokens_start_with_tags_then_closers(
    vocab: Vocabulary, tokenizer: QwenTokenizer
) -> None:
    (close_brace,) = tokenizer.encode_text("}")
    (close_bracket,) = tokenizer.encode_text("]")
    (quote,) = tokenizer.encode_text('"')
    prefs = list(vocab.pref_tokens)
    assert prefs[:4] == [TOOL_OPEN_ID, TOOL_CLOSE_ID, close_brace, close_bracket]
    assert quote in prefs and vocab.quote == quote
    assert len(prefs) == len(set(prefs))
    assert tokenizer.encode_text("a")[0] in prefs  # then plain characters
    assert all(t < vocab.vocab_size for t in prefs)


def test_encode_is_the_tokenizers(vocab: Vocabulary, tokenizer: QwenTokenizer) -> None:
    assert vocab.encode('{"a": 1}') == tokenizer.encode_text('{"a": 1}')


def words_of(vocab: Vocabulary, allowed: list[int]) -> np.ndarray:
    words = np.zeros(vocab.words, dtype=np.uint32)
    for t in allowed:
        words[t >> 5] |= np.uint32(1 << (t & 31))
    return words.view(np.int32)


@pytest.mark.parametrize(
    ("allowed", "only"),
    [
        ([IM_END_ID], True),
        ([IM_END_ID, ENDOFTEXT_ID], True),
        ([ENDOFTEXT_ID], True),
        ([IM_END_ID, 0], False),
        ([IM_END_ID + 1], False),
        ([MODEL_VOCAB - 1], False),
    ],
)
def test_only_stop(vocab: Vocabulary, allowed: list[int], only: bool) -> None:
    assert vocab.only_stop(words_of(vocab, allowed)) is only


def test_a_model_without_im_end_stops_on_endoftext(tokenizer: QwenTokenizer) -> None:
    vocab, info = build_vocabulary(tokenizer, ENDOFTEXT_ID + 1)
    assert vocab.stop_ids == [ENDOFTEXT_ID]
    assert vocab.tag_ids == {}  # the tags lie past this model's vocabulary
    assert info.vocab_size == ENDOFTEXT_ID + 1
    assert TOOL_OPEN_ID not in vocab.pref_tokens


def test_a_model_without_any_stop_token_is_refused(tokenizer: QwenTokenizer) -> None:
    with pytest.raises(ValueError, match="end-of-sequence"):
        build_vocabulary(tokenizer, ENDOFTEXT_ID)
