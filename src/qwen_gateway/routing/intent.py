"""Offline intent classification (code / math / general) for Chinese, English and mixed text.

Two classifiers behind one small interface:

- ``RuleClassifier``: configurable keywords and regexes per category, in both languages;
- ``LearnedClassifier``: character n-gram TF-IDF (which needs no word segmentation, so Chinese,
  English and code-switched text are alike to it), word n-grams and markers of code and maths
  notation, into a logistic regression. scikit-learn trains it in seconds from the labelled
  prompts shipped with the package (``routing/data``, see PROVENANCE.md) or from an operator's
  own file; nothing is downloaded. The model of the shipped prompts ships too, so serving
  applies it in pure Python without training. Below a confidence threshold it answers the
  fallback category (general).

The text classified is the last user turn, with the turn before it when the last one reads like a
follow-up ("now in Go", "再证明一下").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from qwen_gateway.config import ConfigError
from qwen_gateway.core import textclassifier
from qwen_gateway.core.textclassifier import Example as Example  # shared with safety: still
from qwen_gateway.core.textclassifier import evaluate as evaluate  # importable from here
from qwen_gateway.core.textclassifier import load_examples as load_examples
from qwen_gateway.core.tfidf import TOKENS, TfidfLogistic
from qwen_gateway.core.types import ChatMessage

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent / "data"
FALLBACK = "general"
#: The views of the text the learned classifier reads (see core/tfidf.py).
VIEWS = ("char", "word", "marker")
#: The marker view's weight against the n-gram views (each L2-normalised to 1).
MARKER_WEIGHT = 0.25
#: The model trained on ``intent_train.jsonl``, shipped so that serving needs no training
#: (nor scikit-learn); ``qwen-gateway intent ship`` rewrites it after the examples change.
SHIPPED_MODEL = DATA / "intent_model.json.gz"


@dataclass(frozen=True, slots=True)
class Intent:
    category: str
    confidence: float
    classifier: str


class IntentClassifier(Protocol):
    name: str

    def classify(self, text: str) -> Intent: ...


# ---- what to classify ----------------------------------------------------------

_FOLLOW_UP = re.compile(
    r"^\s*(now|then|and|also|again|same|but|what about|how about|do it|in \w+\b|"
    r"再|那|然后|换成|改成|用\w{1,8}(写|实现)|继续|同样|还有)",
    re.IGNORECASE,
)


#: Texts up to this long are classified on the event loop (well under a millisecond); longer
#: ones (up to ``conversation_text``'s 2000 characters, a few ms) in a worker thread.
INLINE_CHARS = 1000


def conversation_text(messages: Sequence[ChatMessage], max_chars: int = 2000) -> str:
    """The last user turn, preceded by the one before when the last is a short follow-up."""
    users = [m.content for m in messages if m.role == "user" and isinstance(m.content, str)]
    if not users:
        return ""
    last = users[-1]
    if len(users) > 1 and (len(last) < 40 or _FOLLOW_UP.match(last)):
        last = users[-2][-max_chars // 2 :] + "\n" + last
    return last[-max_chars:]


# ---- rules ----------------------------------------------------------------------

DEFAULT_RULES: dict[str, list[str]] = {
    "code": [
        r"代码",
        r"编程",
        r"程序",
        r"函数",
        r"报错",
        r"调试",
        r"脚本",
        r"正则",
        r"数据库",
        r"\bpython\b",
        r"\bjava(script)?\b",
        r"\bgo(lang)?\b",
        r"\brust\b",
        r"\bc\+\+",
        r"\bsql\b",
        r"\bfunction\b",
        r"\bclass\b",
        r"\bbug\b",
        r"\berror\b",
        r"\bexception\b",
        r"\bregex\b",
        r"\bapi\b",
        r"\bcompile",
        r"\bdebug",
        r"\bscript\b",
        r"\bcode\b",
        r"\bimplement",
        r"\bdocker",
        r"\bgit\b",
        r"\bcron\b",
        r"\bjson\b",
        r"\byaml\b",
        r"\blatex\b",
        r"def \w+\(",
        r"\w+\(.*\)\s*[{;:]",
        r"```",
        r"=\w+\(",
    ],
    "math": [
        r"求解",
        r"方程",
        r"积分",
        r"微分",
        r"导数",
        r"证明",
        r"概率",
        r"极限",
        r"矩阵",
        r"几何",
        r"\bsolve\b",
        r"\bequation",
        r"\bintegra",
        r"\bderivative",
        r"\bprove\b",
        r"\bproof\b",
        r"\bprobability\b",
        r"\blimit\b",
        r"\bmatrix\b",
        r"\btheorem\b",
        r"\bcalculate\b",
        r"\d+\s*[-+*/^×÷]\s*\d+",
        r"[=<>≤≥]\s*\d",
        r"\bx\s*[\^²]",
    ],
}


class RuleClassifier:
    """Counts keyword and regex hits per category; the most hits wins, none means general."""

    name = "rules"

    def __init__(
        self, rules: Mapping[str, Iterable[str]] | None = None, fallback: str = FALLBACK
    ) -> None:
        self.fallback = fallback
        self._rules = {
            category: [re.compile(p, re.IGNORECASE) for p in patterns]
            for category, patterns in (rules if rules is not None else DEFAULT_RULES).items()
        }

    def classify(self, text: str) -> Intent:
        hits = {c: sum(1 for p in ps if p.search(text)) for c, ps in self._rules.items()}
        best = max(hits, key=lambda c: hits[c], default=self.fallback)
        total = sum(hits.values())
        if not total or hits[best] == 0:
            return Intent(self.fallback, 1.0, self.name)
        return Intent(best, hits[best] / total, self.name)


# ---- learned ----------------------------------------------------------------------


@dataclass
class LearnedClassifier:
    """TF-IDF views of the text (character 1–4-grams within word boundaries, word 1–2-grams,
    and the markers of code and maths notation, see :mod:`~qwen_gateway.core.tfidf`) into
    a logistic regression; below ``threshold`` the fallback category answers.

    For the word n-grams each Chinese character is a token of its own (Chinese has no spaces, so
    ``\\w+`` would make a whole clause one token); runs of other word characters are words. The
    bigrams then span Chinese character pairs and the seams of code-switched text ("用 python").

    scikit-learn trains it; what it learned (vocabularies, idf weights, coefficients) is kept as
    plain data, saved as JSON and applied in pure Python, so a saved model is data, never code,
    and classifying needs neither scikit-learn nor numpy.
    """

    _TOKENS: ClassVar[str] = TOKENS

    threshold: float = 0.45
    fallback: str = FALLBACK
    name: str = "learned"
    _model: TfidfLogistic | None = field(default=None, repr=False)
    views: tuple[str, ...] = VIEWS

    def fit(self, examples: Sequence[Example]) -> LearnedClassifier:
        try:
            self._model = textclassifier.fit(examples, self.views, weights={"marker": MARKER_WEIGHT},
                                             what="the intent classifier")  # fmt: skip
        except textclassifier.TrainingUnavailable as exc:
            raise ConfigError(str(exc)) from None
        return self

    @property
    def categories(self) -> list[str]:
        return list(self._fitted().classes)

    def probabilities(self, text: str) -> list[float]:
        """The probability of each of :attr:`categories` (as scikit-learn's predict_proba)."""
        return self._fitted().probabilities(text)

    def classify(self, text: str) -> Intent:
        weights = self._fitted()
        probabilities = weights.probabilities(text)
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        confidence = probabilities[best]
        if confidence < self.threshold:
            return Intent(self.fallback, confidence, self.name)
        return Intent(weights.classes[best], confidence, self.name)

    def _fitted(self) -> TfidfLogistic:
        if self._model is None:
            raise RuntimeError("LearnedClassifier.fit() was not called")
        return self._model

    def to_json(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "threshold": self.threshold, **self._fitted().to_json()}

    def save(self, path: Path) -> None:
        """Write the trained model (an operator's retrained classifier) to ``path`` as JSON."""
        textclassifier.write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> LearnedClassifier:
        """A model written by :meth:`save`. Raises ValueError for anything else."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{path} is not an intent model written by `qwen-gateway intent train` ({exc})"
            ) from None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LearnedClassifier:
        if data.get("format") not in MODEL_FORMATS:
            raise ValueError(f"not a {MODEL_FORMAT} file")
        model = TfidfLogistic.from_json(data)
        views = tuple(v.name for v in model.views)
        return cls(threshold=float(data["threshold"]), _model=model, views=views)


#: Format 2 names its views (format 1, from earlier versions, has the char and word ones).
MODEL_FORMAT = "qwen-gateway-intent-2"
MODEL_FORMATS = frozenset({"qwen-gateway-intent-1", MODEL_FORMAT})
LEGACY_MODEL_FILE = "intent-model.pkl"  # pickled models of earlier versions: never loaded


def load_saved(path: Path) -> LearnedClassifier | None:
    """The model saved at ``path``, or None when there is none. A pickled model of an earlier
    version beside it is never loaded (unpickling runs code): a warning says so."""
    legacy = path.with_name(LEGACY_MODEL_FILE)
    if legacy.exists():
        log.warning(
            "%s is a pickled intent model of an earlier version: it is ignored, never loaded; "
            "retrain with `qwen-gateway intent train` and delete it",
            legacy,
        )
    return LearnedClassifier.load(path) if path.is_file() else None


TRAINING = DATA / "intent_train.jsonl"


def ship(path: Path = SHIPPED_MODEL) -> LearnedClassifier:
    """Train on the shipped examples and write the shipped model (for maintainers)."""
    learned = LearnedClassifier().fit(load_examples(TRAINING))
    textclassifier.write_shipped(path, learned.to_json(), TRAINING)
    return learned


def shipped_classifier(path: Path = SHIPPED_MODEL) -> LearnedClassifier | None:
    """The shipped model, or None when it is missing or was trained on other examples than
    the shipped ones (then a warning says to run ``qwen-gateway intent ship``)."""
    data = textclassifier.read_shipped(
        path, TRAINING, "intent classifier", "qwen-gateway intent ship"
    )
    return None if data is None else LearnedClassifier.from_json(data)


_default: LearnedClassifier | None = None
_default_lock = threading.Lock()


def default_classifier(threshold: float = 0.45) -> LearnedClassifier:
    """The learned classifier of the shipped examples (loaded once per process; trained, which
    takes scikit-learn and a few seconds, only when the shipped model is out of date)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = shipped_classifier() or LearnedClassifier().fit(load_examples(TRAINING))
        if _default.threshold != threshold:
            _default = dataclasses.replace(_default, threshold=threshold)
        return _default
