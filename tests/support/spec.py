"""Validate bodies and chunks against OpenAI's official schemas (tests/data/openai_schemas.json)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DATA = Path(__file__).resolve().parent.parent / "data" / "openai_schemas.json"


def _denull(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` -> a JSON Schema alternative with null."""
    if isinstance(node, list):
        return [_denull(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _denull(v) for k, v in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@cache
def _registry() -> tuple[dict[str, Any], Registry]:
    doc = _denull(json.loads(DATA.read_text()))
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    return doc, Registry().with_resource("urn:openai", resource)


def validate(schema_name: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError when ``instance`` breaks the named schema."""
    _, registry = _registry()
    schema = {"$ref": f"urn:openai#/components/schemas/{schema_name}"}
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    validator.validate(instance)
