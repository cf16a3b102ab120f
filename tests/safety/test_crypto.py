"""Review content encryption: AES-256-GCM bound to the review id."""

from __future__ import annotations

import base64

import pytest

from qwen_gateway.safety.crypto import (
    ContentCipher,
    UndecryptableContent,
    decode_key,
    generate_key,
)

TEXT = "赌博 advice: put it all on red. 全部押红。"


def test_text_round_trips_and_the_ciphertext_hides_it() -> None:
    cipher = ContentCipher(generate_key())
    blob = cipher.encrypt(TEXT, "rev_1")
    assert TEXT.encode() not in blob and "赌博".encode() not in blob
    assert cipher.decrypt(blob, "rev_1") == TEXT
    assert cipher.encrypt(TEXT, "rev_1") != blob  # a fresh nonce each time


def test_ciphertext_moved_to_another_review_does_not_open() -> None:
    cipher = ContentCipher(generate_key())
    blob = cipher.encrypt(TEXT, "rev_1")
    with pytest.raises(UndecryptableContent):
        cipher.decrypt(blob, "rev_2")


def test_another_key_or_altered_bytes_give_a_clear_error() -> None:
    blob = ContentCipher(generate_key()).encrypt(TEXT, "rev_1")
    with pytest.raises(UndecryptableContent) as caught:
        ContentCipher(generate_key()).decrypt(blob, "rev_1")
    assert "encryption_key" in caught.value.message and caught.value.status_code == 500
    key = generate_key()
    good = ContentCipher(key).encrypt(TEXT, "rev_1")
    flipped = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(UndecryptableContent):
        ContentCipher(key).decrypt(flipped, "rev_1")
    with pytest.raises(UndecryptableContent):
        ContentCipher(key).decrypt(b"\x02" + good[1:], "rev_1")  # an unknown format version
    with pytest.raises(UndecryptableContent):
        ContentCipher(key).decrypt(b"", "rev_1")


def test_keys_are_32_bytes_of_urlsafe_base64() -> None:
    key = generate_key()
    assert len(base64.urlsafe_b64decode(key)) == 32 and generate_key() != key
    assert decode_key(key) == base64.urlsafe_b64decode(key)
    for bad in ("short", base64.urlsafe_b64encode(b"x" * 16).decode(), "não-ascii", "!!!!"):
        with pytest.raises(ValueError) as caught:
            ContentCipher(bad)
        assert bad not in str(caught.value)
    with pytest.raises(ValueError):
        ContentCipher(b"x" * 31)
