"""The rules of one ``scconv convert`` command line: the preset's, then the file's, then the flags'."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scconv_surgery.errors import InvalidRuleError, RuleFieldError
from scconv_surgery.rules import Rule, RuleAction, preset_rules
from scconv_surgery.rules_file import load_rules_file


def assemble_rules(*, preset: str | None = None, rules_file: str | Path | None = None,
                   include: Sequence[str] = (), exclude: Sequence[str] = ()) -> tuple[Rule, ...]:
    """The ordered rules of one command line: the preset's, then the file's, then the flags'.

    A ``preset`` given here replaces the one the file names. ``include`` / ``exclude`` are
    patterns, one rule each (never comma-split).

    Raises:
        RulesFileError: the rules file is invalid.
        InvalidRuleError: an empty pattern or a bad regex among ``include`` / ``exclude`` (the
            error names its index among all the rules).
        ValueError: an unknown preset.
    """
    loaded = load_rules_file(rules_file) if rules_file is not None else None
    chosen = preset if preset is not None else (loaded.preset if loaded else None)
    rules = list(preset_rules(chosen)) if chosen else []
    rules += loaded.rules if loaded else ()
    for action, patterns in ((RuleAction.INCLUDE, include), (RuleAction.EXCLUDE, exclude)):
        for pattern in patterns:
            try:
                rules.append(Rule(pattern, action))
            except RuleFieldError as err:
                raise InvalidRuleError(pattern, len(rules), err.problem) from err
    return tuple(rules)
