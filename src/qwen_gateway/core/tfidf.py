"""A learned text classifier's fitted model (the intent classifier's, the high-risk
classifier's): what scikit-learn's TF-IDF vectorizers and logistic regression learned, kept
as plain data, saved as JSON and applied in pure Python (no pickle; neither scikit-learn nor
numpy is needed to classify).

The model has up to three *views* of a text, each a TF-IDF vectorizer of its own (sublinear
term frequency, L2-normalised per view, as scikit-learn's ``FeatureUnion`` of them does):

* ``char``: character 1–4-grams within word boundaries of the lowercased text (``char_wb``);
* ``word``: word 1–2-grams of the lowercased text, each CJK ideograph a word of its own;
* ``marker``: the shape of the text (:func:`markers`): code syntax (fences, backticks,
  brackets and semicolons at line ends, ``==``, ``->``, calls, snake_case, keywords) and maths
  notation (LaTeX commands, ∫∑√≤, powers, arithmetic between numbers, single-letter
  equations), which the n-grams see only as rare, unrelated fragments.

A prompt has a few hundred n-grams at most (the text is capped before it gets here), so the
sparse dot product is a dictionary lookup per n-gram: tens of microseconds, cheap enough to run
on the event loop.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# one CJK ideograph, or a run of word characters that are not CJK ideographs
TOKENS = r"[\u3400-\u9fff\uf900-\ufaff]|[^\W\u3400-\u9fff\uf900-\ufaff]+"
_TOKEN = re.compile(TOKENS)
_WHITESPACE = re.compile(r"\s\s+")

# ---- the marker view ------------------------------------------------------------------

#: (marker, pattern): each marker is counted once per match in the text as written (not
#: lowercased: camelCase and NULL are code, Σ and σ are maths either way).
MARKERS: tuple[tuple[str, str], ...] = (
    # code
    ("c:fence", r"```|~~~"),
    ("c:tick", r"`[^`\n]+`"),
    ("c:line_end", r"[{};:]\s*$"),
    ("c:brace", r"[{}]"),
    ("c:op", r"==|!=|=>|->|::|\+\+|--\w|&&|\|\||\+=|-=|<=>|:=|\*\*"),
    ("c:call", r"\b[A-Za-z_]\w*\.\w+\s*\(|\b[A-Za-z_]\w{2,}\((?!\s*[a-z]\s*\))"),
    ("c:empty_call", r"\w\(\)"),
    ("c:assign", r"\b[A-Za-z_]\w*\s*=\s*[\[{\"'(]"),
    ("c:snake", r"\b[a-z]+_[a-z_]+\b"),
    ("c:camel", r"\b[a-z]+[A-Z][A-Za-z]+\b|\b[A-Z][a-z]+[A-Z][A-Za-z]+\b"),
    ("c:indent", r"\n(?: {2,}|\t)\S"),
    (
        "c:keyword",
        r"\b(?:def|return|import|const|let|var|null|NULL|None|nil|true|false|void|"
        r"self|this|elif|lambda|async|await|println|printf|console|std|struct|"
        r"enum|fn|pub|impl|func|SELECT|FROM|WHERE)\b",
    ),
    (
        "c:path",
        r"\b\w+\.(?:py|js|ts|tsx|java|go|rs|cpp|c|h|rb|php|sh|yml|yaml|json|sql|"
        r"toml|md|html|css|vue)\b",
    ),
    ("c:error", r"\b[A-Z]\w*(?:Error|Exception)\b|Traceback|segfault|stack trace|报错|异常"),
    ("c:shell", r"(?:^|\s)--?[a-z][\w-]*|\$\w+|\|\s*\w+"),
    ("c:tag", r"</?[a-z][\w-]*>"),
    # maths
    (
        "m:latex",
        r"\\(?:frac|int|sum|prod|sqrt|lim|infty|pi|alpha|beta|theta|cdot|times|leq|geq|"
        r"neq|partial|mathbb|binom|log|ln|sin|cos|tan)\b",
    ),
    ("m:symbol", r"[∫∑∏√π∞≤≥≠±×÷∂∇∈∉∀∃≈≡∝°θαβλμσΣΔ]"),
    ("m:power", r"[\w)]\s*\^\s*[\w({-]|[²³⁴ⁿ]"),
    ("m:subscript", r"[₀-₉]|\b[a-z]_(?:\{?\w\}?)\b"),
    ("m:arith", r"\d\s*[-+*/×÷]\s*\d"),
    ("m:equation", r"(?<![\w.])[a-z]\s*(?:[<>]=?|=(?!=)|[≤≥])|(?<![=!<>])[=<>≤≥]\s*[a-z](?![\w(])"),
    ("m:function", r"\b[fgh]\s*\(\s*[a-z]\s*\)|\b(?:sin|cos|tan|log|ln|exp|lim)\b"),
    ("m:fraction", r"\b\d+/\d+\b"),
    ("m:factorial", r"\d!"),
    (
        "m:zh",
        r"方程|积分|微分|导数|极限|证明|概率|矩阵|求解|函数|数列|级数|不等式|定义域|值域|"
        r"面积|周长|行列式|特征值|期望|方差|化简|因式|根号|三角形|几何",
    ),
)
_MARKERS = tuple((name, re.compile(pattern, re.MULTILINE)) for name, pattern in MARKERS)


def markers(text: str) -> list[str]:
    """The marker tokens of ``text``, one per match (the ``marker`` view's analyzer)."""
    out: list[str] = []
    for name, pattern in _MARKERS:
        out += [name] * len(pattern.findall(text))
    return out


# ---- the other analyzers, as scikit-learn's -------------------------------------------


def char_grams(text: str) -> list[str]:
    """scikit-learn's ``char_wb`` analyzer, 1–4-grams, of lowercased text."""
    grams = []
    for w in _WHITESPACE.sub(" ", text).split():
        w = f" {w} "
        for n in range(1, 5):
            if len(w) <= n:  # the whole (short) word, once, and no longer n-grams
                grams.append(w)
                break
            grams += [w[i : i + n] for i in range(len(w) - n + 1)]
    return grams


def word_grams(text: str) -> list[str]:
    """scikit-learn's ``word`` analyzer with :data:`TOKENS`, 1–2-grams, of lowercased text."""
    tokens = _TOKEN.findall(text)
    return tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]


