"""Near-duplicate lookup for the response cache: which cached request reads the same as this one.

A request whose last user message is near-identical to a cached one (different case, spacing,
punctuation, full-width characters, a polite filler such as "please" or 请问, a contraction,
words in another order) may be answered from the cache. Two texts are compared in two steps:

1. **Guards, exact.** Each text is reduced to a *signature*; two texts can only match when their
   signatures are equal. The signature holds

   * the *numbers and the operators next to them*, in order ("2+2" vs "2+3", "2+2" vs "2*2",
     "年利率5%" vs "年利率6%" never match; Chinese numerals count as numbers: "三天" vs "五天");
   * the *number of negations* (not, no, never, without, n't; 不, 没, 无, 非, 未, 别, 勿, 莫),
     so "is X safe" and "is X not safe" never match ("是不是", "能不能"-style questions are not
     negations);
   * the *set of content words*: every word that is not a function word or a filler, after
     light stemming and a small table of synonyms; Chinese characters count one by one. A changed
     name ("France" vs "Germany", 北京 vs 上海), an antonym ("ascending" vs "descending"), an
     added or dropped qualifier, or a pronoun ("my" vs "your") changes it;
   * the *direction of relating words* (to, from, into, than; 比, 从, 到, 成, 向): the content
     words either side of each, so "Celsius to Fahrenheit" vs "Fahrenheit to Celsius" and
     "Python比Java快" vs "Java比Python快" never match.

   The signature is also the index: entries are bucketed by (scope, signature), so a lookup
   compares the query with the few entries of one bucket, never with the whole index.
2. **Similarity, thresholded.** Within the bucket, the best entry by cosine similarity of a
   vector computed offline without a model (character trigrams of each word, Chinese characters,
   and pairs of consecutive content words or characters, which see order) is returned if it
   reaches ``threshold``. The
   guards decide *what* is said; the similarity, weighted towards pairs of consecutive content
   words, rejects the same words in a different order ("dog bites man" vs "man bites dog").
   That is the weakest guard: a subject/object swap around a verb scores close to a paraphrase
   that moves a phrase ("在Excel里怎么冻结首行" vs "怎么在Excel里冻结首行"); the shipped threshold
   sits just above the swaps measured.

The price of exact guards is recall: a genuine rewording with other words ("How do I reverse a
string?" vs "What's the way to flip a string backwards?") is not found. That is the intended
trade: a false hit serves a wrong answer, a miss only costs a model call. ``docs/benchmarks.md``
(section "Near-duplicate cache") gives both rates on the project's bilingual evaluation set.

The index never crosses scopes: ``lookup(scope, ...)`` sees only entries added with the same
scope (the caller passes the tenant). It is bounded by ``max_entries`` (least recently used out).
It must never be asked about requests with tools or tool calls: the caller enforces that, as it
enforces determinism; this index only compares texts. No text is logged.

Traditional and simplified Chinese are not unified here (a traditional query misses a simplified
entry).
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from array import array
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Protocol

from qwen_gateway.config import ConfigError

#: the threshold shipped as the default: above the highest-scoring near-miss of both evaluation
#: sets in ``benchmarks/data`` (a subject/object swap), see docs/benchmarks.md
DEFAULT_THRESHOLD = 0.75
#: the most entries one (scope, signature) bucket keeps, so that a lookup compares at most this
#: many: texts of one bucket are near-duplicates of each other, a full bucket drops its least
#: recently used
BUCKET_CAP = 32

# --- normalisation -------------------------------------------------------------------------

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_IS_CJK = re.compile(f"[{_CJK}]")
_CONTRACTIONS = (
    (re.compile(r"\bcan'?t\b|\bcannot\b"), "can not"),
    (re.compile(r"\bwon'?t\b"), "will not"),
    (re.compile(r"\bshan'?t\b"), "shall not"),
    (re.compile(r"\bain'?t\b"), "is not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'m\b"), " am"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"\b(what|where|who|how|when|why|it|that|there|here)'s\b"), r"\1 is"),
)
#: polite openings and fillers, removed before anything is compared
_FILLERS = re.compile(
    r"\b(?:(?:can|could|would|will) you(?: please)?(?: (?:tell|show|explain to) me)?"
    r"|(?:do|does) (?:any ?one|you) know|i (?:want|would like|wish|need) to know"
    r"|i (?:am|was) wondering|i wonder|tell me|please|pls|plz|kindly|hey|hi|hello"
    r"|thanks?(?: you)?(?: in advance)?|quick question|just)\b"
    r"|请问一下|请问|请你|麻烦你|麻烦|帮我|帮忙|你好|您好|谢谢|我想知道|我想问|告诉我|能不能|可不可以|能否|可以|一下"
)
#: Chinese idioms that contain a numeral or a negation character but mean neither
_NOT_NUMERAL = re.compile(r"一些|一点|一起|一样|一般|一直|一定|一切|统一|唯一|万一|一旦|同一")
_NOT_NEGATION = re.compile(
    r"(.)不\1|(.)没\2|是否|不过|不错|不仅|不管|不少|不同|无论|并非|非常|莫非|除非|未来|别人|别的|区别|类别|差别|分别|特别|性别|级别|识别|告别"
)
_CN_DIGITS = {
    "零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4,
    "五": 5, "六": 6, "七": 7, "八": 8, "九": 9,
}  # fmt: skip
_CN_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10_000, "亿": 100_000_000}
_CN_NUMBER = re.compile("[零〇一二两三四五六七八九十百千万亿]+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_OPERATOR = re.compile(r"[+\-*/×÷=<>^%‰$€¥£]")
_EN_NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot"}
)
_ZH_NEGATIONS = re.compile("[不没無无非未别勿莫]")

#: the weight of a pair of consecutive content words (the feature that sees order)
_BIGRAM = 1.5
#: function words that carry no content of their own; of the pronouns only the asker's own (a
#: question about "my password" is one about "the password"); other pronouns, tense, modality,
#: direction and the question words other than "what" are content and stay out of this list
_STOPWORDS = frozenset({
    "a", "an", "the", "do", "does", "is", "are", "am", "be", "been", "being", "to", "of", "in",
    "on", "at", "for", "with", "about", "some", "any", "so", "and", "or", "that", "this",
    "these", "those", "it", "its", "there", "here", "me", "i", "my", "what", "explain",
    "between",
})  # fmt: skip
#: one canonical word for each small group of interchangeable words
_SYNONYMS = {
    "could": "can", "able": "can", "should": "should", "ought": "should",
    "whats": "what", "which": "what", "howto": "how",
    "big": "large", "huge": "large", "small": "little", "tiny": "little",
    "fix": "repair", "begin": "start", "commence": "start", "finish": "end",
    "buy": "purchase", "get": "obtain", "receive": "obtain", "quick": "fast",
    "quickly": "fast", "quickest": "fastest", "biggest": "largest", "rapid": "fast",
    "simple": "easy", "car": "automobile",
    "auto": "automobile", "movie": "film", "shop": "store", "photo": "picture",
    "pic": "picture", "image": "picture", "kid": "child", "children": "child",
    "kids": "child", "people": "person", "persons": "person", "mistake": "error",
    "bug": "error", "correct": "right", "explain": "describe", "describe": "describe",
    "meaning": "mean", "means": "mean", "definition": "mean", "define": "mean",
    "difference": "differ", "differences": "differ", "different": "differ",
    "vs": "versus", "versus": "versus", "&": "and",
}  # fmt: skip
#: the same for Chinese, replaced in the text before characters are taken one by one
_ZH_SYNONYMS = (
    (re.compile("怎么样|怎样|如何|怎么"), "怎么"),
    (re.compile("为啥|为什么"), "为什么"),
    (re.compile("啥|什么"), "什么"),
    (re.compile("计算机"), "电脑"),
    (re.compile("手机号码"), "手机号"),
    (re.compile("区别|差别|差异|不同之处"), "区别"),
    (re.compile("办法|方法"), "方法"),
    (re.compile("推荐一些|推荐几"), "推荐"),
)
#: Chinese characters that carry no content of their own (particles, copula, filler)
_ZH_STOP = frozenset("的了吗呢吧啊呀嘛哦么呐是有地得个下请问在要想")
#: words that relate the word before them to the word after them, in one direction
_RELATIONS = frozenset({"to", "from", "into", "than", "versus", "比", "从", "到", "成", "向"})
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+|[+\-*/×÷=<>^%‰$€¥£&#@]", re.UNICODE)


def normalise(text: str) -> str:
    """NFKC (full-width → half-width), case-folded, contractions expanded, fillers removed,
    punctuation folded into single spaces."""
    out = unicodedata.normalize("NFKC", text).casefold().replace("’", "'").replace("‘", "'")
    for pattern, repl in _CONTRACTIONS:
        out = pattern.sub(repl, out)
    out = _FILLERS.sub(" ", out)
    kept = []
    for ch in out:
        category = unicodedata.category(ch)
        if (category[0] == "P" and ch != "-") or category[0] in "CZ":
            kept.append(" ")
        else:
            kept.append(ch)
    return " ".join("".join(kept).split())


def _cn_value(numeral: str) -> str:
    """A run of Chinese numerals as digits: 三 → 3, 十五 → 15, 二百零五 → 205, 一九八四 → 1984."""
    if not any(ch in _CN_UNITS for ch in numeral):
        return "".join(str(_CN_DIGITS[ch]) for ch in numeral)
    total, section, digit = 0, 0, 0
    for ch in numeral:
        if ch in _CN_DIGITS:
            digit = _CN_DIGITS[ch]
        elif _CN_UNITS[ch] >= 10_000:
            total += (section + digit) * _CN_UNITS[ch]
            section, digit = 0, 0
        else:
            section += (digit or 1) * _CN_UNITS[ch]
            digit = 0
    return str(total + section + digit)


def _numbers(text: str) -> tuple[str, ...]:
    """The numbers of ``text`` (normalised) in order, each with the operators touching it."""
    text = _CN_NUMBER.sub(lambda m: f" {_cn_value(m.group())} ", _NOT_NUMERAL.sub(" ", text))
    found: list[tuple[int, str]] = []
    for match in _NUMBER.finditer(text):
        found.append((match.start(), match.group().replace(",", "")))
    for match in _OPERATOR.finditer(text):
        before = text[: match.start()].rstrip()[-1:]
        after = text[match.end() :].lstrip()[:1]
        if before.isdigit() or after.isdigit():
            found.append((match.start(), match.group()))
    return tuple(value for _, value in sorted(found))


def _negations(text: str, words: list[str]) -> int:
    """How many negations ``text`` (normalised) holds."""
    return sum(w in _EN_NEGATIONS for w in words) + len(
        _ZH_NEGATIONS.findall(_NOT_NEGATION.sub(" ", text))
    )


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _relations(words: list[str], content: set[str]) -> set[str]:
    """``before>marker>after`` for each relating word: the nearest content words either side."""
    out = set()
    for i, word in enumerate(words):
        if word in _RELATIONS:
            before = next((w for w in reversed(words[:i]) if w in content), "^")
            after = next((w for w in words[i + 1 :] if w in content), "$")
            out.add(f"{before}>{word}>{after}")
    return out


#: (content words and relations, numbers, negations)
_Signature = tuple[tuple[str, ...], tuple[str, ...], int]
#: (scope, signature)
_Bucket = tuple[str, _Signature]


@dataclass(frozen=True, slots=True)
class Reading:
    """What is compared of a text: its signature (the guards) and its vector."""

    signature: _Signature
    vector: dict[str, float]

    def packed(self) -> tuple[array[int], array[float]]:
        """The vector as the index keeps it: the features' hashes and weights, in two arrays
        (much smaller than the dictionary; the hashes are this process's own)."""
        return array("q", map(hash, self.vector)), array("d", self.vector.values())


def read(text: str) -> Reading:
    """The signature and unit-length feature vector of ``text``."""
    norm = normalise(text)
    for pattern, repl in _ZH_SYNONYMS:
        norm = pattern.sub(repl, norm)
    tokens = _TOKEN.findall(norm)
    words = [_SYNONYMS.get(_stem(t), _stem(t)) for t in tokens]
    content = sorted(
        {
            w
            for w in words
            if w not in _STOPWORDS
            and w not in _ZH_STOP
            and not w.isdigit()
            and not _OPERATOR.fullmatch(w)
            and not _CN_NUMBER.fullmatch(w)
            and w not in _EN_NEGATIONS
            and not _ZH_NEGATIONS.fullmatch(w)
        }
    )
    relations = sorted(_relations(words, set(content)))
    signature = (tuple(content + relations), _numbers(norm), _negations(norm, words))
    features: defaultdict[str, float] = defaultdict(float)
    previous = "^"
    for w in words:
        light = w in _STOPWORDS or w in _ZH_STOP
        weight = 0.3 if light else 1.0
        if _IS_CJK.fullmatch(w):
            features[w] += weight
        else:
            padded = f"#{w}#"
            for i in range(max(1, len(padded) - 2)):
                features[padded[i : i + 3]] += weight / 2
            features[f"w:{w}"] += weight
        if not light:
            features[f"b:{previous}|{w}"] += _BIGRAM
            previous = w
    norm_len = math.sqrt(sum(v * v for v in features.values())) or 1.0
    return Reading(signature, {k: v / norm_len for k, v in features.items()})


def similarity(a: Reading, b: Reading) -> float:
    """Cosine similarity of two readings' vectors (0 when a guard differs)."""
    if a.signature != b.signature:
        return 0.0
    return _cosine(a.vector, b.vector)


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(k, 0.0) for k, v in a.items())


