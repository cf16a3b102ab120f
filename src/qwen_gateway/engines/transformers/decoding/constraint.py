"""One generated sequence constrained to a compiled grammar within its token budget.

A :class:`Constraint`
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

Grammars come from :mod:`.compiler`; the closing policy is :mod:`.plan`.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
import xgrammar as xgr

from qwen_gateway.engines.transformers.decoding.bitmask import NEG_INF, apply_bitmask, keep_only
from qwen_gateway.engines.transformers.decoding.grammar import CompiledGrammar
from qwen_gateway.engines.transformers.decoding.plan import MAX_PLAN, ClosingPolicy

__all__ = ["Constraint"]

# Budget rule.
_NEAR_WINDOW: Final = 8  # within this many tokens of the budget, candidates are checked
_GROWTH_PER_STEP: Final = 4  # assumed growth of L per unchecked step after a deviation
_WATCH_WINDOW: Final = 32  # ...and branch points this much further away
_CANDIDATES: Final = 4  # top candidates checked per step in the near window
_BRANCH_CHECK: Final = 8  # branch points with at most this many choices are checked


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
        "_head",
        "_l_known",
        "_matcher",
        "_plan",
        "_plan_complete",
        "_policy",
        "_since",
        "_vocab",
        "max_tokens",
    )

    def __init__(self, grammar: CompiledGrammar, max_tokens: int) -> None:
        self._vocab = grammar.vocabulary
        self.max_tokens = max_tokens
        self._matcher = xgr.GrammarMatcher(grammar.compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, self._vocab.vocab_size)
        self._bits: npt.NDArray[np.int32] = self._bitmask.numpy()[0]
        self._policy = ClosingPolicy(self._vocab)
        self._plan: deque[int] | None
        self._candidates: dict[int, list[int]] = {}  # near the budget: checked tokens' plans
        path, complete = grammar.initial_plan()
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
        plan, _ = self._policy.simulate(self._matcher, MAX_PLAN)
        return len(plan)

    # ---- decoding ---------------------------------------------------------

    def apply(self, logits_row: torch.Tensor, remaining: int) -> None:
        """Mask ``logits_row`` [V] in place (-inf where not allowed) for the next token;
        ``remaining`` is the number of tokens the sequence may still produce, this one
        included."""
        m = self._matcher
        self._candidates.clear()
        if m.is_terminated():
            logits_row.fill_(NEG_INF)
            logits_row[self._vocab.stop_id] = 0.0
            return
        m.fill_next_token_bitmask(self._bitmask)
        allowed = apply_bitmask(logits_row, self._bitmask, self._bits, self._vocab.masks)
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
        self._done = self._policy.finished(self._matcher)

    # ---- budget -----------------------------------------------------------

    def _allowed(self, token: int) -> bool:
        return bool((int(self._bits[token >> 5]) >> (token & 31)) & 1)

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
        path, complete = self._policy.simulate(self._matcher, min(remaining + 1, MAX_PLAN))
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
        return [int(t) for v, t in zip(values.tolist(), ids.tolist(), strict=True) if v > NEG_INF]

    def _restrict(self, row: torch.Tensor, remaining: int, policy: int, tokens: list[int]) -> None:
        """Keep ``policy`` and those of ``tokens`` after which the rest still fits."""
        safe = [policy]
        rejected = False
        for token in tokens:
            if token == policy:
                continue
            if token in self._vocab.stop_ids:
                safe.append(token)
                continue
            fork = self._matcher.fork()
            if not fork.accept_token(token):
                continue
            path, complete = self._policy.simulate(fork, remaining)
            if complete and 1 + len(path) <= remaining:
                safe.append(token)
                self._candidates[token] = path
            else:
                rejected = True
        if rejected:
            self._forced = True
        kept = row[policy].item()
        keep_only(row, torch.tensor(safe, dtype=torch.long, device=row.device))
        if kept == NEG_INF:  # never leave a row with nothing to sample
            row[policy] = 0.0
