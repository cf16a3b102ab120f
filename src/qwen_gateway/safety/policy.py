"""Content-safety policies, compiled: which rules and classifier categories apply to a request,
and what each category does, in each direction.

:class:`SafetyPolicies` is built once from the ``safety:`` settings (at start, and again on a
reload, which swaps the whole object: requests already running keep the one they started with).
:meth:`SafetyPolicies.plan` answers, for one caller and deployment and one direction, a
:class:`Plan`: the matcher over the rule sets that apply, the action per rule category, the
action per classifier category and the review mode. Plans are cached per distinct set of
applicable policies, so a request costs a dictionary lookup.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from qwen_gateway.config import (
    ConfigError,
    DirectedAction,
    SafetyAction,
    SafetyPolicySettings,
    SafetySettings,
)
from qwen_gateway.safety.matcher import Matcher, Rule
from qwen_gateway.safety.rules import default_rule_file, load_rule_file

Direction = Literal["input", "output"]
ReviewMode = Literal["deliver_and_review", "hold"]

#: Stronger actions win when several policies act on one category.
RANK: Mapping[SafetyAction, int] = {"flag": 1, "review": 2, "redact": 3, "block": 4}
#: Rule categories no action names: blocked, both ways (a list's purpose is to keep it out).
DEFAULT_ACTION: SafetyAction = "block"


@dataclass(frozen=True, slots=True)
class Plan:
    """What applies to one request in one direction."""

    matcher: Matcher | None  # None: no rule applies
    actions: Mapping[str, SafetyAction]  # rule category -> action
    risk: Mapping[str, SafetyAction]  # classifier category -> action
    review: ReviewMode
    policies: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return self.matcher is None and not self.risk


@dataclass(frozen=True, slots=True)
class _Policy:
    name: str
    rule_sets: tuple[str, ...]
    keys: frozenset[int]
    tiers: frozenset[str]
    deployments: frozenset[str]
    actions: Mapping[str, DirectedAction]
    review: ReviewMode

    def applies(self, key_id: int | None, tier: str | None, deployment: str | None) -> bool:
        return (
            (not self.keys or key_id in self.keys)
            and (not self.tiers or tier in self.tiers)
            and (not self.deployments or deployment in self.deployments)
        )


def _directed(action: SafetyAction | DirectedAction) -> DirectedAction:
    if isinstance(action, DirectedAction):
        return action
    return DirectedAction(input=action, output=action)


def _stronger(a: SafetyAction | None, b: SafetyAction | None) -> SafetyAction | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if RANK[a] >= RANK[b] else b


def _rule_file(entry: str, base: Path | None) -> Path:
    if entry == "default":  # the lists shipped with the gateway
        return default_rule_file()
    path = Path(entry).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def load_rule_sets(settings: SafetySettings, base: Path | None = None) -> dict[str, list[Rule]]:
    """Every configured rule set's rules (files read, inline entries added); a bad entry is a
    ConfigError naming the rule set and the entry."""
    out: dict[str, list[Rule]] = {}
    for name, spec in settings.rule_sets.items():
        rules: list[Rule] = []
        for entry in spec.files:
            path = _rule_file(entry, base)
            try:
                rules.extend(replace(r, rule_set=name) for r in load_rule_file(path))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"safety.rule_sets.{name}.files: {path}: {exc}") from exc
        try:
            for category, words in spec.keywords.items():
                rules.append(Rule(category, name, keywords=tuple(words)))
            for category, patterns in spec.regex.items():
                rules.extend(Rule(category, name, regex=p) for p in patterns)
        except ValueError as exc:
            raise ConfigError(f"safety.rule_sets.{name}: {exc}") from exc
        out[name] = rules
    return out


@dataclass(slots=True)
class SafetyPolicies:
    """The compiled ``safety:`` section (immutable once built; a reload builds a new one)."""

    rules: Mapping[str, Sequence[Rule]]
    policies: tuple[_Policy, ...]
    risk_categories: frozenset[str]
    mask: str = "*"
    #: a digest of everything compiled (rules, policies, mask): equal on replicas that loaded
    #: the same configuration, different after any change that could change an answer
    fingerprint: str = ""
    _plans: dict[tuple[Direction, tuple[int, ...]], Plan | None] = field(default_factory=dict)
    _matchers: dict[tuple[str, ...], Matcher] = field(default_factory=dict)

    @classmethod
    def compile(
        cls,
        settings: SafetySettings,
        risk_categories: Iterable[str] = (),
        base: Path | None = None,
    ) -> SafetyPolicies:
        """Read the rule files, check every reference, and build the matcher of each policy
        (the expensive part, done here rather than on a request)."""
        rules = load_rule_sets(settings, base)
        risk = frozenset(risk_categories)
        policies: list[_Policy] = []
        for i, p in enumerate(settings.policies):
            where = f"safety.policies.{i} ({p.name})"
            for name in p.rule_sets:
                if name not in rules:
                    known = ", ".join(sorted(rules)) or "none"
                    raise ConfigError(f"{where}: unknown rule set {name!r} (defined: {known})")
            categories = {r.category for n in p.rule_sets for r in rules[n]}
            for category in p.actions:
                if category != "*" and category not in categories and category not in risk:
                    raise ConfigError(
                        f"{where}.actions: {category!r} is neither a category of its rule "
                        f"sets nor a classifier category ({', '.join(sorted(risk)) or 'none'})"
                    )
            policies.append(
                _Policy(
                    name=p.name,
                    rule_sets=tuple(p.rule_sets),
                    keys=frozenset(p.keys),
                    tiers=frozenset(p.tiers),
                    deployments=frozenset(p.deployments),
                    actions={c: _directed(a) for c, a in p.actions.items()},
                    review=p.review,
                )
            )
        _unique_names(settings.policies)
        compiled = cls(rules, tuple(policies), risk, settings.mask, _fingerprint(settings, rules))
        for i, built in enumerate(policies):  # each policy alone, the usual case: built now
            try:
                compiled._plan("input", (i,))
                compiled._plan("output", (i,))
            except ValueError as exc:  # an entry the matcher cannot use
                raise ConfigError(f"safety.policies.{i} ({built.name}): {exc}") from exc
        return compiled

    def plan(
        self,
        direction: Direction,
        key_id: int | None = None,
        tier: str | None = None,
        deployment: str | None = None,
    ) -> Plan | None:
        """What applies to a caller (key, tier) on a deployment; None: nothing does."""
        chosen = tuple(
            i for i, p in enumerate(self.policies) if p.applies(key_id, tier, deployment)
        )
        if not chosen:
            return None
        return self._plan(direction, chosen)

    def _plan(self, direction: Direction, chosen: tuple[int, ...]) -> Plan | None:
        cache_key = (direction, chosen)
        if cache_key in self._plans:
            return self._plans[cache_key]
        policies = [self.policies[i] for i in chosen]
        rule_sets = tuple(sorted({n for p in policies for n in p.rule_sets}))
        actions: dict[str, SafetyAction] = {}
        risk: dict[str, SafetyAction] = {}
        for p in policies:
            own = {r.category for n in p.rule_sets for r in self.rules[n]}
            wildcard = p.actions.get("*")
            for category in own:
                spec = p.actions.get(category, wildcard)
                act = getattr(spec, direction) if spec is not None else DEFAULT_ACTION
                stronger = _stronger(actions.get(category), act)
                if stronger is not None:
                    actions[category] = stronger
            for category, spec in p.actions.items():
                if category in self.risk_categories and category not in own:
                    stronger = _stronger(risk.get(category), getattr(spec, direction))
                    if stronger is not None:
                        risk[category] = stronger
        acting = [r for n in rule_sets for r in self.rules[n] if r.category in actions]
        matcher = self._matcher(rule_sets, acting) if acting else None
        review: ReviewMode = (
            "hold" if any(p.review == "hold" for p in policies) else "deliver_and_review"
        )
        plan = Plan(matcher, actions, risk, review, tuple(p.name for p in policies))
        result = None if plan.empty else plan
        self._plans[cache_key] = result
        return result

    def _matcher(self, rule_sets: tuple[str, ...], rules: Sequence[Rule]) -> Matcher:
        key = (*rule_sets, *sorted({r.category for r in rules}))
        found = self._matchers.get(key)
        if found is None:
            found = self._matchers[key] = Matcher(rules)
        return found


def _unique_names(policies: Sequence[SafetyPolicySettings]) -> None:
    seen: set[str] = set()
    for p in policies:
        if p.name in seen:
            raise ConfigError(f"safety.policies: the name {p.name!r} is used twice")
        seen.add(p.name)


def _fingerprint(settings: SafetySettings, rules: Mapping[str, Sequence[Rule]]) -> str:
    """The rules as loaded (files included) and the policies, hashed."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(settings.model_dump_json(exclude={"review"}).encode())
    for name in sorted(rules):
        for r in rules[name]:
            digest.update(repr((name, r.category, r.keywords, r.regex, r.max_length)).encode())
    return digest.hexdigest()
