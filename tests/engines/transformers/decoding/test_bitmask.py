"""Applying a filled token bitmask to a logits row: through the cached id form (few allowed,
or few refused) and through xgrammar's kernel, with the same result; the cache is an LRU
bounded by entries and by ids held."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
import torch

from qwen_gateway.engines.transformers.decoding import bitmask
from qwen_gateway.engines.transformers.decoding.bitmask import (
    NEG_INF,
    MaskCache,
    MaskIds,
    apply_bitmask,
    keep_only,
)

VOCAB = 100  # 4 words of 32 bits: ids 100..127 of the last word lie past the vocabulary
CPU = torch.device("cpu")


def mask_of(allowed: Iterable[int], bits: int = 128) -> torch.Tensor:
    """A filled bitmask [1, words] allowing ``allowed``."""
    words = np.zeros(bits // 32, dtype=np.uint32)
    for token in allowed:
        words[token >> 5] |= np.uint32(1 << (token & 31))
    return torch.from_numpy(words.view(np.int32)).unsqueeze(0)


def apply(row: torch.Tensor, mask: torch.Tensor, cache: MaskCache) -> torch.Tensor | None:
    return apply_bitmask(row, mask, mask.numpy()[0], cache)


def logits(size: int = VOCAB) -> torch.Tensor:
    return torch.arange(size, dtype=torch.float32) + 1.0


def finite(row: torch.Tensor) -> list[int]:
    return torch.nonzero(row > NEG_INF).flatten().tolist()


def test_keep_only_refuses_everything_else() -> None:
    row = torch.tensor([1.0, 2.0, 3.0, 4.0])
    keep_only(row, torch.tensor([1, 3]))
    assert row.tolist() == [NEG_INF, 2.0, NEG_INF, 4.0]


def test_few_allowed_ids_are_kept_and_returned() -> None:
    row = logits()
    allowed = apply(row, mask_of([3, 31, 32, 99]), MaskCache(VOCAB))
    assert allowed is not None
    assert allowed.tolist() == [3, 31, 32, 99]
    assert finite(row) == [3, 31, 32, 99]
    assert row[[3, 31, 32, 99]].tolist() == [4.0, 32.0, 33.0, 100.0]  # values untouched


def test_few_refused_ids_are_refused_and_nothing_returned() -> None:
    row = logits()
    refused = {0, 7, 63}
    assert apply(row, mask_of(set(range(VOCAB)) - refused), MaskCache(VOCAB)) is None
    assert finite(row) == sorted(set(range(VOCAB)) - refused)
    assert row[50].item() == 51.0


def test_bits_past_the_vocabulary_are_ignored() -> None:
    row = logits()
    allowed = apply(row, mask_of([5, 120]), MaskCache(VOCAB))
    assert allowed is not None and allowed.tolist() == [5]
    assert finite(row) == [5]


@pytest.mark.parametrize("allowed", [[5], range(90)])
def test_padding_past_the_vocabulary_is_refused(allowed: Iterable[int]) -> None:
    ids = list(allowed)
    row = logits(VOCAB + 28)  # the model's embedding is padded past the tokenizer's vocabulary
    apply(row, mask_of(ids), MaskCache(VOCAB))
    assert finite(row) == ids


def test_a_mask_allowing_everything_leaves_the_row() -> None:
    row = logits(VOCAB + 4)
    assert apply(row, mask_of(range(VOCAB)), MaskCache(VOCAB)) is None  # xgrammar's kernel
    assert row[:VOCAB].tolist() == logits().tolist()
    assert row[VOCAB:].tolist() == [NEG_INF] * 4


def test_a_mask_allowing_nothing_refuses_everything() -> None:
    row = logits()
    assert apply(row, mask_of([]), MaskCache(VOCAB)) is None
    assert finite(row) == []


@pytest.mark.parametrize("allowed", [[2, 40, 77], sorted(set(range(VOCAB)) - {9, 64})])
def test_kernel_and_id_form_agree(allowed: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    by_ids = logits(VOCAB + 3)
    apply(by_ids, mask_of(allowed), MaskCache(VOCAB))
    monkeypatch.setattr(bitmask, "MASK_ENTRY_IDS", 1)  # every mask is too big to cache: kernel
    by_kernel = logits(VOCAB + 3)
    assert apply(by_kernel, mask_of(allowed), MaskCache(VOCAB)) is None
    assert by_kernel.tolist() == by_ids.tolist()
    assert finite(by_kernel) == allowed


def test_lookup_converts_once_per_key() -> None:
    cache = MaskCache(VOCAB)
    mask = mask_of([1, 2])
    first = cache.lookup(mask[0], b"k", CPU)
    assert first is not None and first.keep and first.ids.tolist() == [1, 2]
    assert cache.lookup(mask[0], b"k", CPU) is first


def test_lookup_gives_the_refused_ids_when_fewer() -> None:
    entry = MaskCache(VOCAB).lookup(mask_of(range(1, VOCAB))[0], b"k", CPU)
    assert entry is not None
    assert not entry.keep and entry.ids.tolist() == [0] and entry.size == 1


def test_cache_is_lru_bounded_by_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bitmask, "MASK_CACHE_ENTRIES", 2)
    cache = MaskCache(VOCAB)
    masks = [mask_of([i])[0] for i in range(3)]
    first = cache.lookup(masks[0], b"0", CPU)
    second = cache.lookup(masks[1], b"1", CPU)
    assert cache.lookup(masks[0], b"0", CPU) is first  # refreshed: now the most recent
    cache.lookup(masks[2], b"2", CPU)  # evicts "1"
    assert cache.lookup(masks[0], b"0", CPU) is first
    assert cache.lookup(masks[1], b"1", CPU) is not second


def test_cache_is_bounded_by_ids_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bitmask, "MASK_CACHE_IDS", 5)
    cache = MaskCache(VOCAB)
    three = cache.lookup(mask_of([1, 2, 3])[0], b"three", CPU)
    two = cache.lookup(mask_of([4, 5])[0], b"two", CPU)  # 5 ids held: both stay
    assert cache.lookup(mask_of([1, 2, 3])[0], b"three", CPU) is three  # refreshed
    one = cache.lookup(mask_of([6])[0], b"one", CPU)  # 6 ids: the least recent ("two") goes
    again = cache.lookup(mask_of([4, 5])[0], b"two", CPU)  # converted again; "three" goes
    assert again is not two and again is not None and again.ids.tolist() == [4, 5]
    assert cache.lookup(mask_of([6])[0], b"one", CPU) is one
    assert cache.lookup(mask_of([1, 2, 3])[0], b"three", CPU) is not three


def test_mask_ids_on_a_device_is_a_cached_copy() -> None:
    ids = MaskIds(False, torch.tensor([4, 8]))
    moved = ids.on(CPU)
    assert moved.keep is False and moved.ids.tolist() == [4, 8]
    assert ids.on(CPU) is moved
    assert ids.size == 2