#: view name -> (analyzer, whether it reads the lowercased text)
ANALYZERS: dict[str, tuple[Callable[[str], list[str]], bool]] = {
    "char": (char_grams, True),
    "word": (word_grams, True),
    "marker": (markers, False),
}


# ---- the model --------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """One vectorizer's part of the model: its vocabulary (n-gram -> column) and, for each
    n-gram, its idf and each regression row's coefficient."""

    name: str
    vocabulary: dict[str, int]
    weights: dict[str, tuple[float, ...]]  # n-gram -> (idf, coefficient of each row)

    @classmethod
    def build(
        cls,
        name: str,
        vocabulary: Mapping[str, Any],
        idf: Sequence[Any],
        coef: Sequence[Sequence[Any]],
        offset: int,
        scale: float = 1.0,
    ) -> View:
        """The view whose columns are ``coef[:, offset : offset + len(idf)]``; ``scale`` is its
        weight in the union (folded into the coefficients)."""
        vocab = {str(k): int(v) for k, v in vocabulary.items()}
        if any(not 0 <= i < len(idf) for i in vocab.values()):
            raise ValueError(f"the {name} vocabulary does not fit its idf")
        weights = {
            g: (float(idf[i]), *(scale * float(row[offset + i]) for row in coef))
            for g, i in vocab.items()
        }
        return cls(name, vocab, weights)

    @property
    def size(self) -> int:
        return len(self.vocabulary)

    def column(self, field: int) -> list[float]:
        """Field ``field`` of every column's weights (0: idf, r + 1: row r), by column."""
        out = [0.0] * self.size
        for g, i in self.vocabulary.items():
            out[i] = self.weights[g][field]
        return out

    def add_scores(self, grams: Iterable[str], totals: list[float]) -> None:
        """Adds this view's L2-normalised sublinear TF-IDF vector times each row's
        coefficients to ``totals`` (C-level loops: this runs for every ``auto`` request)."""
        get = self.weights.get
        hits = [(w, n) for g, n in Counter(grams).items() if (w := get(g)) is not None]
        if not hits:
            return
        fields = list(zip(*(w for w, _ in hits), strict=True))  # idf, then each row
        tf = [1.0 if n == 1 else math.log(n) + 1.0 for _, n in hits]
        values = list(map(operator.mul, tf, fields[0]))
        norm = math.sqrt(sum(map(operator.mul, values, values)))
        for r in range(len(totals)):
            totals[r] += sum(map(operator.mul, values, fields[r + 1])) / norm


