"""The JSON results of ``qwen-gateway bench``: written by ``bench run``, read (and combined
from several files) by ``bench plot``, checked against :data:`RESULTS_SCHEMA` both ways."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema

from qwen_gateway.bench.runner import Record
from qwen_gateway.bench.stats import PERCENTILES

SCHEMA_ID = "qwen-gateway-bench/1"
MAX_FILE_BYTES = 256 * 1024 * 1024  # a results file larger than this is refused

_NUM = {"type": ["number", "null"]}
_DIST = {
    "type": "object",
    "required": ["count", "mean", "min", "max", *(f"p{q}" for q in PERCENTILES)],
    "properties": {
        "count": {"type": "integer", "minimum": 0},
        **{k: _NUM for k in ("mean", "min", "max", *(f"p{q}" for q in PERCENTILES))},
    },
}
RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "created", "targets"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "created": {"type": "string"},
        "targets": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "url", "model", "config", "summary", "requests"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "url": {"type": "string"},
                    "model": {"type": "string"},
                    "config": {
                        "type": "object",
                        "required": ["api", "stream", "requests", "prompt_tokens", "output_tokens"],
                        "properties": {
                            "api": {"enum": ["chat", "completions"]},
                            "stream": {"type": "boolean"},
                            "requests": {"type": "integer", "minimum": 1},
                            "concurrency": {"type": ["integer", "null"]},
                            "rate": {"type": ["number", "null"]},
                            "duration_s": {"type": ["number", "null"]},
                            "prompt_tokens": {"type": "string"},
                            "output_tokens": {"type": "string"},
                        },
                    },
                    "summary": {
                        "type": "object",
                        "required": [
                            "requests",
                            "succeeded",
                            "failed",
                            "cancelled",
                            "errors",
                            "elapsed_s",
                            "requests_per_s",
                            "output_tokens",
                            "output_tokens_per_s",
                            "ttft_ms",
                            "itl_ms",
                            "tpot_ms",
                            "e2e_ms",
                        ],
                        "properties": {
                            "requests": {"type": "integer", "minimum": 0},
                            "succeeded": {"type": "integer", "minimum": 0},
                            "failed": {"type": "integer", "minimum": 0},
                            "cancelled": {"type": "integer", "minimum": 0},
                            "errors": {
                                "type": "object",
                                "additionalProperties": {"type": "integer", "minimum": 1},
                            },
                            "elapsed_s": {"type": "number", "minimum": 0},
                            "requests_per_s": {"type": "number", "minimum": 0},
                            "output_tokens": {"type": "integer", "minimum": 0},
                            "output_tokens_per_s": {"type": "number", "minimum": 0},
                            "ttft_ms": _DIST,
                            "itl_ms": _DIST,
                            "tpot_ms": _DIST,
                            "e2e_ms": _DIST,
                        },
                    },
                    "requests": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["index", "start_s", "ok", "error", "output_tokens"],
                            "properties": {
                                "index": {"type": "integer", "minimum": 0},
                                "start_s": {"type": "number"},
                                "ok": {"type": "boolean"},
                                "error": {"type": ["string", "null"]},
                                "ttft_ms": _NUM,
                                "e2e_ms": _NUM,
                                "output_tokens": {"type": "integer", "minimum": 0},
                            },
                        },
                    },
                },
            },
        },
    },
}


class ResultsError(Exception):
    """A results file that cannot be read or does not match the schema."""


def target_result(
    *,
    name: str,
    url: str,
    model: str,
    config: dict[str, Any],
    summary: dict[str, Any],
    records: Sequence[Record],
) -> dict[str, Any]:
    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000.0

    return {
        "name": name,
        "url": url,
        "model": model,
        "config": config,
        "summary": summary,
        "requests": [
            {
                "index": r.index,
                "start_s": r.start,
                "ok": r.ok,
                "error": r.error,
                "ttft_ms": ms(r.ttft),
                "e2e_ms": ms(r.e2e),
                "output_tokens": r.output_tokens,
                "prompt_tokens": r.prompt_tokens,
            }
            for r in records
        ],
    }


def results(targets: Sequence[dict[str, Any]]) -> dict[str, Any]:
    doc = {
        "schema": SCHEMA_ID,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "targets": list(targets),
    }
    jsonschema.validate(doc, RESULTS_SCHEMA)
    return doc


def write(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def read(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ResultsError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB")
        doc = json.loads(path.read_text(encoding="utf-8"))
        jsonschema.validate(doc, RESULTS_SCHEMA)
    except OSError as exc:
        raise ResultsError(f"{path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not JSON ({exc})") from None
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
        raise ResultsError(f"{path}: not bench results ({where}: {exc.message})") from None
    return dict(doc)


def combine(paths: Sequence[Path]) -> dict[str, Any]:
    """The targets of several results files in one document, names made unique with the
    file's name where two files used the same one."""
    targets: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in paths:
        for target in read(path)["targets"]:
            name = target["name"]
            if name in seen:
                name = f"{name} ({path.stem})"
            while name in seen:
                name += "'"
            seen.add(name)
            targets.append({**target, "name": name})
    return results(targets)
