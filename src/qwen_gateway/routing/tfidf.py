"""The learned intent classifier's fitted model as plain arrays: what scikit-learn's TF-IDF and
logistic regression learned, saved as JSON and applied with numpy (no pickle, no scikit-learn
needed to classify)."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

# one CJK ideograph, or a run of word characters that are not CJK ideographs
TOKENS = r"[\u3400-\u9fff\uf900-\ufaff]|[^\W\u3400-\u9fff\uf900-\ufaff]+"


@dataclass(frozen=True)
class TfidfLogistic:
    """A fitted TF-IDF + logistic regression pipeline as arrays; ``probabilities`` computes
    what scikit-learn's ``predict_proba`` does (tested to agree)."""

    char_vocabulary: dict[str, int]
    char_idf: Any  # numpy arrays
    word_vocabulary: dict[str, int]
    word_idf: Any
    coef: Any  # (classes or 1, features)
    intercept: Any
    classes: tuple[str, ...]

    _WHITESPACE: ClassVar[re.Pattern[str]] = re.compile(r"\s\s+")
    _TOKEN: ClassVar[re.Pattern[str]] = re.compile(TOKENS)

    @classmethod
    def of(cls, pipeline: Any) -> TfidfLogistic:
        import numpy as np

        union, regression = pipeline.steps[0][1], pipeline.steps[-1][1]
        char, word = (t for _, t in union.transformer_list)
        return cls(
            {str(k): int(v) for k, v in char.vocabulary_.items()},
            np.asarray(char.idf_, dtype=np.float64),
            {str(k): int(v) for k, v in word.vocabulary_.items()},
            np.asarray(word.idf_, dtype=np.float64),
            np.asarray(regression.coef_, dtype=np.float64),
            np.asarray(regression.intercept_, dtype=np.float64),
            tuple(str(c) for c in regression.classes_),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "char_vocabulary": self.char_vocabulary, "char_idf": self.char_idf.tolist(),
            "word_vocabulary": self.word_vocabulary, "word_idf": self.word_idf.tolist(),
            "coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
            "classes": list(self.classes),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TfidfLogistic:
        import numpy as np

        def vocabulary(raw: Any) -> dict[str, int]:
            return {str(k): int(v) for k, v in dict(raw).items()}

        weights = cls(
            vocabulary(data["char_vocabulary"]),
            np.asarray(data["char_idf"], dtype=np.float64),
            vocabulary(data["word_vocabulary"]),
            np.asarray(data["word_idf"], dtype=np.float64),
            np.asarray(data["coef"], dtype=np.float64),
            np.asarray(data["intercept"], dtype=np.float64),
            tuple(str(c) for c in data["classes"]),
        )
        features = len(weights.char_idf) + len(weights.word_idf)
        rows = 1 if len(weights.classes) == 2 else len(weights.classes)
        if (
            len(weights.classes) < 2
            or weights.coef.shape != (rows, features)
            or weights.intercept.shape != (rows,)
            or any(not 0 <= i < len(weights.char_idf) for i in weights.char_vocabulary.values())
            or any(not 0 <= i < len(weights.word_idf) for i in weights.word_vocabulary.values())
        ):
            raise ValueError("the arrays do not fit together")
        return weights

    def _char_grams(self, text: str) -> list[str]:
        """scikit-learn's ``char_wb`` analyzer, 1–4-grams."""
        grams = []
        for w in self._WHITESPACE.sub(" ", text).split():
            w = f" {w} "
            for n in range(1, 5):
                if len(w) <= n:  # the whole (short) word, once, and no longer n-grams
                    grams.append(w)
                    break
                grams += [w[i : i + n] for i in range(len(w) - n + 1)]
        return grams

    def _word_grams(self, text: str) -> list[str]:
        """scikit-learn's ``word`` analyzer with our token pattern, 1–2-grams."""
        tokens = self._TOKEN.findall(text)
        return tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]

    @staticmethod
    def _tfidf(grams: list[str], vocabulary: Mapping[str, int], idf: Any) -> tuple[Any, Any]:
        """(indices, values) of the sublinear TF-IDF vector, L2-normalised."""
        import numpy as np

        counts = Counter(vocabulary[g] for g in grams if g in vocabulary)
        indices = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        values = (np.log(tf) + 1.0) * idf[indices]
        norm = float(np.sqrt(np.dot(values, values)))
        return indices, values / norm if norm > 0 else values

    def probabilities(self, text: str) -> Any:
        import numpy as np

        text = text.lower()
        ci, cv = self._tfidf(self._char_grams(text), self.char_vocabulary, self.char_idf)
        wi, wv = self._tfidf(self._word_grams(text), self.word_vocabulary, self.word_idf)
        indices = np.concatenate([ci, wi + len(self.char_idf)])
        scores = self.coef[:, indices] @ np.concatenate([cv, wv]) + self.intercept
        if len(self.classes) == 2:  # one-vs-rest with one column, as scikit-learn does
            p = 1.0 / (1.0 + np.exp(-scores[0]))
            return np.array([1.0 - p, p])
        scores = np.exp(scores - scores.max())
        return scores / scores.sum()