@dataclass(frozen=True)
class TfidfLogistic:
    """A fitted TF-IDF + logistic regression pipeline; ``probabilities`` computes what
    scikit-learn's ``predict_proba`` does (tested to agree)."""

    views: tuple[View, ...]
    intercept: tuple[float, ...]
    classes: tuple[str, ...]

    @classmethod
    def of(cls, pipeline: Any, names: Sequence[str]) -> TfidfLogistic:
        """From a fitted ``make_pipeline(make_union(*vectorizers), LogisticRegression)``
        whose vectorizers are the views ``names``, in order."""
        union, regression = pipeline.steps[0][1], pipeline.steps[-1][1]
        coef = regression.coef_.tolist()
        views, offset = [], 0
        scales = union.transformer_weights or {}
        for name, (key, vectorizer) in zip(names, union.transformer_list, strict=True):
            idf = vectorizer.idf_.tolist()
            scale = float(scales.get(key, 1.0))
            views.append(View.build(name, vectorizer.vocabulary_, idf, coef, offset, scale))
            offset += len(idf)
        return cls(
            tuple(views),
            tuple(float(x) for x in regression.intercept_),
            tuple(str(c) for c in regression.classes_),
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"views": [v.name for v in self.views]}
        for v in self.views:
            data[f"{v.name}_vocabulary"] = v.vocabulary
            data[f"{v.name}_idf"] = v.column(0)
        coef = [
            [x for v in self.views for x in v.column(r + 1)] for r in range(len(self.intercept))
        ]
        data.update(coef=coef, intercept=list(self.intercept), classes=list(self.classes))
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TfidfLogistic:
        names = [str(n) for n in data.get("views", ["char", "word"])]
        if not names or any(n not in ANALYZERS for n in names) or len(set(names)) != len(names):
            raise ValueError(f"unknown views {names}")
        classes = tuple(str(c) for c in data["classes"])
        intercept = tuple(float(x) for x in data["intercept"])
        coef = [list(row) for row in data["coef"]]
        features = sum(len(data[f"{n}_idf"]) for n in names)
        rows = 1 if len(classes) == 2 else len(classes)
        if (
            len(classes) < 2
            or len(intercept) != rows
            or len(coef) != rows
            or any(len(row) != features for row in coef)
        ):
            raise ValueError("the arrays do not fit together")
        views, offset = [], 0
        for n in names:
            views.append(View.build(n, dict(data[f"{n}_vocabulary"]), data[f"{n}_idf"], coef,
                                    offset))  # fmt: skip
            offset += len(data[f"{n}_idf"])
        return cls(tuple(views), intercept, classes)

    def probabilities(self, text: str) -> list[float]:
        """The probability of each of :attr:`classes`."""
        lowered = text.lower()
        totals = list(self.intercept)
        for view in self.views:
            analyzer, lowercase = ANALYZERS[view.name]
            view.add_scores(analyzer(lowered if lowercase else text), totals)
        if len(self.classes) == 2:  # one-vs-rest with one column, as scikit-learn does
            p = _sigmoid(totals[0])
            return [1.0 - p, p]
        top = max(totals)
        exps = [math.exp(s - top) for s in totals]
        total = sum(exps)
        return [e / total for e in exps]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
