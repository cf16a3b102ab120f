"""Client schemas: refused before compiling when invalid, too deep or referring outside
themselves; string length bounds rewritten as patterns for xgrammar.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from qwen_gateway.engines.transformers.decoding.compiler import GrammarCompiler
from qwen_gateway.engines.transformers.decoding.schema import length_patterns
from qwen_gateway.errors import InvalidRequest


def test_length_bounds_become_patterns() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "minLength": 1, "maxLength": 5},
            "b": {"type": "string", "maxLength": 100_000},
            "c": {"type": "string", "maxLength": 3, "pattern": "^x+$"},
            "d": {"enum": [{"type": "string", "maxLength": 3}]},
        },
    }
    out = json.loads(length_patterns(json.dumps(schema)))["properties"]
    assert out["a"] == {"type": "string", "pattern": "^[\\s\\S]{1,5}$"}
    assert out["b"] == schema["properties"]["b"]  # too long to unroll: left to xgrammar
    assert out["c"] == schema["properties"]["c"]
    assert out["d"] == schema["properties"]["d"]  # data, not a schema


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "objekt"},
        {"type": "string", "minLength": -1},
        {"type": "object", "properties": {"a": {"type": "integer", "maximum": "ten"}}},
        {"type": "object", "required": "a"},
    ],
)
def test_invalid_schema_is_invalid_request(compiler: GrammarCompiler, schema: Any) -> None:
    with pytest.raises(InvalidRequest, match="not a valid JSON Schema") as info:
        compiler.json_schema(schema)
    assert info.value.param == "response_format"
    assert info.value.status_code == 400


def test_deeply_nested_schema_is_refused_quickly(compiler: GrammarCompiler) -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(2000):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(InvalidRequest, match="nested"):  # refused before anything recursive runs
        compiler.json_schema(deep)


@pytest.mark.parametrize(
    "ref",
    ["http://127.0.0.1:9/schema.json", "file:///etc/passwd", "#/$defs/missing", "#anchor",
     'x\n{"request_id":"FORGED"}\n', "#/properties/a/type"],
)  # fmt: skip
def test_a_ref_outside_the_schema_is_refused_before_compiling(
    compiler: GrammarCompiler, ref: str
) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"$ref": ref}},
        "$defs": {"other": {"type": "integer"}},
    }
    with pytest.raises(InvalidRequest, match=r"\$ref \(at /properties/b/\$ref\)") as info:
        compiler.json_schema(schema)
    assert info.value.param == "response_format"
    tool = {"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": ref}}}}
    with pytest.raises(InvalidRequest, match=r"\$ref") as info:
        compiler.tool_calls([tool], parallel=False)
    assert info.value.param == "tools"


def test_local_refs_and_ref_like_data_are_accepted(compiler: GrammarCompiler) -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/a~1b"},
            "$ref": {"const": {"$ref": "http://not-a-reference"}},  # a property, and data
        },
        "$defs": {"a/b": {"type": "integer"}},
    }
    assert compiler.json_schema(schema) is not None
