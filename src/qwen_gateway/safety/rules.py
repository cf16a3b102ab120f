"""Rule files: YAML keyword lists and regexes by category, and the shipped default lists.

A rule file looks like::

    rule_set: default          # optional; the file's stem otherwise
    categories:
      gambling:
        keywords: [赌博, online casino]
        regexes:
          - pattern: "赌[a-z0-9]{0,8}网"
            max_length: 16     # optional, 64 by default

Each category gives one keyword ``Rule`` and one ``Rule`` per regex. Every problem is a
``ValueError`` naming the file, the category and the entry.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from qwen_gateway.safety.matcher import DEFAULT_REGEX_MAX_LENGTH, Matcher, Rule
from qwen_gateway.safety.normalize import normalise_pattern

__all__ = ["default_rule_file", "load_rule_file", "parse_rules"]


def default_rule_file() -> Path:
    """The shipped bilingual default lists (``safety/data/default_rules.yaml``)."""
    return Path(str(files("qwen_gateway.safety") / "data" / "default_rules.yaml"))


def load_rule_file(path: str | Path) -> list[Rule]:
    """Read and check one rule file."""
    location = Path(path)
    try:
        text = location.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{location}: cannot read the rule file: {exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{location}: not valid YAML: {exc}") from exc
    return parse_rules(document, source=str(location), default_rule_set=location.stem)


def parse_rules(document: Any, *, source: str, default_rule_set: str) -> list[Rule]:
    """Check a parsed rule document (a mapping as described above) and build its rules."""
    if not isinstance(document, dict):
        raise ValueError(f"{source}: expected a mapping with 'categories'")
    extra = sorted(set(document) - {"rule_set", "categories"})
    if extra:
        raise ValueError(f"{source}: unknown keys {extra}")
    rule_set = document.get("rule_set", default_rule_set)
    if not isinstance(rule_set, str) or not rule_set:
        raise ValueError(f"{source}: 'rule_set' must be a non-empty string")
    categories = document.get("categories")
    if not isinstance(categories, dict) or not categories:
        raise ValueError(f"{source}: 'categories' must be a non-empty mapping")
    rules: list[Rule] = []
    for category, body in categories.items():
        where = f"{source}: category {category!r}"
        if not isinstance(category, str) or not category:
            raise ValueError(f"{where}: a category name must be a non-empty string")
        if not isinstance(body, dict):
            raise ValueError(f"{where}: expected a mapping with 'keywords' and/or 'regexes'")
        unknown = sorted(set(body) - {"keywords", "regexes"})
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}")
        keywords = _keywords(body.get("keywords", []), where)
        if keywords:
            rules.append(Rule(category, rule_set, keywords=keywords))
        regexes = body.get("regexes", [])
        if not isinstance(regexes, list):
            raise ValueError(f"{where}: 'regexes' must be a list")
        for entry in regexes:
            rules.append(_regex_rule(entry, category, rule_set, where))
        if not keywords and not regexes:
            raise ValueError(f"{where}: no keywords and no regexes")
    return rules


def _keywords(entries: Any, where: str) -> tuple[str, ...]:
    if not isinstance(entries, list):
        raise ValueError(f"{where}: 'keywords' must be a list")
    keywords: list[str] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"{where}: empty or non-string keyword {entry!r}")
        if not normalise_pattern(entry):
            raise ValueError(
                f"{where}: keyword {entry!r} is empty once normalised "
                "(only separators, symbols or invisible characters)"
            )
        keywords.append(entry)
    return tuple(keywords)


def _regex_rule(entry: Any, category: str, rule_set: str, where: str) -> Rule:
    if not isinstance(entry, dict) or not isinstance(entry.get("pattern"), str):
        raise ValueError(f"{where}: a regex entry needs a 'pattern' string, got {entry!r}")
    unknown = sorted(set(entry) - {"pattern", "max_length"})
    if unknown:
        raise ValueError(f"{where}: regex {entry['pattern']!r}: unknown keys {unknown}")
    max_length = entry.get("max_length", DEFAULT_REGEX_MAX_LENGTH)
    if not isinstance(max_length, int) or isinstance(max_length, bool):
        raise ValueError(f"{where}: regex {entry['pattern']!r}: 'max_length' must be an integer")
    try:
        rule = Rule(category, rule_set, regex=entry["pattern"], max_length=max_length)
        Matcher([rule])
    except ValueError as exc:
        raise ValueError(f"{where}: regex {entry['pattern']!r}: {exc}") from exc
    return rule
