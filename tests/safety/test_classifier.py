"""The high-risk classifier: its data, its accuracy on the held-out split that training never
sees, the shipped model, and what it classifies (prompts and answers, both languages)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen_gateway.config import ConfigError, load_settings
from qwen_gateway.core.textclassifier import Example, evaluate, load_examples
from qwen_gateway.safety.classifier import (
    CATEGORIES,
    HELD_OUT,
    MAX_CHARS,
    NONE,
    SHIPPED_MODEL,
    TRAINING,
    RiskClassifier,
    RiskVerdict,
    default_classifier,
    load_classifier,
    risk_text,
    shipped_classifier,
)

LABELS = {*CATEGORIES, NONE}


def _normal(text: str) -> str:
    return re.sub(r"[\d\s]", "", text.lower())


def test_the_splits_are_disjoint_bilingual_and_large_enough() -> None:
    train, test = load_examples(TRAINING), load_examples(HELD_OUT)
    assert len(train) >= 400 and len(test) >= 150
    assert not {_normal(e.text) for e in train} & {_normal(e.text) for e in test}
    for split in (train, test):
        assert {e.label for e in split} == LABELS
        assert {e.lang for e in split} == {"en", "zh", "mixed"}
        for label in LABELS:  # every class in every language, plain and hard
            of = [e for e in split if e.label == label]
            assert {e.lang for e in of} == {"en", "zh", "mixed"}, label
            assert any(e.hard for e in of) and not all(e.hard for e in of), label


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("Should I move my whole savings into bitcoin this week?", "financial_advice"),
        ("我今年四十岁，存款该买基金还是存定期？", "financial_advice"),
        ("You should put 70% of your money in an index fund and keep the rest in cash.",
         "financial_advice"),
        ("建议你先把信用卡还清，再考虑买股票。", "financial_advice"),
        ("How many ibuprofen can I take for my toothache?", "medical_advice"),
        ("孩子发烧39度，能吃退烧药吗？吃多少？", "medical_advice"),
        ("Take two tablets every eight hours and stop if your stomach hurts.", "medical_advice"),
        ("你可以把降压药减到半片，不用每天吃。", "medical_advice"),
        ("My landlord kept my deposit. Should I sue him?", "legal_advice"),
        ("公司拖欠工资，我该去劳动仲裁吗？", "legal_advice"),
        ("Don't sign the settlement; ask the court for mediation instead.", "legal_advice"),
        ("建议你先报警，再拿着回执去法院起诉。", "legal_advice"),
        ("What is an index fund?", None),
        ("什么是市盈率？", None),
        ("How do I compute compound interest in Python?", None),
        ("How does the liver work?", None),
        ("汉谟拉比法典讲了什么？", None),
        ("Write a haiku about the sea.", None),
    ],
)  # fmt: skip
def test_the_shipped_model_knows_each_category_in_both_languages(
    text: str, category: str | None
) -> None:
    verdict = default_classifier().classify(text)
    assert verdict.category == category, verdict
    assert 0.5 <= verdict.confidence <= 1.0


def test_held_out_accuracy() -> None:
    test = load_examples(HELD_OUT)
    report = evaluate(default_classifier(), test)
    # measured 94.4 % overall (169/179), en 90.1 %, zh 97.0 %, mixed 100 %, hard 94.0 %
    assert report.accuracy >= 0.88
    assert report.hard_total >= 60 and report.hard_accuracy >= 0.85
    for lang in ("en", "zh", "mixed"):
        assert report.per_language[lang] >= 0.85, lang
    for category in CATEGORIES:  # measured recall 89.5–92.1 %, precision 94.4–100 %
        assert report.per_class[category]["recall"] >= 0.8, category
        assert report.per_class[category]["precision"] >= 0.85, category
    hard_negatives = [e for e in test if e.label == NONE and e.hard]
    assert len(hard_negatives) >= 40
    flagged = [e.text for e in hard_negatives if default_classifier().classify(e.text).category]
    assert len(flagged) <= 0.05 * len(hard_negatives), flagged  # measured: none flagged
    assert sum(report.confusion[c][c] for c in LABELS) == report.correct


def test_the_shipped_model_is_the_one_the_shipped_examples_train() -> None:
    shipped = shipped_classifier()
    assert shipped is not None, "the shipped model is out of date: run `qwen-gateway safety ship`"
    fresh = RiskClassifier.train(load_examples(TRAINING))
    texts = [e.text for e in load_examples(HELD_OUT)] + ["", "a", "  MiXed\tCASE  ", "好"]
    assert shipped.classes == fresh.classes and set(shipped.classes) == LABELS
    assert set(shipped.categories) == set(CATEGORIES)  # what policies may name
    ours = np.array([shipped.model.probabilities(t) for t in texts])
    np.testing.assert_allclose(ours, [fresh.model.probabilities(t) for t in texts], atol=1e-9)


def test_a_stale_or_missing_shipped_model_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert shipped_classifier(tmp_path / "missing.json.gz") is None
    stale = json.loads(gzip.decompress(SHIPPED_MODEL.read_bytes()))
    stale["trained_on"] = "0" * 64
    (tmp_path / "stale.json.gz").write_bytes(gzip.compress(json.dumps(stale).encode()))
    assert shipped_classifier(tmp_path / "stale.json.gz") is None
    assert "safety ship" in caplog.text


def test_below_the_threshold_there_is_no_category() -> None:
    text = "Should I sell my shares now?"
    verdict = default_classifier().classify(text)
    assert verdict.category == "financial_advice"
    strict = default_classifier(threshold=1.0).classify(text)
    assert strict == RiskVerdict(None, pytest.approx(1.0 - verdict.confidence))
    scores = default_classifier().scores(text)
    assert set(scores) == LABELS and sum(scores.values()) == pytest.approx(1.0)
    assert scores["financial_advice"] == pytest.approx(verdict.confidence)


def test_the_text_to_classify_is_capped() -> None:
    prompt, answer = "p" * 3000 + "?", "Take " + "a" * 3000
    assert risk_text(prompt) == prompt[-MAX_CHARS:]
    assert risk_text(answer=answer) == answer[:MAX_CHARS]
    both = risk_text(prompt, answer)
    assert len(both) == MAX_CHARS
    assert both.startswith("p") and f"?\nTake {'a' * 10}" in both
    assert risk_text("short", "answer") == "short\nanswer"
    assert risk_text() == "" and risk_text("x", max_chars=0) == ""


def test_a_long_text_is_read_by_its_beginning_and_its_end() -> None:
    classifier = default_classifier()
    filler = " The weather was mild and the trains ran on time." * 40
    assert len(filler) > 3 * MAX_CHARS
    advice = "Should I sell all my shares and buy gold with my savings?"
    assert classifier.category(advice + filler) == "financial_advice"
    assert classifier.category(filler + advice) == "financial_advice"
    assert classifier.category(filler[:500] + advice + filler) is None  # the middle is not read
    seen: list[str] = []

    class Spy(RiskClassifier):
        def classify(self, text: str) -> RiskVerdict:
            seen.append(text)
            return super().classify(text)

    Spy(classifier.model).category("x" * 10 + filler + "y" * 10)
    assert len(seen[0]) == MAX_CHARS and seen[0].startswith("x" * 10) and seen[0].endswith("y" * 10)


def test_a_retrained_model_is_loaded_from_its_file(tmp_path: Path) -> None:
    examples = [Example(f"Should I buy more gold coins, batch {i}?", "financial_advice")
                for i in range(5)] + [Example(f"Gold is element {i}.", NONE) for i in range(5)]  # fmt: skip
    RiskClassifier.train(examples, threshold=0.3).save(tmp_path / "risk-model.json")
    loaded = load_classifier(tmp_path / "risk-model.json", threshold=0.6)
    assert loaded.threshold == 0.6 and loaded.classes == ("financial_advice", NONE)
    assert loaded.categories == ("financial_advice",)
    assert loaded.category("Should I buy more gold coins?") == "financial_advice"
    assert loaded.category("Gold is an element.") is None
    assert load_classifier(tmp_path / "risk-model.json").threshold == 0.3  # as saved
    assert load_classifier(tmp_path / "absent.json") is default_classifier()
    (tmp_path / "bad.json").write_text('{"format": "qwen-gateway-intent-2"}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a high-risk model"):
        load_classifier(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="'none'"):
        RiskClassifier.train([Example("a", "legal_advice"), Example("b", "medical_advice")])


def test_settings_name_the_model_file_and_threshold(tmp_path: Path) -> None:
    assert load_settings({"data_dir": tmp_path}).risk_model_file == tmp_path / "risk-model.json"
    mine = tmp_path / "mine.json"
    settings = load_settings(
        {"data_dir": tmp_path, "safety": {"classifier": {"model_file": mine, "threshold": 0.7}}}
    )
    assert settings.risk_model_file == mine
    assert settings.safety is not None and settings.safety.classifier.threshold == 0.7
    with pytest.raises(ConfigError, match="threshold"):
        load_settings({"safety": {"classifier": {"threshold": 1.5}}})


def test_classifying_needs_neither_scikit_learn_nor_numpy() -> None:
    code = (
        "import sys\n"
        "from qwen_gateway.safety.classifier import default_classifier\n"
        "assert default_classifier().classify('我该不该卖掉股票？').category == 'financial_advice'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'numpy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ}, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"
