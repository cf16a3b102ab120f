"""Log probabilities from the in-process model's logits.

They are the model's own distribution: the log-softmax of the raw logits, before
temperature, top-k/top-p, penalties and grammar masks (what OpenAI reports and vLLM's
default ``raw_logprobs`` mode gives), so that a value does not depend on how the token was
picked. Computed only for requests that ask, so the cost is zero otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from qwen_gateway.core.types import TokenLogprob
from qwen_gateway.engines.output import TokenSplitter
from qwen_gateway.qwen.tokenizer import QwenTokenizer

#: Prompt positions turned into logits at a time (rows of [chunk, vocab] floats).
PROMPT_CHUNK = 64


def entry(
    tokenizer: QwenTokenizer, token: int, logprob: float | None, top: Sequence[tuple[int, float]]
) -> TokenLogprob:
    text, data = tokenizer.token_label(token)
    return TokenLogprob(text, logprob, data, tuple(_alternative(tokenizer, t, lp) for t, lp in top))


def _alternative(tokenizer: QwenTokenizer, token: int, logprob: float) -> TokenLogprob:
    text, data = tokenizer.token_label(token)
    return TokenLogprob(text, logprob, data)


def chosen(tokenizer: QwenTokenizer, row: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """``token``'s entry from one log-softmax row [V], with ``top`` alternatives."""
    pairs: list[tuple[int, float]] = []
    if top > 0:
        values, ids = torch.topk(row, top)
        pairs = list(zip(ids.tolist(), values.tolist(), strict=True))
    return entry(tokenizer, token, float(row[token]), pairs)


def prompt_entries(
    tokenizer: QwenTokenizer,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    prompt: Sequence[int],
    top: int,
) -> tuple[TokenLogprob, ...]:
    """Entries for every prompt token: the first has no logprob (nothing predicts it); token
    ``t`` gets the log-softmax of position ``t - 1``'s logits."""
    out = [entry(tokenizer, prompt[0], None, ())] if prompt else []
    for begin in range(0, len(prompt) - 1, PROMPT_CHUNK):
        end = min(begin + PROMPT_CHUNK, len(prompt) - 1)
        # log-softmax without the [rows, vocab] result: logit - logsumexp, for the few asked
        logits = logits_of(hidden[begin:end])
        norm = torch.logsumexp(logits, dim=-1, keepdim=True)
        targets = torch.tensor(prompt[begin + 1 : end + 1], device=logits.device)
        picked = (logits.gather(1, targets[:, None]) - norm)[:, 0].tolist()
        tops: list[list[tuple[int, float]]] = [[] for _ in range(end - begin)]
        if top > 0:
            if top == 1:
                best, best_ids = logits.max(dim=-1, keepdim=True)
            else:
                best, best_ids = torch.topk(logits, top, dim=-1)
            values, ids = best - norm, best_ids
            tops = [
                list(zip(i, v, strict=True))
                for i, v in zip(ids.tolist(), values.tolist(), strict=True)
            ]
        for j in range(end - begin):
            out.append(entry(tokenizer, prompt[begin + 1 + j], picked[j], tops[j]))
    return tuple(out)


class Aligner(TokenSplitter):
    """Hands out token logprobs with the text they make, one choice's worth.

    Output text can come later than its tokens (an incomplete UTF-8 sequence, text a stop
    string might start) and in other pieces; :meth:`take` gives the tokens that make the
    next ``chars`` characters, a token whose text runs past them going with the first piece
    it shows in. Tokens whose text is never output (a stop string) are never handed out.
    """

    __slots__ = ()

    def add(self, entry: TokenLogprob) -> None:
        self.pending.append(entry)

    def rest(self) -> tuple[TokenLogprob, ...]:
        """What is left, once the output's text has all been let out."""
        out = tuple(self.pending)
        self.pending.clear()
        return out
