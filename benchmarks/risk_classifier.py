"""The high-risk classifier (financial / medical / legal advice): accuracy on the held-out split
and the time one ``classify()`` call takes, in process.

* **accuracy**: the shipped model (or ``--model FILE``, one written by ``qwen-gateway safety
  train``) on every text of the held-out split (``safety/data/risk_test.jsonl``, or ``--data``):
  overall, per category (precision and recall), per language, on the hard cases, on the hard
  negatives (texts about money, health or law that are not advice) and the confusion matrix;
* **latency**: single ``classify()`` calls, p50 and p99, on the held-out texts as they are
  (short prompts and answers) and on texts as long as ``risk_text`` lets through (a prompt and
  an answer cut to ``MAX_CHARS`` characters), after a warm-up.

Not a test: the latencies depend on the machine. Usage:

    python benchmarks/risk_classifier.py [--rounds 20] [--threshold 0.5] [--model FILE]
        [--data FILE] [--out FILE]
    python benchmarks/risk_classifier.py --smoke   # one tiny iteration; exits 1 on any error
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from qwen_gateway.core.textclassifier import evaluate, load_examples
from qwen_gateway.safety.classifier import (
    HELD_OUT,
    MAX_CHARS,
    NONE,
    RiskClassifier,
    load_classifier,
    risk_text,
)


def latencies(classifier: RiskClassifier, texts: list[str], rounds: int) -> tuple[float, float]:
    """p50 and p99 of one ``classify()`` call over ``rounds`` passes of ``texts``, in ms."""
    for text in texts[:50]:  # warm-up
        classifier.classify(text)
    samples = []
    for _ in range(rounds):
        for text in texts:
            start = time.perf_counter_ns()
            classifier.classify(text)
            samples.append((time.perf_counter_ns() - start) / 1e6)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.99 * len(samples)))]


def long_texts(texts: list[str]) -> list[str]:
    """Held-out texts run together into prompts and answers as long as ``risk_text`` keeps."""
    repeat = 1 + 2 * MAX_CHARS // max(1, sum(len(t) + 1 for t in texts))
    out = []
    for i in range(len(texts)):
        turned = (texts[i:] + texts[:i]) * repeat
        out.append(risk_text(" ".join(turned), " ".join(reversed(turned))))
    assert all(len(t) == MAX_CHARS for t in out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="passes over the texts")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--model", type=Path, help="a model written by `safety train`")
    parser.add_argument("--data", type=Path, default=HELD_OUT, help="labelled JSONL")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--smoke", action="store_true", help="one tiny iteration")
    args = parser.parse_args()

    examples = load_examples(args.data)
    if args.smoke:
        examples, args.rounds = examples[::20], 1
    classifier = load_classifier(args.model, args.threshold)
    report = evaluate(classifier, examples)
    texts = [e.text for e in examples]
    short = latencies(classifier, texts, args.rounds)
    long = latencies(classifier, long_texts(texts), max(1, args.rounds // 4))
    negatives = [e for e in examples if e.label == NONE and e.hard]
    kept = sum(classifier.classify(e.text).category is None for e in negatives)

    lines = [
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {args.data.name}: {len(examples)} texts; "
        f"model: {args.model or 'shipped'}, threshold {args.threshold}.",
        "",
        report.markdown("high-risk classifier"),
        "",
        f"Hard negatives (about money, health or law, not advice) left unflagged: "
        f"{kept}/{len(negatives)}.",
        "",
        report.confusion_markdown(),
        "",
        "| texts | calls | p50 | p99 |",
        "|---|---:|---:|---:|",
        f"| held-out texts as written | {len(texts) * args.rounds} | {short[0]:.3f} ms | "
        f"{short[1]:.3f} ms |",
        f"| prompt + answer cut to {MAX_CHARS} characters | "
        f"{len(texts) * max(1, args.rounds // 4)} | {long[0]:.3f} ms | {long[1]:.3f} ms |",
        "",
    ]
    text = "\n".join(lines)
    sys.stdout.write(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
