"""One model's vocabulary as constrained decoding sees it.

Special tokens
--------------
xgrammar matches tokens by their text, and cannot accept tokens it considers special (empty
text). The vocabulary handed to it therefore blanks every added token (``<|im_start|>`` and
friends can never appear inside a JSON string) except ``<tool_call>``/``</tool_call>``, whose
text is prefixed with a byte that never occurs in UTF-8 so that no JSON string or literal can
match it; the tool-call grammar refers to them by id. Ids past the tokenizer's vocabulary
(padding of the model's embedding matrix) are special too, so they are never allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import xgrammar as xgr

from qwen_gateway.engines.transformers.decoding.bitmask import MaskCache
from qwen_gateway.qwen.tokenizer import ENDOFTEXT_ID, IM_END_ID, QwenTokenizer

__all__ = ["TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "Vocabulary", "build_vocabulary"]

TOOL_CALL_OPEN: Final = "<tool_call>"
TOOL_CALL_CLOSE: Final = "</tool_call>"

#: A byte that never occurs in UTF-8: prefixed to the tool-call tags' text so that no string
#: the grammar allows can be spelled with them; the grammar names them by id instead.
_HIDDEN_PREFIX: Final = b"\xff"

# Preference order of the closing policy outside strings: close, separate, smallest value,
# open a string; then plain characters.
_PREFERRED: Final = (
    "}", "]", ", ", ",", "0", "null", "true", "false", '""', "[]", "{}", '"', ": ", ":",
)  # fmt: skip


class Vocabulary:
    """What every constraint of one model shares: vocabulary facts, policy tokens, mask cache."""

    def __init__(
        self,
        tokenizer: QwenTokenizer,
        vocab_size: int,
        stop_ids: list[int],
        tag_ids: dict[str, int],
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self.stop_ids = stop_ids
        self.stop_id = stop_ids[0]
        self.tag_ids = tag_ids  # <tool_call> and </tool_call> -> id, where the model has them
        stop_words = np.zeros(self.words, dtype=np.uint32)
        for t in stop_ids:
            stop_words[t >> 5] |= np.uint32(1 << (t & 31))
        self._stop_words: npt.NDArray[np.int32] = stop_words.view(np.int32)
        self.quote = self._single(b'"')
        chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
        chars += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
        chars += [chr(c) for c in range(ord("0"), ord("9") + 1)]
        chars += [chr(c) for c in range(0x21, 0x7F)] + [" "]
        ordered = list(tag_ids.values())  # allowed only where nothing else is
        for text in [*_PREFERRED, *chars]:
            single = self._single(text.encode())
            if single is not None and single not in ordered:
                ordered.append(single)
        self.pref_tokens: Sequence[int] = ordered
        self.masks = MaskCache(vocab_size)

    def _single(self, text: bytes) -> int | None:
        ids = self.tokenizer.encode_text(text.decode())
        return ids[0] if len(ids) == 1 and ids[0] < self.vocab_size else None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_text(text)

    def only_stop(self, words: npt.NDArray[np.int32]) -> bool:
        """True if a filled bitmask row allows nothing but stop tokens."""
        return not np.any(words & ~self._stop_words)


def build_vocabulary(
    tokenizer: QwenTokenizer, model_vocab_size: int
) -> tuple[Vocabulary, xgr.TokenizerInfo]:
    """The shared :class:`Vocabulary` and the vocabulary xgrammar compiles against."""
    size = min(tokenizer.vocab_size, model_vocab_size)
    vocab = [tokenizer.token_bytes(i) for i in range(size)]
    tag_ids: dict[str, int] = {}
    for text, idx in dict(tokenizer.added_tokens).items():
        if idx >= size:
            continue
        if text in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE):
            vocab[idx] = _HIDDEN_PREFIX + text.encode()
            tag_ids[text] = idx
        else:
            vocab[idx] = b""
    stop_ids = [t for t in (IM_END_ID, ENDOFTEXT_ID) if t < model_vocab_size]
    if not stop_ids:
        raise ValueError("the model's vocabulary has no end-of-sequence token")
    info = xgr.TokenizerInfo(
        vocab, xgr.VocabType.RAW, vocab_size=model_vocab_size, stop_token_ids=stop_ids
    )
    return Vocabulary(tokenizer, model_vocab_size, stop_ids, tag_ids), info
