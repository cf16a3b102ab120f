"""Token selection for a batch of sequences, each with its own sampling parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qwen_gateway.core.types import SamplingParams


class SequenceSampler:
    """Per-sequence sampling state: random generator and penalty bookkeeping."""

    __slots__ = ("_counts", "_prompt_ids", "generator", "params")

    def __init__(
        self, params: SamplingParams, prompt: Sequence[int], device: torch.device, choice: int
    ) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            if params.seed is not None:
                self.generator.manual_seed(params.seed + choice)
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


def sample(logits: torch.Tensor, samplers: Sequence[SequenceSampler]) -> list[int]:
    """Pick one token per row of ``logits`` [B, V] (float32, modified in place)."""
    if all(s.params.greedy and not s.penalised for s in samplers):
        return [int(t) for t in torch.argmax(logits, dim=-1).tolist()]
    out: list[int] = []
    for i, s in enumerate(samplers):
        row = logits[i]
        if s.penalised:
            s.penalise(row)
        p = s.params
        if p.greedy:
            out.append(int(torch.argmax(row)))
            continue
        row = _filter(row / p.temperature, p.top_k, p.top_p)
        probs = torch.softmax(row, dim=-1)
        out.append(int(torch.multinomial(probs, 1, generator=s.generator)))
    return out
