"""Encryption at rest for the content of review items: AES-256-GCM, the item's id as
associated data (a ciphertext moved to another item does not decrypt). Pure: no store, no
configuration; the key comes from ``safety.review.encryption_key``."""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qwen_gateway.errors import InternalError

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = b"\x01"  # the format: version, nonce, ciphertext with its tag


class UndecryptableContent(InternalError):
    """Stored content that the configured key does not open: the key was changed or the
    bytes altered. Never a client's fault."""

    default_code = "review_content_undecryptable"


def generate_key() -> str:
    """A fresh key, urlsafe base64 (what ``safety.review.encryption_key`` takes)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def decode_key(text: str) -> bytes:
    """The key's 32 bytes; ValueError (naming no part of the key) for anything else."""
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("the key is not urlsafe base64") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"the key is {len(raw)} bytes, not {KEY_BYTES}")
    return raw


class ContentCipher:
    """Encrypts text bound to one associated datum (a review id)."""

    __slots__ = ("_aead",)

    def __init__(self, key: str | bytes) -> None:
        raw = decode_key(key) if isinstance(key, str) else key
        if len(raw) != KEY_BYTES:
            raise ValueError(f"the key is {len(raw)} bytes, not {KEY_BYTES}")
        self._aead = AESGCM(raw)

    def encrypt(self, text: str, associated: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, text.encode("utf-8"), associated.encode("utf-8"))
        return VERSION + nonce + sealed

    def decrypt(self, blob: bytes, associated: str) -> str:
        if blob[:1] != VERSION or len(blob) < 1 + NONCE_BYTES + 16:
            raise UndecryptableContent(
                f"The stored content of {associated} is not in a format this gateway writes."
            )
        nonce, sealed = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            plain = self._aead.decrypt(nonce, sealed, associated.encode("utf-8"))
        except InvalidTag:
            raise UndecryptableContent(
                f"The stored content of {associated} cannot be decrypted with the configured "
                "safety.review.encryption_key (was the key changed, or the row altered?)."
            ) from None
        return plain.decode("utf-8")
