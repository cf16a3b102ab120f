"""Grammar-constrained decoding: JSON mode, JSON Schema and forced tool calls, over xgrammar.

:class:`GrammarCompiler` (one per model) turns a response format or a set of tools into a
:class:`CompiledGrammar`, compiled once and kept in a bounded LRU cache. A :class:`Constraint`
(one per generated sequence) masks each step's logits to what the grammar allows and follows
the sampled tokens::

    constraint = Constraint(grammar, max_tokens)
    for each step:
        constraint.apply(logits_row, remaining)   # remaining = max_tokens - generated
        token = sample(logits_row)
        constraint.accept(token)                  # EOS included; stop once `done`

Budget-aware completion
-----------------------
A constraint keeps a *plan*: the tokens a greedy closing policy would emit to finish the
grammar from the current state (follow the string the grammar forces, else close the open
string / object / array, else the smallest value), ending with EOS. ``len(plan)`` estimates the
shortest completion ``L``. While ``remaining`` is comfortably above ``L`` the model is free and
nothing is recomputed: the plan survives as long as the model follows it, and after a deviation
``L`` is assumed to grow by at most a few tokens a step until it is recomputed (sooner when the
plan's next token stopped being allowed, i.e. the structure changed). Closer to the budget,
branch points with few choices are checked (a choice such as starting another tool call may
need many tokens), and within ``_NEAR_WINDOW`` tokens only tokens after which the rest still
fits are allowed (the model's top candidates are checked by simulating the policy from the state
they lead to). Once ``remaining <= L`` only the plan's next token is allowed, so the output
closes exactly as the budget runs out. The common path costs one mask fill and one mask
application per token; the policy is simulated only near the budget.

Grammars come from :mod:`.grammar`.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt
import torch
import xgrammar as xgr

from qwen_gateway.engines.transformers.grammar import (
    _BRANCH_CHECK,
    _CANDIDATES,
    _GROWTH_PER_STEP,
    _MAX_PLAN,
    _NEAR_WINDOW,
    _NEG_INF,
    _WATCH_WINDOW,
    CompiledGrammar,
    GrammarCompiler,
)

__all__ = ["CompiledGrammar", "Constraint", "GrammarCompiler"]


def _keep_only(row: torch.Tensor, ids: torch.Tensor) -> None:
    """Set every entry of ``row`` but ``ids`` to -inf."""
    kept = row.index_select(0, ids)
    row.fill_(_NEG_INF)
    row.index_copy_(0, ids, kept)


# ---- per-sequence constraint ---------------------------------------------------------------


class Constraint:
    """Constrains one generated sequence to a :class:`CompiledGrammar` within a token budget.

    ``max_tokens`` is the sequence's budget (kept for reference: :meth:`apply` is told what is
    left at each step). Not thread-safe: one sequence, one thread.
    """

    __slots__ = (
        "_bitmask",
        "_bits",
        "_candidates",
        "_done",
        "_forced",
        "_grammar",
        "_head",
        "_l_known",
        "_matcher",
        "_plan",
        "_plan_complete",
        "_rt",
        "_scratch",
        "_scratch_bits",
        "_since",
        "max_tokens",
    )

    def __init__(self, grammar: CompiledGrammar, max_tokens: int) -> None:
        self._grammar = grammar
        self._rt = grammar._runtime
        self.max_tokens = max_tokens
        self._matcher = xgr.GrammarMatcher(grammar._xgr)
        self._bitmask = xgr.allocate_token_bitmask(1, self._rt.vocab_size)
        self._bits: npt.NDArray[np.int32] = self._bitmask.numpy()[0]
        self._scratch = xgr.allocate_token_bitmask(1, self._rt.vocab_size)
        self._scratch_bits: npt.NDArray[np.int32] = self._scratch.numpy()[0]
        self._plan: deque[int] | None
        self._candidates: dict[int, list[int]] = {}  # near the budget: checked tokens' plans
        initial = grammar._initial_plan
        if initial is None:
            initial = grammar._initial_plan = self._simulate(self._matcher, _MAX_PLAN)
        path, complete = initial
        self._plan = deque(path) if path else None
        self._plan_complete = complete
        self._l_known = len(path)  # last computed shortest completion
        self._since = 0  # tokens accepted since it was computed
        self._head = path[0] if path else None  # the last plan's next token
        self._forced = False
        self._done = False

    # ---- state ------------------------------------------------------------

    @property
    def done(self) -> bool:
        """The grammar is complete: only EOS may follow (or EOS was accepted)."""
        return self._done

    @property
    def forced_close(self) -> bool:
        """True once the budget rule had to steer the output toward an early completion."""
        return self._forced

    def shortest_completion(self) -> int:
        """Tokens the closing policy needs to finish from here, EOS included (an estimate of
        the shortest completion; at most 512)."""
        plan, _ = self._simulate(self._matcher, _MAX_PLAN)
        return len(plan)

    # ---- decoding ---------------------------------------------------------

    def apply(self, logits_row: torch.Tensor, remaining: int) -> None:
        """Mask ``logits_row`` [V] in place (-inf where not allowed) for the next token;
        ``remaining`` is the number of tokens the sequence may still produce, this one
        included."""
        m = self._matcher
        self._candidates.clear()
        if m.is_terminated():
            logits_row.fill_(_NEG_INF)
            logits_row[self._rt.stop_id] = 0.0
            return
        m.fill_next_token_bitmask(self._bitmask)
        allowed = self._mask(logits_row)
        self._budget(logits_row, max(remaining, 1), allowed)

    def accept(self, token: int) -> None:
        """Advance past ``token`` (the one sampled from the masked logits)."""
        if not self._matcher.accept_token(token):
            raise ValueError(f"token {token} is not allowed by the grammar here")
        plan = self._plan
        if plan and plan[0] == token:
            plan.popleft()
            self._l_known = len(plan)
            self._since = 0
        elif token in self._candidates:
            path = self._candidates[token]
            self._plan = deque(path)
            self._plan_complete = True
            self._l_known = len(path)
            self._since = 0
        else:
            if plan:
                self._head = plan[0]
            self._plan = None
            self._since += 1
        self._candidates.clear()
        m = self._matcher
        if m.is_terminated():
            self._done = True
        elif m.is_completed():
            m.fill_next_token_bitmask(self._scratch)
            self._done = self._rt.only_stop(self._scratch_bits)
        else:
            self._done = False

    # ---- masking ----------------------------------------------------------

    def _mask(self, row: torch.Tensor) -> torch.Tensor | None:
        """Apply the filled bitmask to ``row``; return the allowed ids when they are few."""
        rt = self._rt
        entry = rt.mask_ids(self._bitmask[0], self._bits.tobytes(), row.device)
        if entry is not None and entry.keep:
            _keep_only(row, entry.ids)
            return entry.ids
        if entry is not None:
            row.index_fill_(0, entry.ids, _NEG_INF)
        else:
            view = row[: rt.vocab_size].unsqueeze(0)
            mask = self._bitmask if row.device.type == "cpu" else self._bitmask.to(row.device)
            xgr.apply_token_bitmask_inplace(view, mask, vocab_size=rt.vocab_size)
        if row.shape[0] > rt.vocab_size:
            row[rt.vocab_size :] = _NEG_INF
        return None

    def _allowed(self, token: int) -> bool:
        return bool((int(self._bits[token >> 5]) >> (token & 31)) & 1)

    # ---- budget -----------------------------------------------------------

    def _budget(self, row: torch.Tensor, remaining: int, allowed: torch.Tensor | None) -> None:
        plan = self._plan
        if plan is None:
            # The model left the plan. If the plan's next token is still allowed, the way out
            # is probably unchanged; otherwise the structure changed and the completion may
            # have grown by more than a few tokens, so look further ahead.
            head = self._head
            window = _NEAR_WINDOW
            if head is None or not self._allowed(head):
                window += _WATCH_WINDOW
            if remaining > self._l_known + _GROWTH_PER_STEP * self._since + window:
                return
            plan = self._replan(remaining)
        elif remaining > len(plan) + _NEAR_WINDOW + _WATCH_WINDOW:
            return
        if plan and not self._allowed(plan[0]):  # stale plan
            plan = self._replan(remaining)
        if not plan or not self._allowed(plan[0]):
            return
        need = len(plan)
        if remaining <= need or not self._plan_complete:
            self._forced = True
            self._restrict(row, remaining, plan[0], [])
            return
        if remaining <= need + _NEAR_WINDOW:
            self._restrict(row, remaining, plan[0], self._top(row, allowed, _CANDIDATES))
        elif allowed is not None and 1 < allowed.numel() <= _BRANCH_CHECK:
            # A branch point within reach of the budget: one choice may open a long detour.
            self._restrict(row, remaining, plan[0], allowed.tolist())

    def _replan(self, remaining: int) -> deque[int] | None:
        path, complete = self._simulate(self._matcher, min(remaining + 1, _MAX_PLAN))
        self._plan = deque(path) if path else None
        self._plan_complete = complete
        self._l_known = len(path)
        self._since = 0
        self._head = path[0] if path else None
        return self._plan

    @staticmethod
    def _top(row: torch.Tensor, allowed: torch.Tensor | None, k: int) -> list[int]:
        if allowed is not None and allowed.numel() <= k:
            return [int(t) for t in allowed.tolist()]
        values, ids = torch.topk(row, min(k, row.shape[0]))
        return [int(t) for v, t in zip(values.tolist(), ids.tolist(), strict=True) if v > _NEG_INF]

    def _restrict(self, row: torch.Tensor, remaining: int, policy: int, tokens: list[int]) -> None:
        """Keep ``policy`` and those of ``tokens`` after which the rest still fits."""
        safe = [policy]
        rejected = False
        for token in tokens:
            if token == policy:
                continue
            if token in self._rt.stop_ids:
                safe.append(token)
                continue
            fork = self._matcher.fork()
            if not fork.accept_token(token):
                continue
            path, complete = self._simulate(fork, remaining)
            if complete and 1 + len(path) <= remaining:
                safe.append(token)
                self._candidates[token] = path
            else:
                rejected = True
        if rejected:
            self._forced = True
        kept = row[policy].item()
        _keep_only(row, torch.tensor(safe, dtype=torch.long, device=row.device))
        if kept == _NEG_INF:  # never leave a row with nothing to sample
            row[policy] = 0.0

    # ---- closing policy ---------------------------------------------------

    def _simulate(self, matcher: xgr.GrammarMatcher, cap: int) -> tuple[list[int], bool]:
        """The closing policy's tokens from ``matcher``'s state (not modified) to EOS.

        Returns ``(tokens, complete)``; ``complete`` is False when the path was cut at ``cap``
        tokens or ran into a dead end.
        """
        rt = self._rt
        m = matcher.fork()
        path: list[int] = []
        while len(path) < cap:
            if m.is_terminated():
                return path, True
            if m.is_completed():
                path.append(rt.stop_id)
                return path, True
            try:
                forced = m.find_jump_forward_string()
            except UnicodeDecodeError:  # it forces the rest of a split UTF-8 character
                forced = ""
            if forced:  # the grammar forces this text: spell it with the tokenizer
                progressed = False
                for token in rt.encode(forced):
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

    def _choose(self, m: xgr.GrammarMatcher) -> int | None:
        """Advance ``m`` by the policy's next token where the grammar forces no string.

        Candidates are tried with ``accept_token`` (cheap) rather than by filling a mask,
        which costs up to milliseconds in states with many length-dependent tokens.
        """
        rt = self._rt
        quote = rt.quote
        if quote is not None and m.accept_token(quote):
            # Did '"' close a string (keep it) or open one (prefer a smaller value)?
            if not m.accept_token(quote):
                return quote
            m.rollback(2)
        for token in rt.pref_tokens:
            if m.accept_token(token):
                return token
        m.fill_next_token_bitmask(self._scratch)
        bits = self._scratch_bits
        words = np.flatnonzero(bits)
        if not words.size:
            return None
        word = int(words[0])
        value = int(bits[word]) & 0xFFFFFFFF
        token = word * 32 + ((value & -value).bit_length() - 1)
        if token >= rt.vocab_size or not m.accept_token(token):
            return None
        return token
