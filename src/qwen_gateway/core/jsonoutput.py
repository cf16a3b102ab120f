"""Check JSON output from engines that cannot constrain decoding."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from qwen_gateway.errors import InvalidModelOutput


def check_json_output(
    text: str,
    schema: Mapping[str, Any] | None,
    what: str = "The model's output",
    asked: str = "response_format asked for JSON",
) -> None:
    """Raise :class:`InvalidModelOutput` unless ``text`` is a JSON object valid for ``schema``."""
    import jsonschema

    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise InvalidModelOutput(f"{what} is not valid JSON, although {asked}.") from None
    if not isinstance(value, dict):
        raise InvalidModelOutput(f"{what} is JSON but not an object.")
    if schema is None:
        return
    error = jsonschema.exceptions.best_match(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(value)
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise InvalidModelOutput(
            f"{what} does not match the requested schema at {where}: {error.message}"
        )
