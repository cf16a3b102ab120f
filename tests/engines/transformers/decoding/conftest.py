"""Fixtures of the constrained-decoding tests: the tiny model's tokenizer, its slot model and
one grammar compiler, built once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from qwen_gateway.engines.transformers.decoding.compiler import GrammarCompiler
from qwen_gateway.qwen.tokenizer import QwenTokenizer
from support.decoding import SEEDS


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path) -> QwenTokenizer:
    return QwenTokenizer.from_dir(tiny_model_dir)


@pytest.fixture(scope="session")
def slot_model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    from qwen_gateway.engines.transformers.model import CacheShape, SlotModel

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    return SlotModel(hf, CacheShape(slots=len(SEEDS), max_len=320))


@pytest.fixture(scope="session")
def compiler(tokenizer: QwenTokenizer, slot_model: Any) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, int(slot_model.config.vocab_size))
