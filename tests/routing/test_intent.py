"""The offline intent classifier: accuracy on the held-out split that training never sees,
follow-up handling, and retraining from an operator's examples with the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from qwen_gateway.core.types import ChatMessage
from qwen_gateway.routing.intent import (
    DATA,
    LearnedClassifier,
    RuleClassifier,
    conversation_text,
    default_classifier,
    evaluate,
    load_examples,
)


def test_the_splits_are_disjoint_and_balanced() -> None:
    train = load_examples(DATA / "intent_train.jsonl")
    test = load_examples(DATA / "intent_test.jsonl")
    assert len(train) + len(test) >= 600
    assert not {e.text for e in train} & {e.text for e in test}
    for split in (train, test):
        labels = {e.label for e in split}
        assert labels == {"code", "math", "general"}
        assert {e.lang for e in split} == {"en", "zh", "mixed"}
        assert 0.25 <= sum(e.hard for e in split) / len(split) <= 0.45


def test_the_learned_classifier_beats_the_rules_on_held_out_prompts() -> None:
    test = load_examples(DATA / "intent_test.jsonl")
    learned = evaluate(default_classifier(), test)
    rules = evaluate(RuleClassifier(), test)
    assert learned.accuracy >= 0.90
    assert learned.hard_total >= 60 and learned.hard_accuracy >= 0.90  # the boundary cases
    assert learned.accuracy > rules.accuracy
    for lang in ("en", "zh", "mixed"):
        assert learned.per_language[lang] >= 0.85, lang


def test_examples_of_each_kind() -> None:
    c = default_classifier()
    assert c.classify("用 Python 写一个函数计算两个日期之间的天数").category == "code"
    assert c.classify("Prove that the square root of 2 is irrational.").category == "math"
    assert c.classify("推荐几个适合周末去的杭州景点").category == "general"


def test_a_follow_up_is_read_with_the_turn_before() -> None:
    turns = (
        ChatMessage("user", "Write a function that reverses a linked list in Python"),
        ChatMessage("assistant", "def reverse(head): ..."),
        ChatMessage("user", "now in Go"),
    )
    text = conversation_text(turns)
    assert "linked list" in text and text.endswith("now in Go")
    assert default_classifier().classify(text).category == "code"
    alone = (ChatMessage("user", "What should I cook for dinner tonight with some leftover rice?"),)
    assert conversation_text(alone) == alone[0].content


def test_low_confidence_falls_back_to_general() -> None:
    strict = LearnedClassifier(threshold=0.99).fit(load_examples(DATA / "intent_train.jsonl"))
    assert strict.classify("hmm").category == "general"


def test_operators_retrain_with_one_command(tmp_path: Path) -> None:
    mine = tmp_path / "mine.jsonl"
    rows = [{"text": f"请帮我翻译第{i}段合同条款", "label": "legal"} for i in range(20)]
    rows += [{"text": f"把这份租赁合同第{i}条改写得更正式", "label": "legal"} for i in range(20)]
    mine.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "qwen_gateway.cli.main", "intent", "train", "--data", str(mine),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=300, env={**os.environ},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "| class | precision | recall | support |" in out.stdout
    assert "**learned**: accuracy" in out.stdout and "**rules**: accuracy" in out.stdout
    saved = LearnedClassifier.load(tmp_path / "data" / "intent-model.json")
    assert "legal" in saved.categories
    assert saved.classify("请把合同第三条改写得更正式一些").category == "legal"