@dataclass(slots=True)
class _Entry:
    scope: str
    bucket: _Bucket
    hashes: array[int]
    weights: array[float]


class SimilarIndex:
    """Cached requests' last user messages, searchable by near-duplicate text within a scope.

    ``add`` records that ``key`` (the exact cache's key) answers ``text`` in ``scope``;
    ``lookup`` returns the best ``(key, score)`` of the same scope whose text passes the guards
    and scores at least ``threshold``, else ``None``. When the exact cache no longer holds a
    returned key (expired, evicted), the caller should ``remove`` it. Never use it for requests
    with tools or tool calls: the caller enforces that. Thread-safe.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, max_entries: int = 10_000) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"similar cache threshold must be in (0, 1], got {threshold}")
        if max_entries < 1:
            raise ConfigError(f"similar cache max_entries must be at least 1, got {max_entries}")
        self.threshold = threshold
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # the keys of each (scope, signature), least recently used first
        self._buckets: dict[_Bucket, dict[str, None]] = {}
        self._lock = threading.Lock()
        #: lookups made, and entries compared by them (the candidates of their buckets)
        self.lookups = 0
        self.candidates_compared = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, scope: str, text: str, key: str) -> None:
        """Remember that ``key`` answers ``text`` in ``scope`` (replacing an older ``key``)."""
        reading = read(text)
        bucket = (scope, reading.signature)
        with self._lock:
            self._drop(key)
            self._entries[key] = _Entry(scope, bucket, *reading.packed())
            keys = self._buckets.setdefault(bucket, {})
            keys[key] = None
            if len(keys) > BUCKET_CAP:
                self._drop(next(iter(keys)))
            while len(self._entries) > self.max_entries:
                self._drop(next(iter(self._entries)))

    def lookup(self, scope: str, text: str) -> tuple[str, float] | None:
        """The best key of ``scope`` whose text is a near-duplicate of ``text``, with its score."""
        reading = read(text)
        query = {hash(feature): weight for feature, weight in reading.vector.items()}
        best: tuple[str, float] | None = None
        with self._lock:
            candidates = self._buckets.get((scope, reading.signature), {})
            self.lookups += 1
            self.candidates_compared += len(candidates)
            for key in candidates:
                entry = self._entries[key]
                score = sum(
                    w * query.get(h, 0.0) for h, w in zip(entry.hashes, entry.weights, strict=True)
                )
                if score >= self.threshold and (best is None or score > best[1]):
                    best = (key, score)
            if best is not None:
                self._entries.move_to_end(best[0])
                del candidates[best[0]]
                candidates[best[0]] = None
        return best

    def remove(self, key: str) -> None:
        """Forget ``key`` (no error when it is not there)."""
        with self._lock:
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        keys = self._buckets[entry.bucket]
        del keys[key]
        if not keys:
            del self._buckets[entry.bucket]


class NearIndex:
    """A :class:`SimilarIndex` as the response cache's near-duplicate hook
    (:class:`~qwen_gateway.cache.key.NearDuplicates`), with a count of what it found."""

    def __init__(self, index: SimilarIndex, observer: NearObserver | None = None) -> None:
        self.index = index
        self._observer = observer

    async def lookup(self, scope: str, text: str) -> str | None:
        found = self.index.lookup(scope, text)
        if self._observer is not None:
            self._observer.cache_near_lookup("hit" if found is not None else "miss")
        return None if found is None else found[0]

    async def remember(self, scope: str, text: str, key: str) -> None:
        self.index.add(scope, text, key)

    async def forget(self, key: str) -> None:
        self.index.remove(key)


class NearObserver(Protocol):
    def cache_near_lookup(self, result: str) -> None: ...
