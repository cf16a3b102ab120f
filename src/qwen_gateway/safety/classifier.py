"""The high-risk classifier: does a prompt or an answer ask for or give personal financial,
medical or legal advice?

Small and offline, like the intent classifier it shares its machinery with
(:mod:`~qwen_gateway.core.textclassifier`): character 1–4-gram and word 1–2-gram TF-IDF of
the text into a logistic regression over four classes, ``financial_advice``,
``medical_advice``, ``legal_advice`` and ``none``. scikit-learn trains it in about a second from
the bilingual examples shipped in ``safety/data`` (see PROVENANCE.md) plus an operator's own;
the model of the shipped examples ships too, so serving applies it in pure Python, well under a
millisecond for a text capped at :data:`MAX_CHARS`.

"Advice" means telling a person what to do about their own money, health or legal situation,
or answering as if one did; facts, definitions, news, history and code about those subjects are
``none``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen_gateway.config import ConfigError
from qwen_gateway.core import textclassifier
from qwen_gateway.core.textclassifier import Example, load_examples
from qwen_gateway.core.tfidf import TfidfLogistic

DATA = Path(__file__).resolve().parent / "data"
TRAINING = DATA / "risk_train.jsonl"
HELD_OUT = DATA / "risk_test.jsonl"
#: The model trained on ``risk_train.jsonl``; ``qwen-gateway safety ship`` rewrites it.
SHIPPED_MODEL = DATA / "risk_model.json.gz"
CATEGORIES = ("financial_advice", "medical_advice", "legal_advice")
NONE = "none"
VIEWS = ("char", "word")
#: Inverse regularisation of the regression, chosen by cross-validation on the training split.
C = 300.0
#: The longest text the safety stages classify (:meth:`RiskClassifier.category` and
#: :func:`risk_text` cut to it).
MAX_CHARS = 500
MODEL_FORMAT = "qwen-gateway-risk-1"


@dataclass(frozen=True, slots=True)
class RiskVerdict:
    """``category``: one of the model's categories (:data:`CATEGORIES` for the shipped one), or
    None (no high-risk category, or none above the threshold). ``confidence``: the probability
    of ``category``; for None, one minus the probability of the likeliest high-risk category."""

    category: str | None
    confidence: float


def risk_text(
    prompt: str | None = None, answer: str | None = None, max_chars: int = MAX_CHARS
) -> str:
    """The text to classify for a prompt, an answer or both, at most ``max_chars`` long: the
    end of the prompt (its last words are the question) and the beginning of the answer (what
    reaches the client first), half the room each when both are given."""
    prompt, answer = prompt or "", answer or ""
    if not answer or not prompt:
        return prompt[max(0, len(prompt) - max_chars) :] + answer[:max_chars]
    head = prompt[max(0, len(prompt) - max_chars // 2) :]
    return f"{head}\n{answer}"[:max_chars]


@dataclass(frozen=True)
class RiskClassifier:
    """The fitted model and the threshold under which no category is reported."""

    model: TfidfLogistic
    threshold: float = 0.5

    @classmethod
    def train(cls, examples: Sequence[Example], threshold: float = 0.5) -> RiskClassifier:
        """Fit on ``examples`` (needs scikit-learn: the ``train`` extra)."""
        if NONE not in {e.label for e in examples}:
            raise ValueError(f"the examples need some labelled {NONE!r}")
        try:
            model = textclassifier.fit(examples, VIEWS, c=C, what="the high-risk classifier")
        except textclassifier.TrainingUnavailable as exc:
            raise ConfigError(str(exc)) from None
        return cls(model, threshold)

    @property
    def classes(self) -> tuple[str, ...]:
        """Every class the model knows, :data:`NONE` among them."""
        return self.model.classes

    @property
    def categories(self) -> tuple[str, ...]:
        """The high-risk categories it can answer (the classes but :data:`NONE`), which safety
        policies map to actions."""
        return tuple(c for c in self.model.classes if c != NONE)

    def category(self, text: str) -> str | None:
        """The high-risk category of ``text``, or None (the safety stages' question, asked on
        the event loop): a text longer than :data:`MAX_CHARS` is read by its beginning and its
        end, half each, so that a call stays under a millisecond however long the answer."""
        if len(text) > MAX_CHARS:
            half = MAX_CHARS // 2
            text = f"{text[:half]}\n{text[len(text) - (MAX_CHARS - half - 1) :]}"
        return self.classify(text).category

    def scores(self, text: str) -> dict[str, float]:
        """The probability of each class."""
        return dict(zip(self.model.classes, self.model.probabilities(text), strict=True))

    def classify(self, text: str) -> RiskVerdict:
        classes = self.model.classes
        probabilities = self.model.probabilities(text)
        best = max(range(len(classes)), key=probabilities.__getitem__)
        if classes[best] != NONE and probabilities[best] >= self.threshold:
            return RiskVerdict(classes[best], probabilities[best])
        risky = [p for c, p in zip(classes, probabilities, strict=True) if c != NONE]
        return RiskVerdict(None, 1.0 - max(risky, default=0.0))

    # ---- files ----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "threshold": self.threshold, **self.model.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RiskClassifier:
        if data.get("format") != MODEL_FORMAT:
            raise ValueError(f"not a {MODEL_FORMAT} file")
        model = TfidfLogistic.from_json(data)
        if NONE not in model.classes:
            raise ValueError(f"no {NONE!r} class")
        return cls(model, float(data["threshold"]))

    def save(self, path: Path) -> None:
        """Write the model (an operator's retrained classifier) to ``path`` as JSON."""
        textclassifier.write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> RiskClassifier:
        """A model written by :meth:`save`. Raises ValueError for anything else."""
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{path} is not a high-risk model written by `qwen-gateway safety train` ({exc})"
            ) from None


# ---- the shipped model -------------------------------------------------------------


def ship(path: Path = SHIPPED_MODEL) -> RiskClassifier:
    """Train on the shipped examples and write the shipped model (for maintainers)."""
    classifier = RiskClassifier.train(load_examples(TRAINING))
    textclassifier.write_shipped(path, classifier.to_json(), TRAINING)
    return classifier


def shipped_classifier(path: Path = SHIPPED_MODEL) -> RiskClassifier | None:
    """The shipped model, or None when it is missing or was trained on other examples than
    the shipped ones (then a warning says to run ``qwen-gateway safety ship``)."""
    data = textclassifier.read_shipped(
        path, TRAINING, "high-risk classifier", "qwen-gateway safety ship"
    )
    return None if data is None else RiskClassifier.from_json(data)


_default: RiskClassifier | None = None
_default_lock = threading.Lock()


def default_classifier(threshold: float = 0.5) -> RiskClassifier:
    """The classifier of the shipped examples (loaded once per process; trained, which takes
    scikit-learn and about a second, only when the shipped model is out of date)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = shipped_classifier() or RiskClassifier.train(load_examples(TRAINING))
        if _default.threshold != threshold:
            _default = dataclasses.replace(_default, threshold=threshold)
        return _default


def load_classifier(
    model_file: Path | None = None, threshold: float | None = None
) -> RiskClassifier:
    """The model at ``model_file`` when there is one (``Settings.risk_model_file``), else the
    shipped one; with ``threshold`` (None: the one saved with the model, 0.5 for the shipped
    one). Raises ValueError for a file that is not a model."""
    if model_file is not None and model_file.is_file():
        saved = RiskClassifier.load(model_file)
        return saved if threshold is None else dataclasses.replace(saved, threshold=threshold)
    return default_classifier(0.5 if threshold is None else threshold)
