"""What the offline text classifiers (routing's intent classifier, safety's high-risk
classifier) share: labelled examples, training a :class:`~qwen_gateway.core.tfidf.TfidfLogistic`
with scikit-learn, writing and reading the model files, and the accuracy report.

Only training needs scikit-learn (the ``train`` extra); it is imported when :func:`fit` runs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qwen_gateway.core.tfidf import TOKENS, TfidfLogistic, markers

log = logging.getLogger(__name__)


class TrainingUnavailable(ImportError):
    """Training was asked for but scikit-learn is not installed."""


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    label: str
    lang: str = "en"
    hard: bool = False


def load_examples(path: Path) -> list[Example]:
    """Labelled texts, one JSON object a line: text, label, optional lang and hard."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(Example(str(row["text"]), str(row["label"]), str(row.get("lang", "en")),
                               bool(row.get("hard", False))))  # fmt: skip
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: not a labelled example ({exc})") from None
    return out


# ---- training ---------------------------------------------------------------------


def fit(
    examples: Sequence[Example],
    views: Sequence[str],
    *,
    weights: Mapping[str, float] | None = None,
    c: float = 100.0,
    what: str = "a classifier",
) -> TfidfLogistic:
    """Fit TF-IDF views of the texts (see :mod:`~qwen_gateway.core.tfidf`) into a logistic
    regression with inverse regularisation ``c``; ``weights`` scales views in the union.
    Raises :class:`TrainingUnavailable` (naming ``what``) without scikit-learn."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, make_pipeline
    except ImportError:
        raise TrainingUnavailable(
            f"Training {what} needs scikit-learn: pip install 'qwen-gateway[train]'."
        ) from None

    vectorizers = {
        "char": lambda: TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4),
                                        sublinear_tf=True, min_df=1, lowercase=True),
        "word": lambda: TfidfVectorizer(analyzer="word", ngram_range=(1, 2),
                                        sublinear_tf=True, token_pattern=TOKENS,
                                        lowercase=True),
        "marker": lambda: TfidfVectorizer(analyzer=markers, sublinear_tf=True),
    }  # fmt: skip
    scales = {v: w for v, w in (weights or {}).items() if v in views} or None
    features = FeatureUnion([(v, vectorizers[v]()) for v in views], transformer_weights=scales)
    model = make_pipeline(features, LogisticRegression(C=c, max_iter=5000))
    model.fit([e.text for e in examples], [e.label for e in examples])
    return TfidfLogistic.of(model, views)


# ---- model files ------------------------------------------------------------------


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (an operator's retrained model); the directory is
    created readable by its owner only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def fingerprint(path: Path) -> str:
    """The SHA-256 of a training file, recorded in the model shipped with the package."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_shipped(path: Path, data: Mapping[str, Any], training: Path) -> None:
    """Write a shipped model: gzip-compressed JSON (reproducible bytes) that records the
    fingerprint of the training file it came from."""
    raw = json.dumps({**data, "trained_on": fingerprint(training)}, ensure_ascii=False,
                     separators=(",", ":")).encode()  # fmt: skip
    path.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))


def read_shipped(path: Path, training: Path, what: str, command: str) -> dict[str, Any] | None:
    """The shipped model's JSON, or None when it is missing or was trained on another file
    than ``training`` (a warning names ``what`` is affected and the ``command`` to run)."""
    try:
        data: dict[str, Any] = json.loads(gzip.decompress(path.read_bytes()))
    except FileNotFoundError:
        log.warning("%s is missing: the %s is trained at start", path.name, what)
        return None
    if data.get("trained_on") != fingerprint(training):
        log.warning(
            "%s was trained on other examples than %s: the %s is trained at start instead; "
            "run `%s` to rewrite it",
            path.name,
            training.name,
            what,
            command,
        )
        return None
    return data


# ---- evaluation -------------------------------------------------------------------


class _Verdict(Protocol):
    @property
    def category(self) -> str | None: ...


class Classifier(Protocol):
    def classify(self, text: str) -> _Verdict: ...


@dataclass
class Report:
    total: int
    correct: int
    per_class: dict[str, dict[str, float]]  # precision, recall, support
    per_language: dict[str, float]
    hard_accuracy: float
    hard_total: int
    #: true label -> predicted label -> count
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def markdown(self, title: str) -> str:
        lines = [
            f"**{title}**: accuracy {100 * self.accuracy:.1f}% ({self.correct}/{self.total}); "
            f"hard cases {100 * self.hard_accuracy:.1f}% (of {self.hard_total})",
            "",
            "| class | precision | recall | support |",
            "|---|---:|---:|---:|",
        ]
        for c, m in sorted(self.per_class.items()):
            lines.append(
                f"| {c} | {100 * m['precision']:.1f}% | {100 * m['recall']:.1f}% | "
                f"{int(m['support'])} |"
            )
        langs = ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(self.per_language.items()))
        lines += ["", f"Accuracy by language: {langs}."]
        return "\n".join(lines)

    def confusion_markdown(self) -> str:
        """The confusion matrix: a row per true label, a column per predicted one."""
        labels = sorted(self.per_class)
        lines = [
            "| true \\ predicted | " + " | ".join(labels) + " |",
            "|---|" + "---:|" * len(labels),
        ]
        for t in labels:
            row = self.confusion.get(t, {})
            lines.append(f"| {t} | " + " | ".join(str(row.get(p, 0)) for p in labels) + " |")
        return "\n".join(lines)


def evaluate(
    classifier: Classifier, examples: Sequence[Example], none_label: str = "none"
) -> Report:
    """How ``classifier`` labels ``examples``; a verdict of no category counts as
    ``none_label``."""
    predicted = [classifier.classify(e.text).category or none_label for e in examples]
    pairs = list(zip(examples, predicted, strict=True))
    labels = sorted({e.label for e in examples} | set(predicted))
    per_class = {}
    for c in labels:
        tp = sum(1 for e, p in pairs if p == c and e.label == c)
        said = sum(1 for p in predicted if p == c)
        support = sum(1 for e in examples if e.label == c)
        per_class[c] = {
            "precision": tp / said if said else 0.0,
            "recall": tp / support if support else 0.0,
            "support": float(support),
        }
    by_lang: Counter[str] = Counter()
    right_lang: Counter[str] = Counter()
    confusion: dict[str, dict[str, int]] = {}
    for e, p in pairs:
        by_lang[e.lang] += 1
        right_lang[e.lang] += p == e.label
        row = confusion.setdefault(e.label, {})
        row[p] = row.get(p, 0) + 1
    hard = [(e, p) for e, p in pairs if e.hard]
    return Report(
        total=len(examples),
        correct=sum(1 for e, p in pairs if p == e.label),
        per_class=per_class,
        per_language={k: right_lang[k] / n for k, n in by_lang.items()},
        hard_accuracy=sum(1 for e, p in hard if p == e.label) / len(hard) if hard else 0.0,
        hard_total=len(hard),
        confusion=confusion,
    )
