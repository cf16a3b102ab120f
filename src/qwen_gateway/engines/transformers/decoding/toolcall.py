"""The grammar of Qwen's Hermes tool calls, as an xgrammar structural tag.

One call (or, with ``parallel``, one or more separated by a newline) of::

    <tool_call>\\n{"name": "<name>", "arguments": <JSON valid for its parameters>}\\n</tool_call>

The tags are named by token id where the model has them as single added tokens (see
:mod:`.vocabulary`), so no string inside the arguments can spell them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import xgrammar as xgr

from qwen_gateway.engines.transformers.decoding.rejection import xgrammar_refusal
from qwen_gateway.engines.transformers.decoding.schema import (
    MAX_SCHEMA_BYTES,
    length_patterns,
    schema_text,
    validate_schema,
)
from qwen_gateway.engines.transformers.decoding.vocabulary import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from qwen_gateway.errors import InvalidRequest

__all__ = ["ToolSchemas", "check_tools", "parse_tools", "structural_tag"]

#: The tools the model may call: (name, parameters schema as compact JSON text) each.
ToolSchemas = tuple[tuple[str, str], ...]


def parse_tools(tools: Sequence[Mapping[str, Any]], param: str) -> ToolSchemas:
    """Names and parameter schemas of OpenAI function definitions (``{"name", "parameters"}``,
    optionally inside ``{"type": "function", "function": ...}``), checked for size only."""
    if not tools:
        raise InvalidRequest("No tool can be called here.", param=param)
    calls: list[tuple[str, str]] = []
    for i, tool in enumerate(tools):
        fn = tool.get("function", tool) if isinstance(tool, Mapping) else None
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"Tool {i} has no name.", param=param)
        params = fn.get("parameters") if isinstance(fn, Mapping) else None
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise InvalidRequest(f"The parameters of tool {name!r} are not an object.", param=param)
        calls.append((name, schema_text(params, param, f"parameters of tool {name!r}")))
    if sum(len(name) + len(text) for name, text in calls) > MAX_SCHEMA_BYTES:
        raise InvalidRequest("The tool definitions are too large to constrain.", param=param)
    return tuple(calls)


def check_tools(calls: ToolSchemas, param: str) -> None:
    """Check every parameters schema against its metaschema and for outside ``$ref``s."""
    for name, text in calls:
        validate_schema(text, param, f"parameters of tool {name!r}")


def structural_tag(calls: ToolSchemas, parallel: bool, tag_ids: Mapping[str, int]) -> str:
    """The structural tag (JSON text) for ``calls``; the parameters are compiled here, so a
    schema xgrammar refuses raises :class:`~.rejection.GrammarRejected`."""
    open_id = tag_ids.get(TOOL_CALL_OPEN)
    close_id = tag_ids.get(TOOL_CALL_CLOSE)
    begin: Any = {"type": "token", "token": open_id} if open_id is not None else TOOL_CALL_OPEN
    end: Any = {"type": "token", "token": close_id} if close_id is not None else TOOL_CALL_CLOSE
    tags: list[dict[str, Any]] = []
    for name, params in calls:
        rewritten = length_patterns(params)
        with xgrammar_refusal():
            arguments = xgr.Grammar.from_json_schema(
                rewritten, any_whitespace=False, strict_mode=True
            )
        head = '\n{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '
        content = {
            "type": "sequence",
            "elements": [
                {"type": "const_string", "value": head},
                {"type": "grammar", "grammar": str(arguments)},
                {"type": "const_string", "value": "}\n"},
            ],
        }
        tags.append({"type": "tag", "begin": begin, "content": content, "end": end})
    one: dict[str, Any] = tags[0] if len(tags) == 1 else {"type": "or", "elements": tags}
    fmt = one
    if parallel:
        more = {"type": "sequence", "elements": [{"type": "const_string", "value": "\n"}, one]}
        fmt = {"type": "sequence", "elements": [one, {"type": "star", "content": more}]}
    return json.dumps({"type": "structural_tag", "format": fmt}, ensure_ascii=False)
