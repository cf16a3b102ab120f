"""Check JSON output from engines that cannot constrain decoding."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from qwen_gateway.errors import InvalidModelOutput


def check_json_output(text: str, schema: Mapping[str, Any] | None) -> None:
    """Raise :class:`InvalidModelOutput` unless ``text`` is a JSON object valid for ``schema``."""
    import jsonschema

    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise InvalidModelOutput(
            "The model's output is not valid JSON, although response_format asked for JSON."
        ) from None
    if not isinstance(value, dict):
        raise InvalidModelOutput("The model's output is JSON but not an object.")
    if schema is None:
        return
    error = jsonschema.exceptions.best_match(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(value)
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise InvalidModelOutput(
            f"The model's JSON output does not match the requested schema at {where}: "
            f"{error.message}"
        )
