"""Checks on a client's JSON Schema before it is compiled, and its rewrite for xgrammar.

A schema is refused (:class:`~qwen_gateway.errors.InvalidRequest`) when it is too deep or too
large, is not valid against its metaschema, or has a ``$ref`` that is not a JSON pointer into
itself (nothing is ever fetched). :func:`length_patterns` rewrites string length bounds as
patterns, which xgrammar compiles to much faster masks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import jsonschema

from qwen_gateway.errors import InvalidRequest

__all__ = [
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "check_refs",
    "depth",
    "length_patterns",
    "schema_text",
    "validate_schema",
]

#: Nesting depth of a schema's JSON (objects and arrays; a nested object property costs two)
#: past which it is refused before compiling.
MAX_SCHEMA_DEPTH: Final = 128
#: Serialised size past which a schema or tool set is refused before compiling.
MAX_SCHEMA_BYTES: Final = 1 << 20
# String length bounds up to this are compiled as a regex (see length_patterns).
_PATTERN_MAX_LENGTH: Final = 128
_DATA_KEYWORDS: Final = frozenset({"enum", "const", "default", "examples"})
# Where a JSON Schema holds subschemas: maps of them, lists of them, or one (or, for the old
# "items", a list); every other keyword holds data or annotations.
_SCHEMA_MAPS: Final = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_SCHEMA_LISTS: Final = frozenset({"prefixItems", "allOf", "anyOf", "oneOf", "items"})
_SCHEMA_VALUES: Final = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "not",
        "if",
        "then",
        "else",
        "contains",
        "propertyNames",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_STRING_FORMS: Final = frozenset({"pattern", "format", "enum", "const"})


def schema_text(schema: Mapping[str, Any], param: str, what: str) -> str:
    """``schema`` as compact JSON text (the cache key), refusing ones too deep or too large."""
    if not isinstance(schema, Mapping):
        raise InvalidRequest(f"The {what} must be a JSON object.", param=param)
    if depth(schema) > MAX_SCHEMA_DEPTH:
        raise InvalidRequest(
            f"The {what} is nested more than {MAX_SCHEMA_DEPTH} levels deep.", param=param
        )
    try:
        text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # NaN or Infinity: JSON has no such numbers
        raise InvalidRequest(f"The {what} is not valid JSON: {exc}", param=param) from exc
    if len(text) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"The {what} is too large to constrain.", param=param)
    return text


def validate_schema(text: str, param: str, what: str) -> None:
    """Check a schema (as JSON text) against its JSON Schema metaschema (2020-12 by default)."""
    schema = json.loads(text)
    try:
        validator = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise InvalidRequest(
            f"The {what} is not a valid JSON Schema: {exc.message} (at {where})", param=param
        ) from exc
    except RecursionError as exc:
        raise InvalidRequest(f"The {what} cannot be checked: {exc}", param=param) from exc
    check_refs(schema, param, what)


def check_refs(schema: object, param: str, what: str) -> None:
    """Refuse a ``$ref`` that is not a JSON pointer (``#`` or ``#/...``) to a schema within
    ``schema``: nothing is fetched, and an unresolved reference would not constrain anything."""
    stack: list[tuple[object, str]] = [(schema, "")]
    while stack:
        node, where = stack.pop()
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            at = f"{where}/{key}"
            if key == "$ref":
                if not isinstance(value, str) or not _resolves(schema, value):
                    raise InvalidRequest(
                        f"The {what} has a $ref (at {at}) that is not a JSON pointer ('#/...') "
                        "to a schema within it.",
                        param=param,
                    )
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                stack.extend((v, f"{at}/{k}") for k, v in value.items())
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                stack.extend((v, f"{at}/{i}") for i, v in enumerate(value))
            elif key in _SCHEMA_VALUES:
                stack.append((value, at))


def _resolves(schema: object, ref: str) -> bool:
    if ref == "#":
        return True
    if not ref.startswith("#/"):
        return False
    node = schema
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isascii() and token.isdigit():
            index = int(token)
            if index >= len(node):
                return False
            node = node[index]
        else:
            return False
    return isinstance(node, dict | bool)


def length_patterns(text: str) -> str:
    """Rewrite string length bounds as ``pattern``, for xgrammar only.

    xgrammar unrolls ``minLength``/``maxLength`` into one rule per character, and filling a
    mask inside such a string costs milliseconds (every token is checked at runtime); the same
    bound written as the regex ``^[\\s\\S]{min,max}$`` gets precomputed masks (~50 µs).
    Both forms allow the same strings (no escapes inside a bounded string). Compile time grows
    with the bound either way, so bounds above ``_PATTERN_MAX_LENGTH`` are left as they are
    (and to the compile timeout).
    """
    schema = json.loads(text)
    changed = False
    stack: list[object] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key not in _DATA_KEYWORDS:
                stack.append(value)
        if node.get("type") != "string" or any(k in node for k in _STRING_FORMS):
            continue
        low, high = node.get("minLength", 0), node.get("maxLength")
        if "minLength" not in node and high is None:
            continue
        if not isinstance(low, int) or not (high is None or isinstance(high, int)):
            continue
        if low > _PATTERN_MAX_LENGTH or (
            high is not None and not low <= high <= _PATTERN_MAX_LENGTH
        ):
            continue
        node.pop("minLength", None)
        node.pop("maxLength", None)
        node["pattern"] = f"^[\\s\\S]{{{low},{'' if high is None else high}}}$"
        changed = True
    return json.dumps(schema, ensure_ascii=False) if changed else text


def depth(value: object) -> int:
    """Container nesting depth, without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            children: Sequence[object] = list(item.values())
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level > MAX_SCHEMA_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest
