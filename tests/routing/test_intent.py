"""The offline intent classifier: accuracy on the held-out split that training never sees,
follow-up handling, and retraining from an operator's examples with the CLI."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen_gateway.core.tfidf import markers
from qwen_gateway.core.types import ChatMessage
from qwen_gateway.routing.intent import (
    DATA,
    MARKER_WEIGHT,
    SHIPPED_MODEL,
    VIEWS,
    Example,
    LearnedClassifier,
    RuleClassifier,
    conversation_text,
    default_classifier,
    evaluate,
    load_examples,
    shipped_classifier,
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
    from sklearn.pipeline import FeatureUnion, make_pipeline

    features = FeatureUnion(
        [
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True)),
            ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True,
                                     token_pattern=LearnedClassifier._TOKENS)),
            ("marker", TfidfVectorizer(analyzer=markers, sublinear_tf=True)),
        ],
        transformer_weights={"marker": MARKER_WEIGHT},
    )  # fmt: skip
    model = make_pipeline(features, LogisticRegression(C=100.0, max_iter=5000))
    model.fit([e.text for e in examples], [e.label for e in examples])
    return model


TEXTS = ["", "a", "  Mixed   CASE\twhitespace ", "İstanbul ß ǅ", "x = 1;\n\nprint(x)",
         "```js\nfoo.bar(); if (a == b) {}\n```", "∫ x² dx = \\frac{x^3}{3}", "解方程 3x+1=7"]  # fmt: skip


def test_a_saved_model_predicts_exactly_as_the_sklearn_pipeline(tmp_path: Path) -> None:
    train = load_examples(DATA / "intent_train.jsonl")
    texts = [e.text for e in load_examples(DATA / "intent_test.jsonl")] + TEXTS
    # three classes (softmax) and two (one logistic column)
    for examples in (train, [e for e in train if e.label != "math"]):
        pipeline = _sklearn_pipeline(examples)
        LearnedClassifier().fit(examples).save(tmp_path / "m.json")
        loaded = LearnedClassifier.load(tmp_path / "m.json")
        assert loaded.categories == [str(c) for c in pipeline.classes_]
        ours = np.array([loaded.probabilities(t) for t in texts])
        np.testing.assert_allclose(ours, pipeline.predict_proba(texts), rtol=0, atol=1e-12)


def test_the_shipped_model_is_the_one_the_shipped_examples_train() -> None:
    shipped = shipped_classifier()
    assert shipped is not None, "the shipped model is out of date: run `qwen-gateway intent ship`"
    fresh = LearnedClassifier().fit(load_examples(DATA / "intent_train.jsonl"))
    texts = [e.text for e in load_examples(DATA / "intent_test.jsonl")] + TEXTS
    assert shipped.categories == fresh.categories and shipped.views == VIEWS
    ours = np.array([shipped.probabilities(t) for t in texts])
    np.testing.assert_allclose(ours, [fresh.probabilities(t) for t in texts], rtol=0, atol=1e-9)


def test_a_stale_or_missing_shipped_model_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert shipped_classifier(tmp_path / "missing.json.gz") is None
    stale = json.loads(gzip.decompress(SHIPPED_MODEL.read_bytes()))
    stale["trained_on"] = "0" * 64
    (tmp_path / "stale.json.gz").write_bytes(gzip.compress(json.dumps(stale).encode()))
    assert shipped_classifier(tmp_path / "stale.json.gz") is None
    assert "intent ship" in caplog.text


def test_a_model_of_the_earlier_format_still_loads(tmp_path: Path) -> None:
    train = load_examples(DATA / "intent_train.jsonl")
    two_views = LearnedClassifier(views=("char", "word")).fit(train)
    data = two_views.to_json()
    del data["views"]  # as earlier versions wrote it
    data["format"] = "qwen-gateway-intent-1"
    (tmp_path / "old.json").write_text(json.dumps(data), encoding="utf-8")
    old = LearnedClassifier.load(tmp_path / "old.json")
    assert old.views == ("char", "word")
    for text in TEXTS:
        assert old.probabilities(text) == pytest.approx(two_views.probabilities(text), abs=1e-12)
    data["views"] = ["char", "sentiment"]
    (tmp_path / "bad.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="not an intent model"):
        LearnedClassifier.load(tmp_path / "bad.json")


def test_classifying_needs_neither_scikit_learn_nor_numpy() -> None:
    code = (
        "import sys\n"
        "from qwen_gateway.routing.intent import default_classifier\n"
        "assert default_classifier().classify('def f(x): return x ** 2').category == 'code'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'numpy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ}, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```py\nprint(value)\n```", ["c:fence", "c:fence", "c:call"]),
        ("use `git stash`", ["c:tick"]),
        ("if (a == b) {", ["c:line_end", "c:brace", "c:op"]),
        ("items.sort() returns None", ["c:call", "c:empty_call", "c:keyword"]),
        ("user_name = getUserName()", ["c:call", "c:empty_call", "c:snake", "c:camel"]),
        ("∫ x² dx ≤ 1", ["m:symbol", "m:power", "m:symbol"]),
        ("\\frac{1}{2} + 3*4", ["m:latex", "m:arith"] + ["c:brace"] * 4),
        ("x <= 3 and y=2x+1", ["m:equation", "m:equation"]),
        ("solve x = 3, f(x) = sin x", ["m:equation", "m:function", "m:function"]),
        ("求解这个方程", ["m:zh", "m:zh"]),
        ("Write a haiku about the sea", []),
    ],
)
def test_markers_of_code_and_maths_notation(text: str, expected: list[str]) -> None:
    assert sorted(markers(text)) == sorted(expected)


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
