"""The near-duplicate cache's lookup (``qwen_gateway.cache.similar``) measured offline.

On a labelled set of bilingual text pairs (default ``benchmarks/data/paraphrase_eval.jsonl``,
written for the project, see ``PARAPHRASE_PROVENANCE.md``), for each threshold:

* **hit rate**: the share of paraphrase pairs where, with ``a`` in the index, looking up ``b``
  returns ``a``'s key;
* **false-hit rate**: the same share for the non-paraphrases (near-misses: one number, word,
  negation, name or the order changed), i.e. how often a wrong answer would be served.

The same again for a second, smaller set (``paraphrase_holdout.jsonl``), written after the
guards were fixed.

Both are given overall, per language (en, zh, mixed), per kind of pair at the shipped threshold,
and once more with the guards switched off (the cosine of the vectors alone), to show what the
guards are for. Then the **lookup latency** with 1,000 and 10,000 entries in one scope (entries
made from the set's texts with a serial number appended, so that every one is distinct; queries
are the set's texts, half of them hits).

Not a test: the latencies depend on the machine. The wall-clock p99 includes the time the
process was preempted on a busy machine; the CPU time (``time.thread_time``) does not. Usage:

    python benchmarks/cache_similarity.py [--data FILE] [--lookups N] [--out FILE]
    python benchmarks/cache_similarity.py --smoke   # a seconds-long run; exits 1 on any error
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from qwen_gateway.cache.similar import (
    BUCKET_CAP,
    DEFAULT_THRESHOLD,
    SimilarIndex,
    read,
    similarity,
)

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "paraphrase_eval.jsonl"
#: a second, smaller set written after the guards were fixed (see PARAPHRASE_PROVENANCE.md)
HOLDOUT = HERE / "data" / "paraphrase_holdout.jsonl"
THRESHOLDS = (0.3, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
LANGS = ("en", "zh", "mixed")


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    paraphrase: bool
    lang: str
    kind: str


@dataclass(frozen=True)
class Scored:
    pair: Pair
    guarded: float  # the index's score: 0 when a guard differs
    cosine: float  # the vectors' cosine alone


def load(path: Path) -> list[Pair]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            pairs.append(Pair(row["a"], row["b"], row["paraphrase"], row["lang"], row["kind"]))
    return pairs


def score(pairs: list[Pair]) -> list[Scored]:
    out = []
    for pair in pairs:
        a, b = read(pair.a), read(pair.b)
        cosine = sum(v * b.vector.get(k, 0.0) for k, v in a.vector.items())
        out.append(Scored(pair, similarity(a, b), cosine))
    return out


def rates(scored: list[Scored], threshold: float, guarded: bool = True) -> tuple[float, float]:
    """(hit rate on paraphrases, false-hit rate on non-paraphrases) at ``threshold``."""

    def served(s: Scored) -> bool:
        return (s.guarded if guarded else s.cosine) >= threshold

    para = [served(s) for s in scored if s.pair.paraphrase]
    near = [served(s) for s in scored if not s.pair.paraphrase]
    return (sum(para) / max(1, len(para)), sum(near) / max(1, len(near)))


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def quality_tables(scored: list[Scored]) -> list[str]:
    by_lang = {lang: [s for s in scored if s.pair.lang == lang] for lang in LANGS}
    counts = ", ".join(
        f"{lang}: {sum(s.pair.paraphrase for s in rows)} paraphrases / "
        f"{sum(not s.pair.paraphrase for s in rows)} near-misses"
        for lang, rows in by_lang.items()
    )
    lines = [
        f"Pairs: {len(scored)} ({counts}).",
        "",
        "| threshold | hit rate (all) | false hits (all) | en hit / false | zh hit / false "
        "| mixed hit / false | without guards: hit / false |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in THRESHOLDS:
        hit, false = rates(scored, t)
        cells = [f"{pct(h)} / {pct(f)}" for h, f in (rates(by_lang[lang], t) for lang in LANGS)]
        bare_hit, bare_false = rates(scored, t, guarded=False)
        mark = " (shipped)" if t == DEFAULT_THRESHOLD else ""
        lines.append(
            f"| {t:.2f}{mark} | {pct(hit)} | {pct(false)} | {' | '.join(cells)} "
            f"| {pct(bare_hit)} / {pct(bare_false)} |"
        )
    kinds: dict[tuple[bool, str], list[Scored]] = defaultdict(list)
    for s in scored:
        kinds[(s.pair.paraphrase, s.pair.kind)].append(s)
    lines += [
        "",
        f"Per kind of pair at the shipped threshold {DEFAULT_THRESHOLD}:",
        "",
        "| pairs | kind | n | served |",
        "|---|---|---|---|",
    ]
    for (para, kind), rows in sorted(kinds.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        served = sum(s.guarded >= DEFAULT_THRESHOLD for s in rows)
        label = "paraphrase" if para else "near-miss"
        lines.append(f"| {label} | {kind} | {len(rows)} | {served} ({pct(served / len(rows))}) |")
    return lines


def latency(pairs: list[Pair], entries: int, lookups: int, crowded: bool = False) -> list[str]:
    """wall p50, wall p99, CPU p50, CPU p99 (ms) and the mean candidates compared of ``lookups``
    lookups in an index of
    ``entries`` entries of one scope. ``crowded``: every query's bucket is full (``BUCKET_CAP``
    texts with the query's words in other orders and punctuation), the worst case."""
    texts = [t for p in pairs for t in (p.a, p.b)]
    index = SimilarIndex(threshold=DEFAULT_THRESHOLD, max_entries=entries)
    for i in range(entries):
        base = texts[i % len(texts)]
        # the first len(texts) entries are the texts themselves (lookups of them hit)
        index.add("tenant", base if i < len(texts) else f"{base} {i}", f"k{i}")
    queries = [texts[i % len(texts)] if i % 2 else f"{texts[i % len(texts)]} x{i}" for i in
               range(lookups)]  # fmt: skip
    if crowded:
        words = ["how", "do", "i", "tune", "a", "classical", "guitar", "by", "ear"]
        for i in range(BUCKET_CAP):
            order = words[i % len(words) :] + words[: i % len(words)]
            index.add("tenant", " ".join(order) + "?" * (i // len(words)), f"c{i}")
        queries = [" ".join(words)] * lookups
    wall, cpu = [], []
    for q in queries:
        start, start_cpu = time.perf_counter(), time.thread_time()
        index.lookup("tenant", q)
        cpu.append((time.thread_time() - start_cpu) * 1000)
        wall.append((time.perf_counter() - start) * 1000)
    cells = []
    for times in (wall, cpu):
        times.sort()
        p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
        cells += [f"{statistics.median(times):.3f} ms", f"{p99:.3f} ms"]
    return [*cells, f"{index.candidates_compared / max(1, index.lookups):.2f}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--holdout", type=Path, default=HOLDOUT, help="a second set, or ''")
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run")
    args = parser.parse_args()
    pairs = load(args.data)
    holdout = load(args.holdout) if str(args.holdout) else []
    sizes = (1_000, 10_000)
    if args.smoke:
        pairs, holdout = pairs[::10], holdout[::10]
        sizes, args.lookups = (200,), 200
    lines = [f"### {args.data.name}", "", *quality_tables(score(pairs))]
    if holdout:
        lines += ["", f"### {args.holdout.name}", "", *quality_tables(score(holdout))]
    lines += [
        "",
        "### Lookup latency",
        "",
        f"Lookup latency ({platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, one thread, {args.lookups} lookups, half hits):",
        "",
        "| entries | wall p50 | wall p99 | CPU p50 | CPU p99 | candidates compared per lookup |",
        "|---|---|---|---|---|---|",
    ]
    for size in sizes:
        lines.append(f"| {size:,} | {' | '.join(latency(pairs, size, args.lookups))} |")
    worst = latency(pairs, sizes[-1], args.lookups, crowded=True)
    lines.append(f"| {sizes[-1]:,}, the query's bucket full (worst case) | {' | '.join(worst)} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
