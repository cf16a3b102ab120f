"""parse_json: JSON bodies, strictly (both API edges parse with it)."""

from __future__ import annotations

import pytest

from qwen_gateway.api.body import parse_json
from qwen_gateway.errors import InvalidRequest


def test_a_body_of_ordinary_json_is_parsed() -> None:
    body = b'{"model": "m", "n": 2, "temperature": 0.5, "stream": false, "stop": null}'
    assert parse_json(body) == {
        "model": "m", "n": 2, "temperature": 0.5, "stream": False, "stop": None,
    }  # fmt: skip
    assert parse_json(b"1" * 100) == int("1" * 100)  # as long as an integer may be


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"seed": ' + b"9" * 5000 + b"}", "more than 100 digits"),
        (b'{"n": ' + b"1" * 101 + b"}", "more than 100 digits"),
        (b'{"temperature": NaN}', "NaN is not a JSON number"),
        (b'{"temperature": Infinity}', "Infinity is not a JSON number"),
        (b'{"temperature": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"temperature": 1e999}', "out of range"),
        (b'{"model": "m",}', "could not parse"),
        (b"\xff\xfe{}", "could not parse"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_what_no_field_could_take_is_a_400_naming_it(body: bytes, says: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_json(body)
    assert caught.value.code == "invalid_json"
    assert says in caught.value.message
