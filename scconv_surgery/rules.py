"""Matching rules: which convs, by full dotted module name, are selected for replacement.

A pattern matches the *full* name from ``named_modules()``: a glob by default (``fnmatch``,
where ``.`` is literal and ``*`` crosses dots, so ``layer1.*`` does not match ``layer10.0``),
or, with the ``re:`` prefix, a regular expression that must match the whole name
(``re.fullmatch``). Never suffix matching.

Rules are ordered. A conv is selected when an include rule matches it and no exclude rule
does (exclude always wins). With no include rule at all, every eligible conv is included.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import InvalidRuleError

__all__ = ["RuleAction", "Rule", "validate_rules", "match_rules"]

REGEX_PREFIX = "re:"


class RuleAction(str, Enum):
    """What a matching rule does to a conv."""

    INCLUDE = "include"
    EXCLUDE = "exclude"


@dataclass(frozen=True)
class Rule:
    """One matching rule.

    Attributes:
        pattern: a glob over the full dotted module name, or ``re:REGEX`` (full match).
        action: ``include`` or ``exclude``.
    """

    pattern: str
    action: RuleAction = RuleAction.INCLUDE

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", RuleAction(self.action))
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"a rule's pattern must be a non-empty string, got {self.pattern!r}")

    def matches(self, name: str) -> bool:
        """Whether the pattern matches the full module name ``name``."""
        if self.pattern.startswith(REGEX_PREFIX):
            return re.fullmatch(self.pattern[len(REGEX_PREFIX):], name) is not None
        return fnmatch.fnmatchcase(name, self.pattern)

    def to_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "action": self.action.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rule:
        return cls(pattern=d["pattern"], action=RuleAction(d.get("action", "include")))


def validate_rules(rules: Sequence[Rule]) -> None:
    """Check every rule can be evaluated.

    Raises:
        InvalidRuleError: a ``re:`` pattern is not a valid regular expression (the error
            names the rule's index and pattern).
    """
    for index, rule in enumerate(rules):
        if rule.pattern.startswith(REGEX_PREFIX):
            try:
                re.compile(rule.pattern[len(REGEX_PREFIX):])
            except re.error as err:
                raise InvalidRuleError(rule.pattern, index, f"invalid regular expression: {err}") from err


def match_rules(names: Sequence[str], rules: Sequence[Rule]) -> tuple[bool, int | None]:
    """Whether the rules select a module known under ``names``, and the deciding rule's index.

    A rule matches the module when it matches any of its names (a module reachable under
    several names, aliases, is one module).

    Returns:
        ``(selected, index)``: ``index`` is the first matching exclude rule, else the last
        matching include rule, else None (selected only when there are no include rules).
    """
    included: int | None = None
    for index, rule in enumerate(rules):
        if any(rule.matches(name) for name in names):
            if rule.action is RuleAction.EXCLUDE:
                return False, index
            included = index
    has_includes = any(rule.action is RuleAction.INCLUDE for rule in rules)
    return (included is not None or not has_includes), included
