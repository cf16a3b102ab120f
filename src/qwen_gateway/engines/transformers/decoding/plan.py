"""The closing policy: the tokens a greedy policy emits to finish a grammar, ending with EOS.

From a matcher's state it follows the string the grammar forces, else closes the open string,
object or array, else picks the smallest value. ``len(plan)`` estimates the shortest
completion; :mod:`.constraint` uses it to close the output within the token budget.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt
import xgrammar as xgr

from qwen_gateway.engines.transformers.decoding.vocabulary import Vocabulary

__all__ = ["MAX_PLAN", "ClosingPolicy", "Plan"]

#: Longest plan simulated.
MAX_PLAN: Final = 512

#: A plan: its tokens, and whether it reaches EOS (False: cut at the cap or at a dead end).
Plan: TypeAlias = tuple[list[int], bool]


class ClosingPolicy:
    """Simulates the closing policy for one vocabulary. Not thread-safe (one scratch mask)."""

    __slots__ = ("_bits", "_scratch", "_vocab")

    def __init__(self, vocab: Vocabulary) -> None:
        self._vocab = vocab
        self._scratch = xgr.allocate_token_bitmask(1, vocab.vocab_size)
        self._bits: npt.NDArray[np.int32] = self._scratch.numpy()[0]

    def simulate(self, matcher: xgr.GrammarMatcher, cap: int = MAX_PLAN) -> Plan:
        """The closing policy's tokens from ``matcher``'s state (not modified) to EOS.

        Returns ``(tokens, complete)``; ``complete`` is False when the path was cut at ``cap``
        tokens or ran into a dead end.
        """
        vocab = self._vocab
        m = matcher.fork()
        path: list[int] = []
        while len(path) < cap:
            if m.is_terminated():
                return path, True
            if m.is_completed():
                path.append(vocab.stop_id)
                return path, True
            try:
                forced = m.find_jump_forward_string()
            except UnicodeDecodeError:  # it forces the rest of a split UTF-8 character
                forced = ""
            if forced:  # the grammar forces this text: spell it with the tokenizer
                progressed = False
                for token in vocab.encode(forced):
                    if len(path) >= cap or not m.accept_token(token):
                        break
                    path.append(token)
                    progressed = True
                if progressed:
                    continue
            chosen = self._choose(m)
            if chosen is None:
                return path, False
            path.append(chosen)
        return path, False

    def finished(self, m: xgr.GrammarMatcher) -> bool:
        """True when ``m`` is terminated, or complete with nothing but EOS to follow."""
        if m.is_terminated():
            return True
        if not m.is_completed():
            return False
        m.fill_next_token_bitmask(self._scratch)
        return self._vocab.only_stop(self._bits)

    def _choose(self, m: xgr.GrammarMatcher) -> int | None:
        """Advance ``m`` by the policy's next token where the grammar forces no string.

        Candidates are tried with ``accept_token`` (cheap) rather than by filling a mask,
        which costs up to milliseconds in states with many length-dependent tokens.
        """
        vocab = self._vocab
        quote = vocab.quote
        if quote is not None and m.accept_token(quote):
            # Did '"' close a string (keep it) or open one (prefer a smaller value)?
            if not m.accept_token(quote):
                return quote
            m.rollback(2)
        for token in vocab.pref_tokens:
            if m.accept_token(token):
                return token
        m.fill_next_token_bitmask(self._scratch)
        bits = self._bits
        words = np.flatnonzero(bits)
        if not words.size:
            return None
        word = int(words[0])
        value = int(bits[word]) & 0xFFFFFFFF
        token = word * 32 + ((value & -value).bit_length() - 1)
        if token >= vocab.vocab_size or not m.accept_token(token):
            return None
        return token
