"""Extract the OpenAI response schemas the tests validate against (run once, needs ../shared).

Writes tests/data/openai_schemas.json: the named schemas and every schema they reference,
from OpenAI's official OpenAPI description (provenance in tests/data/OPENAI_SCHEMAS.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = [
    "ListModelsResponse",
    "Model",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ErrorResponse",
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
    "CreateEmbeddingResponse",
]


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def main() -> None:
    source = Path(
        sys.argv[1] if len(sys.argv) > 1 else "../shared/fixtures/openai-openapi/openapi.json"
    )
    schemas = json.loads(source.read_text())["components"]["schemas"]
    keep: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = schemas[name]
        todo.extend(refs(schemas[name]) - keep.keys())
    out = Path("tests/data/openai_schemas.json")
    out.write_text(json.dumps({"components": {"schemas": keep}}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(keep)} schemas to {out}")


if __name__ == "__main__":
    main()
