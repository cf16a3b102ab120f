"""The sampler takes any parameters without failing: reduced, greedy, or a clear refusal."""

from __future__ import annotations

import math

import pytest
import torch

from qwen_gateway.core.types import SamplingParams
from qwen_gateway.engines.transformers.sampler import SequenceSampler, greedy_batch
from qwen_gateway.errors import InvalidRequest

CPU = torch.device("cpu")
VOCAB = 1000


def logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * 10


@pytest.mark.parametrize("seed", [2**70, -(2**70), 2**64 - 1, -(2**63) - 1, 0])
def test_any_seed_is_reduced_into_the_generators_range(seed: int) -> None:
    params = SamplingParams(temperature=1.0, seed=seed)
    for choice in (0, 1):
        first = SequenceSampler(params, [1, 2], CPU, choice).pick(logits())
        again = SequenceSampler(params, [1, 2], CPU, choice).pick(logits())
        assert first == again  # still reproducible
    assert 0 <= first < VOCAB


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-6, 0.0])
def test_tiny_temperatures_decode_greedily(temperature: float) -> None:
    sampler = SequenceSampler(SamplingParams(temperature=temperature), [1], CPU, 0)
    assert sampler.greedy and sampler.generator is None
    row = logits(3)
    assert sampler.pick(row.clone()) == int(torch.argmax(row))
    assert greedy_batch(torch.stack([row, logits(4)]), [sampler, sampler]) is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("repetition_penalty", 1e-300),
        ("repetition_penalty", 1e300),
        ("repetition_penalty", 0.0),
        ("temperature", -1.0),
        ("temperature", 1e300),
        ("temperature", math.nan),
        ("top_p", 0.0),
        ("top_p", math.nan),
        ("presence_penalty", 1e30),
        ("frequency_penalty", -math.inf),
    ],
)
def test_parameters_the_sampler_cannot_take_are_refused_by_name(field: str, value: float) -> None:
    params = SamplingParams(**{"temperature": 1.0, field: value})
    with pytest.raises(InvalidRequest) as info:
        SequenceSampler(params, [1, 2], CPU, 0)
    assert info.value.param == field
    assert info.value.status_code == 400


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1e-5, repetition_penalty=0.01, frequency_penalty=100.0),
        SamplingParams(temperature=100.0, repetition_penalty=100.0, presence_penalty=-100.0),
        SamplingParams(temperature=2.0, top_p=1e-300, top_k=1, repetition_penalty=0.01),
    ],
)
def test_extremes_within_range_still_give_tokens(params: SamplingParams) -> None:
    sampler = SequenceSampler(params, list(range(0, VOCAB, 3)), CPU, 0)
    for step in range(20):
        row = logits(step)
        row[VOCAB // 2 :] = float("-inf")  # a constraint's mask: only half may be picked
        token = sampler.pick(row)
        assert 0 <= token < VOCAB // 2
        sampler.observe(token, VOCAB, CPU)
