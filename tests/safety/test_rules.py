"""Rule files: the shipped defaults load, and bad entries are refused naming file, category, entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_gateway.safety.matcher import Matcher, Rule
from qwen_gateway.safety.rules import default_rule_file, load_rule_file


def test_the_shipped_defaults_load_into_a_matcher() -> None:
    path = default_rule_file()
    assert path.is_file()
    assert path.read_text(encoding="utf-8").startswith("# Default content-filter keyword lists")
    rules = load_rule_file(path)
    assert {rule.rule_set for rule in rules} == {"default"}
    matcher = Matcher(rules)
    assert 100 <= matcher.keyword_count <= 400
    assert [hit.category for hit in matcher.scan("破解 盗版 赌博 诈骗")] == [
        "cracking",
        "cracking",
        "gambling",
        "fraud",
    ]


def write(tmp_path: Path, body: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def test_a_rule_file_gives_one_rule_per_keyword_list_and_per_regex(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "categories:\n"
        "  gambling:\n"
        "    keywords: [赌博, online casino]\n"
        "    regexes:\n"
        "      - pattern: '赌[a-z]{0,4}网'\n"
        "        max_length: 8\n"
        "  fraud:\n"
        "    regexes: [{pattern: '洗钱'}]\n",
    )
    assert load_rule_file(path) == [
        Rule("gambling", "mine", keywords=("赌博", "online casino")),
        Rule("gambling", "mine", regex="赌[a-z]{0,4}网", max_length=8),
        Rule("fraud", "mine", regex="洗钱"),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("- a\n", "expected a mapping"),
        ("categories: {}\n", "'categories' must be a non-empty mapping"),
        ("rule_set: ''\ncategories: {a: {keywords: [x]}}\n", "'rule_set' must be"),
        ("colour: red\ncategories: {a: {keywords: [x]}}\n", r"unknown keys \['colour'\]"),
        ("categories: {gambling: [x]}\n", "category 'gambling': expected a mapping"),
        ("categories: {gambling: {words: [x]}}\n", r"category 'gambling': unknown keys"),
        ("categories: {gambling: {}}\n", "category 'gambling': no keywords and no regexes"),
        ("categories: {gambling: {keywords: x}}\n", "'keywords' must be a list"),
        ("categories: {gambling: {keywords: [赌博, '']}}\n", "category 'gambling': empty"),
        ("categories: {gambling: {keywords: [赌博, 3]}}\n", "non-string keyword 3"),
        (
            "categories: {gambling: {keywords: [赌博, ' -·- ']}}\n",
            "category 'gambling': keyword ' -·- ' is empty once normalised",
        ),
        (
            "categories: {fraud: {regexes: [{pattern: '(洗'}]}}\n",
            r"category 'fraud': regex '\(洗': bad regex",
        ),
        (
            "categories: {fraud: {regexes: [{pattern: 'x?'}]}}\n",
            "matches the empty string",
        ),
        (
            "categories: {fraud: {regexes: [{pattern: x, max_length: 999}]}}\n",
            "max_length must be between",
        ),
        (
            "categories: {fraud: {regexes: [{pattern: x, max_length: '9'}]}}\n",
            "'max_length' must be an integer",
        ),
        ("categories: {fraud: {regexes: [x]}}\n", "needs a 'pattern' string"),
        ("categories: {fraud: {regexes: x}}\n", "'regexes' must be a list"),
        ("categories: [\n", "not valid YAML"),
    ],
)
def test_bad_entries_are_refused_naming_the_file_and_entry(
    tmp_path: Path, body: str, message: str
) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ValueError, match=message) as caught:
        load_rule_file(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the rule file"):
        load_rule_file(tmp_path / "absent.yaml")
