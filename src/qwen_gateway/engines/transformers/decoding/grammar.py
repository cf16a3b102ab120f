"""A compiled grammar, ready to constrain sequences (made by :mod:`.compiler`)."""

from __future__ import annotations

import threading

import xgrammar as xgr

from qwen_gateway.engines.transformers.decoding.plan import ClosingPolicy, Plan
from qwen_gateway.engines.transformers.decoding.vocabulary import Vocabulary

__all__ = ["CompiledGrammar"]


class CompiledGrammar:
    """An xgrammar grammar compiled for one model's :class:`Vocabulary`.

    ``initial_plan()`` is the closing policy's path from the start state, computed once and
    shared by every sequence (the compiler computes it within the compile timeout)."""

    __slots__ = ("_initial_plan", "_lock", "compiled", "description", "vocabulary")

    def __init__(self, compiled: xgr.CompiledGrammar, vocabulary: Vocabulary, description: str):
        self.compiled = compiled
        self.vocabulary = vocabulary
        self.description = description
        self._initial_plan: Plan | None = None
        self._lock = threading.Lock()

    def initial_plan(self) -> Plan:
        """The closing policy's path from the start state (computed on first use)."""
        plan = self._initial_plan
        if plan is None:
            with self._lock:
                plan = self._initial_plan
                if plan is None:
                    policy = ClosingPolicy(self.vocabulary)
                    plan = self._initial_plan = policy.simulate(xgr.GrammarMatcher(self.compiled))
        return plan

    def __repr__(self) -> str:
        return f"CompiledGrammar({self.description})"
