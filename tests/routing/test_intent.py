"""The offline intent classifier: accuracy on the held-out split that training never sees,
follow-up handling, and retraining from an operator's examples with the CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen_gateway.core.types import ChatMessage
from qwen_gateway.routing.intent import (
    DATA,
    Example,
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
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert json.loads((tmp_path / "data" / "intent-model.json").read_text())["classes"]


def _sklearn_pipeline(examples: list[Example]) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, min_df=1),
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True,
                        token_pattern=LearnedClassifier._TOKENS),
    )  # fmt: skip
    model = make_pipeline(features, LogisticRegression(C=100.0, max_iter=5000))
    model.fit([e.text for e in examples], [e.label for e in examples])
    return model


def test_a_saved_model_predicts_exactly_as_the_sklearn_pipeline(tmp_path: Path) -> None:
    train = load_examples(DATA / "intent_train.jsonl")
    texts = [e.text for e in load_examples(DATA / "intent_test.jsonl")]
    texts += ["", "a", "  Mixed   CASE\twhitespace ", "İstanbul ß ǅ", "x = 1;\n\nprint(x)"]
    # three classes (softmax) and two (one logistic column)
    for examples in (train, [e for e in train if e.label != "math"]):
        pipeline = _sklearn_pipeline(examples)
        LearnedClassifier().fit(examples).save(tmp_path / "m.json")
        loaded = LearnedClassifier.load(tmp_path / "m.json")
        assert loaded.categories == [str(c) for c in pipeline.classes_]
        ours = np.array([loaded.probabilities(t) for t in texts])
        np.testing.assert_allclose(ours, pipeline.predict_proba(texts), rtol=0, atol=1e-12)


def test_a_pickled_model_in_the_data_directory_is_never_loaded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    proof = tmp_path / "PICKLE_RCE_PROOF"
    (data / "intent-model.pkl").write_bytes(
        b"cposix\nsystem\n(V" + f"touch {proof}".encode() + b"\ntR."  # pickle of os.system(...)
    )
    out = subprocess.run(
        [sys.executable, "-m", "qwen_gateway.cli.main", "intent", "classify", "hello",
         "--data-dir", str(data)],
        capture_output=True, text=True, timeout=300, env={**os.environ},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert not proof.exists()
    assert "intent-model.pkl" in out.stderr and "never loaded" in out.stderr
    (data / "intent-model.json").write_bytes((data / "intent-model.pkl").read_bytes())
    with pytest.raises(ValueError, match="not an intent model"):
        LearnedClassifier.load(data / "intent-model.json")
    assert not proof.exists()
