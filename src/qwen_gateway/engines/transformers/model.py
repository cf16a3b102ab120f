"""A Qwen2 forward pass over a slot-based KV cache, reusing the Hugging Face weights.

The Hugging Face model supplies the layers (embeddings, projections, norms, MLP, rotary
tables); this module owns the attention over a preallocated cache of ``slots`` sequences,
so that sequences can join and leave the running batch between two decode steps.
The decode step has static shapes apart from the batch size and the attended length, which
keeps a later CUDA-graph or paged-cache decode step a local change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class CacheShape:
    slots: int
    max_len: int


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class SlotModel:
    """Runs prefill and batched decode for a loaded ``Qwen2ForCausalLM``."""

    def __init__(self, hf_model: Any, cache: CacheShape) -> None:
        self.hf = hf_model
        cfg = hf_model.config
        self.config = cfg
        inner = hf_model.model
        self.embed = inner.embed_tokens
        self.layers = list(inner.layers)
        self.norm = inner.norm
        self.lm_head = hf_model.lm_head
        self.n_heads: int = cfg.num_attention_heads
        self.n_kv: int = cfg.num_key_value_heads
        self.head_dim: int = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.shape = cache
        param = next(hf_model.parameters())
        self.device: torch.device = param.device
        self.dtype: torch.dtype = param.dtype
        kv = (cache.slots, self.n_kv, cache.max_len, self.head_dim)
        self.k_cache = [torch.zeros(kv, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.v_cache = [torch.zeros(kv, dtype=self.dtype, device=self.device) for _ in self.layers]
        positions = torch.arange(cache.max_len, device=self.device)[None, :]
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = inner.rotary_emb(probe, positions)
        self.cos: torch.Tensor = cos[0]  # [max_len, head_dim]
        self.sin: torch.Tensor = sin[0]
        self._range = torch.arange(cache.max_len, device=self.device)

    # ---- shared pieces ----------------------------------------------------

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x * cos + _rotate_half(x) * sin
        return out

    def _qkv(
        self, layer: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h: [B, T, H] -> q [B, NH, T, D], k and v [B, KV, T, D] with rotary applied."""
        b, t, _ = h.shape
        attn = layer.self_attn
        q = attn.q_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        return self._rope(q, cos, sin), self._rope(k, cos, sin), v

    def _finish_layer(self, layer: Any, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = attn_out.shape
        attn_out = attn_out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        x = x + layer.self_attn.o_proj(attn_out)
        out: torch.Tensor = x + layer.mlp(layer.post_attention_layernorm(x))
        return out

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.lm_head(self.norm(x)).float()
        return logits

    # ---- prefill ----------------------------------------------------------

    def prefill(self, slot: int, tokens: list[int], start: int = 0) -> torch.Tensor:
        """Write ``tokens`` at positions ``start..`` of ``slot``; logits of the last one [V]."""
        logits: torch.Tensor = self._logits(self._prefill_hidden(slot, tokens, start)[:, -1])[0]
        return logits

    def prefill_keeping(self, slot: int, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`prefill` from position 0, also returning the final hidden state of
        every position [T, H] (for prompt logprobs: :meth:`logits_of` turns them into
        logits, a few rows at a time, so that [T, V] never exists at once)."""
        x = self._prefill_hidden(slot, tokens, 0)
        return self._logits(x[:, -1])[0], x[0]

    def logits_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [T, V] of final hidden states [T, H] kept by :meth:`prefill_keeping`."""
        return self._logits(hidden)

    def _prefill_hidden(self, slot: int, tokens: list[int], start: int) -> torch.Tensor:
        t = len(tokens)
        end = start + t
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        cos = self.cos[start:end][None, None]
        sin = self.sin[start:end][None, None]
        x = self.embed(ids)
        mask: torch.Tensor | None = None
        if start:
            mask = self._range[:end][None, :] <= self._range[start:end][:, None]
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, layer.input_layernorm(x), cos, sin)
            self.k_cache[i][slot, :, start:end] = k[0]
            self.v_cache[i][slot, :, start:end] = v[0]
            if start:
                keys = self.k_cache[i][slot : slot + 1, :, :end]
                values = self.v_cache[i][slot : slot + 1, :, :end]
                out = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads
                )
            else:
                out = F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads
                )
            x = self._finish_layer(layer, x, out)
        hidden: torch.Tensor = x
        return hidden

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Share a prefilled prompt with another slot (n > 1)."""
        for k, v in zip(self.k_cache, self.v_cache, strict=True):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    # ---- decode -----------------------------------------------------------

    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One token for each of ``slots`` at ``positions``; returns logits [B, V]."""
        b = len(slots)
        slot_t = torch.tensor(slots, dtype=torch.long, device=self.device)
        pos_t = torch.tensor(positions, dtype=torch.long, device=self.device)
        span = max(positions) + 1
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        cos = self.cos[pos_t][:, None, None]  # [B, 1, 1, D]
        sin = self.sin[pos_t][:, None, None]
        mask = (self._range[:span][None, :] <= pos_t[:, None])[:, None, None, :]
        contiguous = slots == list(range(slots[0], slots[0] + b))
        x = self.embed(ids)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, layer.input_layernorm(x), cos, sin)
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc[slot_t, :, pos_t] = k[:, :, 0]
            vc[slot_t, :, pos_t] = v[:, :, 0]
            if contiguous:
                keys = kc[slots[0] : slots[0] + b, :, :span]
                values = vc[slots[0] : slots[0] + b, :, :span]
            else:
                keys = kc[slot_t, :, :span]
                values = vc[slot_t, :, :span]
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads
            )
            x = self._finish_layer(layer, x, out)
        return self._logits(x[:, -1])
