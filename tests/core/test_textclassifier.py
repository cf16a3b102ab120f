"""What the intent and high-risk classifiers share: examples, the report, the model files, and
training's clear refusal without scikit-learn."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from qwen_gateway.core.textclassifier import (
    Example,
    evaluate,
    fit,
    load_examples,
    read_shipped,
    write_json,
    write_shipped,
)


@dataclass(frozen=True)
class _Verdict:
    category: str | None


class _ByWord:
    """Says ``a`` for texts with an "a" in them, no category otherwise."""

    def classify(self, text: str) -> _Verdict:
        return _Verdict("a" if "a" in text else None)


def test_the_report_counts_what_a_classifier_said() -> None:
    examples = [
        Example("a1", "a", "en"),
        Example("a2", "a", "zh", hard=True),
        Example("x", "a", "zh"),
        Example("b", "none", "en", hard=True),
        Example("ab", "none", "mixed"),
    ]
    report = evaluate(_ByWord(), examples)
    assert (report.total, report.correct) == (5, 3)
    assert report.per_class["a"] == {"precision": 2 / 3, "recall": 2 / 3, "support": 3.0}
    assert report.per_class["none"] == {"precision": 0.5, "recall": 0.5, "support": 2.0}
    assert report.per_language == {"en": 1.0, "zh": 0.5, "mixed": 0.0}
    assert (report.hard_accuracy, report.hard_total) == (1.0, 2)
    assert report.confusion == {"a": {"a": 2, "none": 1}, "none": {"none": 1, "a": 1}}
    assert "accuracy 60.0% (3/5)" in report.markdown("t")
    assert "| a | 2 | 1 |" in report.confusion_markdown()
    assert "| none | 1 | 1 |" in report.confusion_markdown()
    # no category counts as the label given for it
    renamed = evaluate(_ByWord(), examples, none_label="general")
    assert renamed.confusion["none"] == {"general": 1, "a": 1}
    assert renamed.per_class["general"] == {"precision": 0.0, "recall": 0.0, "support": 0.0}


def test_examples_are_read_with_the_line_of_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "t", "label": "l"}\n\n{"text": "u", "label": "m", "lang": "zh", '
                    '"hard": true}\n', encoding="utf-8")  # fmt: skip
    assert load_examples(good) == [Example("t", "l"), Example("u", "m", "zh", True)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "t", "label": "l"}\n{"text": "no label"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_examples(bad)


def test_a_shipped_model_records_its_training_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    training = tmp_path / "train.jsonl"
    training.write_text('{"text": "t", "label": "l"}\n', encoding="utf-8")
    write_shipped(tmp_path / "m.json.gz", {"classes": ["l"]}, training)
    first = (tmp_path / "m.json.gz").read_bytes()
    write_shipped(tmp_path / "m.json.gz", {"classes": ["l"]}, training)
    assert (tmp_path / "m.json.gz").read_bytes() == first  # reproducible bytes
    data = read_shipped(tmp_path / "m.json.gz", training, "thing", "ship it")
    assert data is not None and data["classes"] == ["l"]
    training.write_text('{"text": "t", "label": "other"}\n', encoding="utf-8")
    assert read_shipped(tmp_path / "m.json.gz", training, "thing", "ship it") is None
    assert "the thing is trained at start" in caplog.text and "`ship it`" in caplog.text
    assert read_shipped(tmp_path / "absent.gz", training, "thing", "ship it") is None


def test_a_model_file_is_written_whole_in_a_private_directory(tmp_path: Path) -> None:
    write_json(tmp_path / "d" / "m.json", {"text": "中文"})
    assert (tmp_path / "d" / "m.json").read_text(encoding="utf-8") == '{"text": "中文"}'
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["m.json"]


def test_training_without_scikit_learn_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['sklearn'] = None\n"
        "from qwen_gateway.core.textclassifier import Example, TrainingUnavailable, fit\n"
        "try:\n"
        "    fit([Example('a', 'x'), Example('b', 'y')], ('char',), what='the thing')\n"
        "except TrainingUnavailable as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ}, check=True)  # fmt: skip
    assert out.stdout.strip() == (
        "Training the thing needs scikit-learn: pip install 'qwen-gateway[train]'."
    )


def test_fit_learns_from_each_view() -> None:
    examples = [Example(f"def f{i}(): return {i}", "code") for i in range(4)]
    examples += [Example(f"a quiet walk by lake number {i}", "general") for i in range(4)]
    model = fit(examples, ("char", "word", "marker"), weights={"marker": 0.5, "cue": 9.0})
    assert [v.name for v in model.views] == ["char", "word", "marker"]
    assert model.classes == ("code", "general")
    code, general = model.probabilities("def g(): return 7")
    assert code > general
