"""Applying a filled xgrammar token bitmask to one logits row.

A mask is turned once into the ids it allows or the ids it refuses (whichever are fewer) and
cached by its bytes; applying it is then one gather/scatter or one ``index_fill``, several
times faster than xgrammar's CPU kernel on masks that refuse many tokens.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
import xgrammar as xgr

__all__ = ["NEG_INF", "MaskCache", "MaskIds", "apply_bitmask", "keep_only"]

NEG_INF: Final = float("-inf")

#: Ids kept over all cached masks (int64: 32 MB).
MASK_CACHE_IDS: Final = 4_000_000
#: Masks needing more ids than this are applied with xgrammar's kernel.
MASK_ENTRY_IDS: Final = 1 << 17
#: Masks kept at most.
MASK_CACHE_ENTRIES: Final = 4 * 1024


class MaskIds:
    """A mask as the ids it allows (``keep``) or the ids it refuses."""

    __slots__ = ("_on_device", "ids", "keep", "size")

    def __init__(self, keep: bool, ids: torch.Tensor) -> None:
        self.keep = keep
        self.ids = ids
        self.size = int(ids.numel())
        self._on_device: dict[torch.device, MaskIds] = {}

    def on(self, device: torch.device) -> MaskIds:
        moved = self._on_device.get(device)
        if moved is None:
            moved = self._on_device[device] = MaskIds(self.keep, self.ids.to(device))
        return moved


class MaskCache:
    """Filled bitmask rows of one vocabulary in their id form, LRU, bounded by ids held.

    Safe to use from several threads (the scheduler and compile threads)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._masks: OrderedDict[bytes, MaskIds | None] = OrderedDict()
        self._ids = 0  # ids held by _masks
        self._lock = threading.Lock()
        bit_offsets = torch.arange(32, dtype=torch.int64)
        self._powers = (torch.ones(32, dtype=torch.int64) << bit_offsets).to(torch.int32)

    def lookup(self, bitmask: torch.Tensor, key: bytes, device: torch.device) -> MaskIds | None:
        """The cached id form of a filled bitmask row; None: apply it with the kernel."""
        with self._lock:
            masks = self._masks
            if key in masks:
                masks.move_to_end(key)
                entry = masks[key]
            else:
                entry = self._convert(bitmask)
                masks[key] = entry
                self._ids += entry.size if entry is not None else 0
                while self._ids > MASK_CACHE_IDS or len(masks) > MASK_CACHE_ENTRIES:
                    _, old = masks.popitem(last=False)
                    self._ids -= old.size if old is not None else 0
        if entry is None or device.type == "cpu":
            return entry
        return entry.on(device)

    def _convert(self, bitmask: torch.Tensor) -> MaskIds | None:
        bits = (bitmask.unsqueeze(1) & self._powers) != 0  # [words, 32]: allowed
        allowed = bits.flatten()[: self.vocab_size]
        n_allowed = int(allowed.sum())
        keep = n_allowed <= self.vocab_size - n_allowed
        ids = torch.nonzero(allowed if keep else ~allowed).flatten()
        if ids.numel() > MASK_ENTRY_IDS or ids.numel() == 0:
            return None
        return MaskIds(keep, ids)


def keep_only(row: torch.Tensor, ids: torch.Tensor) -> None:
    """Set every entry of ``row`` but ``ids`` to -inf."""
    kept = row.index_select(0, ids)
    row.fill_(NEG_INF)
    row.index_copy_(0, ids, kept)


def apply_bitmask(
    row: torch.Tensor,
    bitmask: torch.Tensor,
    bits: npt.NDArray[np.int32],
    cache: MaskCache,
) -> torch.Tensor | None:
    """Mask ``row`` [V] in place with the filled ``bitmask`` [1, words] (``bits`` is its numpy
    view); ids past the vocabulary are refused. Returns the allowed ids when they are few."""
    vocab_size = cache.vocab_size
    entry = cache.lookup(bitmask[0], bits.tobytes(), row.device)
    if entry is not None and entry.keep:
        keep_only(row, entry.ids)
        return entry.ids
    if entry is not None:
        row.index_fill_(0, entry.ids, NEG_INF)
    else:
        view = row[:vocab_size].unsqueeze(0)
        mask = bitmask if row.device.type == "cpu" else bitmask.to(row.device)
        xgr.apply_token_bitmask_inplace(view, mask, vocab_size=vocab_size)
    if row.shape[0] > vocab_size:
        row[vocab_size:] = NEG_INF
    return None
