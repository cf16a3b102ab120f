"""Grammar-constrained decoding overhead: compile time and per-token cost vs unconstrained.

Decodes with the tiny random model through ``SlotModel`` (greedy, B sequences per step) twice
per setting: unconstrained (argmax of the raw logits) and constrained (``Constraint.apply`` on
each row, argmax, ``Constraint.accept``); a sequence whose grammar completes starts a new one,
so every step does the same model work. Settings are interleaved and the best of
``--repeats`` runs is kept. "apply+accept / unconstrained step" (time measured inside the
constraint over the unconstrained step time) is the steadier overhead figure on a shared
machine. Prints Markdown tables. Not a test: numbers depend on the machine. ``--smoke`` runs
one tiny iteration (one compile case, 4 steps, B = 1) and exits non-zero on any error, for CI.
Usage:

    python benchmarks/grammar.py [--model DIR] [--steps 96] [--batches 1 8] [--threads N]
    python benchmarks/grammar.py --smoke
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "details": {"type": "boolean"},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
}
SEARCH = {
    "name": "search",
    "parameters": {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50},
            "filters": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        },
        "required": ["query"],
    },
}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def compile_times(
    compiler_factory: Callable[[], Any], limit: int | None = None
) -> list[tuple[str, float, float]]:
    """(what, first compile s, cached lookup s); a fresh compiler per row, so nothing is warm.
    ``limit``: only the first cases."""
    cases: list[tuple[str, Callable[[Any], Any]]] = [
        ("json_object", lambda c: c.json_schema(None)),
        ("json_schema: typical tool parameters", lambda c: c.json_schema(TOOL["parameters"])),
        ("tool_calls: 1 tool (named tool_choice)", lambda c: c.tool_calls([TOOL], parallel=False)),
        (
            "tool_calls: 2 tools, parallel (required)",
            lambda c: c.tool_calls([TOOL, SEARCH], parallel=True),
        ),
        (
            "json_schema: string maxLength 32 (bounded repetition)",
            lambda c: c.json_schema(
                {"type": "object", "properties": {"s": {"type": "string", "maxLength": 32}}}
            ),
        ),
    ]
    rows = []
    for what, make in cases[:limit]:
        compiler = compiler_factory()
        start = time.perf_counter()
        make(compiler)
        first = time.perf_counter() - start
        lookups = []
        for _ in range(20):
            start = time.perf_counter()
            make(compiler)
            lookups.append(time.perf_counter() - start)
        rows.append((what, first, statistics.median(lookups)))
    return rows


def decode_loop(
    model: Any,
    prompts: list[list[int]],
    steps: int,
    new_constraint: Callable[[], Any] | None,
    max_tokens: int,
) -> tuple[float, float]:
    """Seconds per step for ``steps`` greedy decode steps, and seconds in the constraint."""
    from qwen_gateway.qwen.tokenizer import ENDOFTEXT_ID, IM_END_ID

    eos = {IM_END_ID, ENDOFTEXT_ID}
    batch = len(prompts)
    slots = list(range(batch))
    constraints = [new_constraint() if new_constraint else None for _ in slots]
    produced = [0] * batch
    positions = [len(p) for p in prompts]
    in_constraint = 0.0
    with torch.inference_mode():
        logits = torch.stack([model.prefill(i, p) for i, p in enumerate(prompts)])
        start = time.perf_counter()
        for _ in range(steps):
            tokens: list[int] = []
            for i in slots:
                row = logits[i]
                c = constraints[i]
                if c is None:
                    tokens.append(int(torch.argmax(row)))
                    continue
                t0 = time.perf_counter()
                c.apply(row, max_tokens - produced[i])
                t1 = time.perf_counter()
                token = int(torch.argmax(row))
                t2 = time.perf_counter()
                c.accept(token)
                produced[i] += 1
                if c.done or token in eos or produced[i] >= max_tokens:
                    assert new_constraint is not None
                    constraints[i] = new_constraint()
                    produced[i] = 0
                in_constraint += (t1 - t0) + (time.perf_counter() - t2)
                tokens.append(token)
            logits = model.decode(slots, tokens, positions)
            positions = [p + 1 for p in positions]
        elapsed = time.perf_counter() - start
    return elapsed / steps, in_constraint / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: build the tiny one)")
    parser.add_argument("--steps", type=int, default=96)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per setting")
    parser.add_argument("--smoke", action="store_true", help="one tiny iteration, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batches, args.repeats = 4, [1], 1
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from qwen_gateway.engines.transformers.decoding.compiler import GrammarCompiler
    from qwen_gateway.engines.transformers.decoding.constraint import Constraint
    from qwen_gateway.engines.transformers.model import CacheShape, SlotModel
    from qwen_gateway.qwen.tokenizer import QwenTokenizer

    model_dir: Path = args.model
    if model_dir is None:
        from qwen_gateway.engines.transformers.tiny import build_tiny_model

        model_dir = build_tiny_model(Path(tempfile.mkdtemp(prefix="tiny-qwen2-")))
    tokenizer = QwenTokenizer.from_dir(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    vocab = int(hf.config.vocab_size)
    model = SlotModel(hf, CacheShape(slots=max(args.batches), max_len=args.steps + 64))

    start = time.perf_counter()
    compiler = GrammarCompiler(tokenizer, vocab)
    setup = time.perf_counter() - start
    compiles = compile_times(lambda: GrammarCompiler(tokenizer, vocab), 1 if args.smoke else None)

    grammars = {
        "json_object": compiler.json_schema(None),
        "tool_calls (2 tools, parallel)": compiler.tool_calls([TOOL, SEARCH], parallel=True),
        "json_schema (string maxLength 12)": compiler.json_schema(
            {
                "type": "object",
                "properties": {"s": {"type": "string", "maxLength": 12}},
                "required": ["s"],
            }
        ),
    }
    # Generous budget: the common path. Tight budget: every sequence ends in a forced close.
    budgets = {"max_tokens 4096": 4096, "max_tokens 48": 48}
    rows = []
    for batch in args.batches:
        prompts = [tokenizer.encode_text(f"Request {i}: answer in JSON.") for i in range(batch)]
        settings = [(g, b) for g in grammars for b in budgets]
        best: dict[tuple[str, str], tuple[float, float]] = {}
        base = float("inf")
        for _ in range(args.repeats):  # interleaved, so that load from elsewhere hits all alike
            base = min(base, decode_loop(model, prompts, args.steps, None, 0)[0])
            for gname, bname in settings:
                grammar, budget = grammars[gname], budgets[bname]
                result = decode_loop(
                    model, prompts, args.steps, lambda g=grammar, b=budget: Constraint(g, b), budget
                )
                best[gname, bname] = min(best.get((gname, bname), result), result)
        for gname, bname in settings:
            step, inside = best[gname, bname]
            rows.append((batch, gname, bname, base, step, inside))

    print(
        f"## Grammar-constrained decoding ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()})\n"
    )
    print(f"GrammarCompiler setup (vocabulary → xgrammar TokenizerInfo): {_ms(setup)} ms\n")
    print("| compile | first (ms) | cached (ms) |")
    print("|---|---:|---:|")
    for what, first, cached in compiles:
        print(f"| {what} | {_ms(first)} | {cached * 1e3:.3f} |")
    print()
    print(
        "| B | grammar | budget | unconstrained ms/step | constrained ms/step "
        "| end-to-end overhead | apply+accept µs/token | apply+accept / unconstrained step |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for batch, gname, bname, base, step, inside in rows:
        overhead = (step - base) / base * 100
        per_token = inside / batch * 1e6
        share = inside / base * 100
        print(
            f"| {batch} | {gname} | {bname} | {_ms(base)} | {_ms(step)} | {overhead:+.1f} % "
            f"| {per_token:.0f} | {share:.1f} % |"
        )


if __name__ == "__main__":
    main()
