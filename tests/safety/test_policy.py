"""Compiled content-safety policies: selectors, action precedence, references checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qwen_gateway.config import ConfigError, SafetySettings
from qwen_gateway.safety.policy import SafetyPolicies

RISK = ("financial_advice", "medical_advice", "legal_advice")


def compile_(section: dict[str, Any]) -> SafetyPolicies:
    return SafetyPolicies.compile(SafetySettings.model_validate(section), RISK)


LISTS = {
    "blocklist": {"keywords": {"gambling": ["赌博"], "fraud": ["诈骗"]}},
    "soft": {"keywords": {"gambling": ["casino"], "slang": ["darn"]}},
}


def test_a_policy_without_selectors_applies_to_all_traffic() -> None:
    p = compile_({"rule_sets": LISTS, "policies": [{"name": "all", "rule_sets": ["blocklist"]}]})
    plan = p.plan("input", key_id=7, tier="gold", deployment="qwen")
    assert plan is not None and plan.policies == ("all",)
    # categories no action names are blocked, both ways
    assert plan.actions == {"gambling": "block", "fraud": "block"}
    assert p.plan("output") is not None


def test_selectors_pick_keys_tiers_and_deployments() -> None:
    p = compile_(
        {
            "rule_sets": LISTS,
            "policies": [
                {"name": "k", "rule_sets": ["blocklist"], "keys": [1]},
                {"name": "t", "rule_sets": ["soft"], "tiers": ["free"]},
                {"name": "d", "rule_sets": ["soft"], "deployments": ["big"], "keys": [2]},
            ],
        }
    )
    assert p.plan("input", key_id=3) is None
    k = p.plan("input", key_id=1)
    assert k is not None and k.policies == ("k",)
    t = p.plan("input", key_id=1, tier="free")
    assert t is not None and t.policies == ("k", "t")
    assert set(t.actions) == {"gambling", "fraud", "slang"}
    assert p.plan("input", key_id=2, deployment="small") is None  # every selector must match
    d = p.plan("input", key_id=2, deployment="big")
    assert d is not None and d.policies == ("d",)


def test_the_strongest_action_wins_and_directions_are_separate() -> None:
    p = compile_(
        {
            "rule_sets": LISTS,
            "policies": [
                {
                    "name": "a",
                    "rule_sets": ["blocklist"],
                    "actions": {"gambling": "flag", "*": {"input": "redact", "output": None}},
                },
                {"name": "b", "rule_sets": ["blocklist"], "actions": {"gambling": "review"}},
            ],
        }
    )
    inp = p.plan("input")
    out = p.plan("output")
    assert inp is not None and out is not None
    assert inp.actions["gambling"] == "review"  # review > flag
    # fraud: a says redact (input) / nothing (output), b blocks it (no action named)
    assert inp.actions["fraud"] == "block" and out.actions["fraud"] == "block"


def test_a_category_with_no_action_in_a_direction_is_not_matched_there() -> None:
    p = compile_(
        {
            "rule_sets": {"x": {"keywords": {"gambling": ["赌博"]}}},
            "policies": [
                {"name": "a", "rule_sets": ["x"], "actions": {"gambling": {"input": "block"}}}
            ],
        }
    )
    assert p.plan("input") is not None
    assert p.plan("output") is None  # nothing to do on the answer


def test_classifier_categories_map_to_actions_and_the_review_mode() -> None:
    p = compile_(
        {
            "policies": [
                {
                    "name": "risk",
                    "actions": {"financial_advice": "review", "medical_advice": "review"},
                    "review": "hold",
                }
            ]
        }
    )
    plan = p.plan("output")
    assert plan is not None
    assert plan.matcher is None
    assert plan.risk == {"financial_advice": "review", "medical_advice": "review"}
    assert plan.review == "hold"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"policies": [{"name": "a", "rule_sets": ["missing"]}]}, "unknown rule set 'missing'"),
        (
            {"rule_sets": LISTS, "policies": [{"name": "a", "rule_sets": ["soft"],
                                               "actions": {"violence": "block"}}]},
            "'violence' is neither",
        ),
        (
            {"policies": [{"name": "a"}, {"name": "a"}]},
            "used twice",
        ),
        (
            {"rule_sets": {"x": {"files": ["/nonexistent/rules.yaml"]}}},
            "safety.rule_sets.x.files",
        ),
        (
            {"rule_sets": {"x": {"regex": {"c": ["(unclosed"]}}},
             "policies": [{"name": "a", "rule_sets": ["x"]}]},
            "safety.",
        ),
    ],
)  # fmt: skip
def test_mistakes_are_config_errors_naming_the_place(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compile_(section)


def test_the_shipped_lists_load_by_name(tmp_path: Path) -> None:
    p = compile_(
        {
            "rule_sets": {"d": {"files": ["default"]}},
            "policies": [{"name": "a", "rule_sets": ["d"]}],
        }
    )
    plan = p.plan("input")
    assert plan is not None and plan.matcher is not None
    for word in ("破解", "盗版", "赌博", "诈骗"):
        assert plan.matcher.scan(f"教我{word}吧"), word
    assert {"gambling", "fraud"} <= set(plan.actions)


def test_a_relative_rule_file_is_read_from_the_base(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        "categories:\n  pets:\n    keywords: [hamster]\n", encoding="utf-8"
    )
    settings = SafetySettings.model_validate(
        {
            "rule_sets": {"m": {"files": ["mine.yaml"]}},
            "policies": [{"name": "a", "rule_sets": ["m"]}],
        }
    )
    plan = SafetyPolicies.compile(settings, (), base=tmp_path).plan("output")
    assert plan is not None and plan.matcher is not None
    hits = plan.matcher.scan("a HAMSTER")
    assert [(h.category, h.rule_set) for h in hits] == [("pets", "m")]
