"""The content filter's text layer measured in process: matcher build, scan per request, the
streaming filter per chunk, the held-back window, and the multi-pattern candidates.

* **patterns**: the shipped default lists plus synthetic keywords (seeded) up to ``--patterns``
  (10,000 by default), half Chinese (2 to 6 characters from the common range), half English
  (two or three words from a fixed vocabulary, 8 to 24 letters once the spaces are gone);
* **candidates** over the same normalised keywords and the same normalised 2 KB text, English
  and Chinese halves also apart: ``ahocorasick_rs`` (what the matcher uses; overlapping
  matches), pyahocorasick (when installed), and one big ``re`` alternation (longest first;
  non-overlapping matches only). Build time, resident memory added by the build (RSS delta,
  approximate) and scan time;
* **per request**: ``Matcher.scan`` of a 2 KB bilingual prompt (normalisation included), and the
  normalisation alone;
* **per chunk**: ``StreamFilter.feed`` over a 500-chunk answer cut into 1 to 8 character chunks
  (seeded), with the shipped lists only, with the 10,000 patterns, and with the 10,000 patterns
  plus a regex rule (``max_length`` 64); the held-back text (raw characters after each feed) and
  how many chunks later each character is delivered than it arrived.

Not a test: times depend on the machine. Usage:

    python benchmarks/safety_filter.py [--patterns 10000] [--repeat 200] [--out FILE]
    python benchmarks/safety_filter.py --smoke   # a seconds-long run; exits 1 on any error
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qwen_gateway.safety.matcher import Matcher, Rule
from qwen_gateway.safety.normalize import fold_text, normalise, normalise_pattern
from qwen_gateway.safety.rules import default_rule_file, load_rule_file
from qwen_gateway.safety.stream import Action, StreamFilter

WORDS = tuple(
    [
        "free",
        "cheap",
        "fast",
        "secret",
        "hidden",
        "instant",
        "private",
        "premium",
        "unlimited",
        "best",
        "real",
        "legal",
        "online",
        "download",
        "account",
        "bonus",
        "token",
        "wallet",
        "crypto",
        "license",
        "video",
        "stream",
        "server",
        "script",
        "bot",
        "market",
        "loan",
        "credit",
        "card",
        "cash",
        "money",
        "ticket",
        "deal",
        "offer",
        "code",
        "key",
        "pass",
        "login",
        "admin",
    ]
)
ZH_START, ZH_END = 0x4E00, 0x6000  # a slice of common CJK ideographs
PROMPT_EN = (
    "Could you explain how a streaming response works in an OpenAI-compatible API, what the "
    "server sends in each chunk, and how a client should handle the final usage frame? "
)
PROMPT_ZH = "请解释一下流式响应是如何工作的，服务器在每个数据块中发送什么内容，客户端应该如何处理。"


def synthetic_keywords(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    keywords: set[str] = set()
    while len(keywords) < count:
        if len(keywords) % 2:
            size = rng.randint(2, 6)
            keywords.add("".join(chr(rng.randrange(ZH_START, ZH_END)) for _ in range(size)))
        else:
            keywords.add(" ".join(rng.sample(WORDS, rng.randint(2, 3))))
    return sorted(keywords)


def prompt_text(size: int = 2048, parts: tuple[str, ...] = (PROMPT_EN, PROMPT_ZH)) -> str:
    text = ""
    while len(text) < size:
        text += "".join(parts)
    return text[:size]


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def timed(run: Callable[[], object], repeat: int) -> float:
    """Median seconds per call over ``repeat`` calls (after one warm-up call)."""
    run()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def build(factory: Callable[[], Any]) -> tuple[Any, float, int]:
    gc.collect()
    before = rss_kib()
    start = time.perf_counter()
    built = factory()
    seconds = time.perf_counter() - start
    gc.collect()
    return built, seconds, rss_kib() - before


def candidates(keywords: list[str], repeat: int) -> dict[str, dict[str, float]]:
    folded = sorted({normalise_pattern(k) for k in keywords})
    haystacks = {
        "mixed": fold_text(prompt_text()),
        "en": fold_text(prompt_text(parts=(PROMPT_EN,))),
        "zh": fold_text(prompt_text(parts=(PROMPT_ZH,))),
    }
    out: dict[str, dict[str, float]] = {}

    def scans(run: Callable[[str], object], count: int) -> dict[str, float]:
        return {
            f"scan_us_{name}": timed(lambda h=h: run(h), count) * 1e6
            for name, h in haystacks.items()
        }

    import ahocorasick_rs

    rs, seconds, kib = build(lambda: ahocorasick_rs.AhoCorasick(folded, store_patterns=False))
    out["ahocorasick_rs"] = {
        "build_ms": seconds * 1e3,
        "rss_kib": kib,
        **scans(lambda h: rs.find_matches_as_indexes(h, overlapping=True), repeat),
    }

    try:
        import ahocorasick  # pyahocorasick: measured when installed, not a dependency
    except ImportError:
        print("pyahocorasick not installed: skipped", file=sys.stderr)
    else:

        def pyahocorasick() -> Any:
            automaton = ahocorasick.Automaton()
            for word in folded:
                automaton.add_word(word, len(word))
            automaton.make_automaton()
            return automaton

        automaton, seconds, kib = build(pyahocorasick)
        out["pyahocorasick"] = {
            "build_ms": seconds * 1e3,
            "rss_kib": kib,
            **scans(lambda h: list(automaton.iter(h)), repeat),
        }

    alternation = "|".join(re.escape(w) for w in sorted(folded, key=len, reverse=True))
    pattern, seconds, kib = build(lambda: re.compile(alternation))
    out["re alternation"] = {
        "build_ms": seconds * 1e3,
        "rss_kib": kib,
        **scans(pattern.findall, max(3, repeat // 20)),
    }
    return out


def answer_chunks(total: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    text = prompt_text(total * 8)
    chunks, at = [], 0
    while len(chunks) < total:
        size = rng.randint(1, 8)
        chunks.append(text[at : at + size])
        at += size
    return chunks


def stream_run(matcher: Matcher, chunks: list[str], repeat: int) -> dict[str, float]:
    acts: dict[str, Action] = dict.fromkeys(matcher.categories, "block")
    feeds: list[float] = []
    held: list[int] = []
    delays: list[int] = []
    for round_ in range(repeat):
        stream = StreamFilter(matcher, acts)
        arrived: list[int] = []  # chunk index at which each character arrived
        delivered = 0
        for index, chunk in enumerate(chunks):
            start = time.perf_counter()
            verdict = stream.feed(chunk)
            feeds.append(time.perf_counter() - start)
            if round_ == 0:
                arrived.extend([index] * len(chunk))
                held.append(stream.held)
                for _ in verdict.deliver:
                    delays.append(index - arrived[delivered])
                    delivered += 1
        closing = stream.close()
        if round_ == 0:
            for _ in closing.deliver:
                delays.append(len(chunks) - arrived[delivered])
                delivered += 1
            if closing.blocked is not None or delivered != len(arrived):
                raise SystemExit("the benchmark answer was filtered: change the text")
    feeds.sort()
    delays.sort()
    return {
        "feed_us_median": statistics.median(feeds) * 1e6,
        "feed_us_mean": statistics.fmean(feeds) * 1e6,
        "feed_us_p99": feeds[int(len(feeds) * 0.99)] * 1e6,
        "held_chars_mean": statistics.fmean(held),
        "held_chars_max": max(held),
        "delay_chunks_mean": statistics.fmean(delays),
        "delay_chunks_p99": delays[int(len(delays) * 0.99)],
        "delay_chunks_max": delays[-1],
        "window": matcher.window,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patterns", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=500)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run")
    args = parser.parse_args()
    if args.smoke:
        args.patterns, args.repeat, args.chunks = 500, 3, 50

    shipped = load_rule_file(default_rule_file())
    shipped_keywords = [k for rule in shipped for k in rule.keywords]
    extra = synthetic_keywords(max(0, args.patterns - len(shipped_keywords)))
    keywords = shipped_keywords + extra
    rules = [*shipped, Rule("synthetic", "bench", keywords=tuple(extra))]
    text = prompt_text()

    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}",
        "patterns": len(keywords),
    }
    report["candidates"] = candidates(keywords, args.repeat)

    matcher, seconds, kib = build(lambda: Matcher(rules))
    report["matcher"] = {
        "build_ms": seconds * 1e3,
        "rss_kib": kib,
        "keywords": matcher.keyword_count,
        "window": matcher.window,
        "scan_2kb_us": timed(lambda: matcher.scan(text), args.repeat) * 1e6,
        "fold_2kb_us": timed(lambda: fold_text(text), args.repeat) * 1e6,
        "normalise_with_offsets_2kb_us": timed(lambda: normalise(text), args.repeat) * 1e6,
        "hits_in_prompt": len(matcher.scan(text)),
    }

    chunks = answer_chunks(args.chunks)
    regex = Rule("id", "bench", regex=r"\d{15,18}", max_length=64)
    rounds = max(1, args.repeat // 20)
    report["stream"] = {
        "shipped lists": stream_run(Matcher(shipped), chunks, rounds),
        f"{len(keywords)} keywords": stream_run(matcher, chunks, rounds),
        f"{len(keywords)} keywords + regex(64)": stream_run(
            Matcher([*rules, regex]), chunks, rounds
        ),
    }

    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
