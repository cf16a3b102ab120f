"""Token selection for a batch of sequences, each with its own sampling parameters.

The sampler takes any :class:`SamplingParams` without failing the engine: parameters outside
what it can compute with are refused with :class:`InvalidRequest` (the wire has its own,
narrower bounds, but the engine does not rely on them), a seed is reduced into the random
generator's range, and temperatures below :data:`MIN_TEMPERATURE` mean greedy decoding.
Within the accepted ranges no logit can become ``inf`` or ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import torch

from qwen_gateway.core.types import SamplingParams
from qwen_gateway.errors import InvalidRequest

#: Below this temperature a sequence is decoded greedily (dividing by it would overflow).
MIN_TEMPERATURE: Final = 1e-5
MAX_TEMPERATURE: Final = 100.0
#: Repetition penalty range: dividing or multiplying a logit by it stays finite.
REPETITION_PENALTY_RANGE: Final = (1e-2, 1e2)
#: Largest presence/frequency penalty magnitude (times at most a context of counts: finite).
MAX_PENALTY: Final = 100.0
#: torch.Generator.manual_seed takes [-2**63, 2**64); seeds are reduced modulo 2**64.
_SEED_MODULUS: Final = 1 << 64


def check_params(p: SamplingParams) -> None:
    """Refuse parameters the sampler cannot compute with (:class:`InvalidRequest`)."""
    low, high = REPETITION_PENALTY_RANGE
    checks = (
        ("temperature", p.temperature, 0.0 <= p.temperature <= MAX_TEMPERATURE),
        ("top_p", p.top_p, 0.0 < p.top_p <= 1.0),
        ("repetition_penalty", p.repetition_penalty, low <= p.repetition_penalty <= high),
        ("presence_penalty", p.presence_penalty, abs(p.presence_penalty) <= MAX_PENALTY),
        ("frequency_penalty", p.frequency_penalty, abs(p.frequency_penalty) <= MAX_PENALTY),
    )
    for name, value, ok in checks:
        if not ok or not math.isfinite(value):
            raise InvalidRequest(
                f"{name}={value!r} is outside the range this engine can sample with.",
                param=name,
                code="invalid_value",
            )


class SequenceSampler:
    """Per-sequence sampling state: random generator and penalty bookkeeping."""

    __slots__ = ("_counts", "_prompt_ids", "generator", "greedy", "params")

    def __init__(
        self, params: SamplingParams, prompt: Sequence[int], device: torch.device, choice: int
    ) -> None:
        check_params(params)
        self.params = params
        self.greedy = params.temperature < MIN_TEMPERATURE
        self.generator: torch.Generator | None = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            if params.seed is not None:
                self.generator.manual_seed((params.seed + choice) % _SEED_MODULUS)
            else:
                self.generator.seed()
        self._counts: torch.Tensor | None = None
        self._prompt_ids: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self._prompt_ids = torch.tensor(sorted(set(prompt)), dtype=torch.long, device=device)

    @property
    def penalised(self) -> bool:
        p = self.params
        return (
            p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 or p.repetition_penalty != 1.0
        )

    @property
    def plain_greedy(self) -> bool:
        """Greedy without penalties: the row's argmax, which a whole batch can share."""
        return self.greedy and not self.penalised

    def observe(self, token: int, vocab: int, device: torch.device) -> None:
        if not self.penalised:
            return
        if self._counts is None:
            self._counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        self._counts[token] += 1

    def penalise(self, row: torch.Tensor) -> None:
        """Apply repetition (prompt + output) and presence/frequency (output) penalties."""
        p = self.params
        if p.repetition_penalty != 1.0:
            seen = self._prompt_ids
            if self._counts is not None:
                out = torch.nonzero(self._counts).flatten()
                seen = out if seen is None else torch.cat((seen, out))
            if seen is not None and seen.numel():
                vals = row[seen]
                row[seen] = torch.where(
                    vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty
                )
        if self._counts is not None and (p.presence_penalty or p.frequency_penalty):
            row -= p.frequency_penalty * self._counts
            row -= p.presence_penalty * (self._counts > 0).float()

    def pick(self, row: torch.Tensor) -> int:
        """One token from ``row`` [V] (float32, modified in place)."""
        if self.penalised:
            self.penalise(row)
        p = self.params
        if self.greedy:
            return int(torch.argmax(row))
        row = _filter(row / p.temperature, p.top_k, p.top_p)
        probs = torch.softmax(row, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _filter(row: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if 0 < top_k < row.shape[-1]:
        kth = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        cumulative = torch.cumsum(probs, dim=-1)
        drop = cumulative - probs > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        row = torch.empty_like(row).scatter_(0, order, sorted_logits)
    return row


def greedy_batch(logits: torch.Tensor, samplers: Sequence[SequenceSampler]) -> list[int] | None:
    """Every row's argmax when every sequence is plain greedy (one kernel); else None."""
    if not all(s.plain_greedy for s in samplers):
        return None
    return [int(t) for t in torch.argmax(logits, dim=-1).tolist()]
