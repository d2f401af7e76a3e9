"""Matching rules: which convs are replaced, with which SCConv hyperparameters.

A pattern matches the *full* dotted name from ``named_modules()``: a glob by default
(``fnmatch``, where ``.`` is literal and ``*`` crosses dots, so ``layer1.*`` does not match
``layer10.0``), or, with the ``re:`` prefix, a regular expression that must match the whole
name (``re.fullmatch``). Never suffix matching. A rule may also carry structural filters
(kernel size, stride, dilation, groups, conv class, channel bounds): it matches a conv only
when its pattern and every filter it sets match.

Rules are ordered. A conv is selected when an include rule matches it and no exclude rule
does (exclude always wins); with no include rule at all, every eligible conv is included.
Hyperparameters set by later matching include rules override earlier ones.

Rules files (YAML or TOML, :func:`load_rules_file`) hold the same rules::

    preset: paper            # optional: rules that go first (see PRESETS)
    rules:
      - include: "layer4.*"
        alpha: 0.75          # hyperparameters for what this rule matches
      - exclude: "re:layer[234]\\.0\\.conv2"
      - include: "features.*"
        strict_paper: true   # never adapt hyperparameters to fit these convs' channels
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import InvalidRuleError, RulesFileError
from .layers import ScConvConfig, StridePolicy, Variant

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["RuleAction", "Rule", "PRESETS", "preset_rules", "validate_rules", "match_rules",
           "merged_config", "merged_strict_paper", "load_rules_file", "rule_from_mapping", "assemble_rules",
           "RulesFile"]

REGEX_PREFIX = "re:"

# Structural filters a rule may set (compared with the conv's ConvSpec and class).
FILTER_FIELDS = ("kernel_size", "stride", "dilation", "groups", "conv_class", "min_in_channels",
                 "max_in_channels", "min_out_channels", "max_out_channels")
# SCConv hyperparameters a rule may set (fields of ScConvConfig).
CONFIG_FIELDS = ("variant", "alpha", "squeeze_ratio", "gwc_groups", "gn_groups", "gate_threshold",
                 "stride_policy")
# Planning options a rule may set for the convs it includes (not SCConv hyperparameters).
OPTION_FIELDS = ("strict_paper",)


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
        kernel_size: match only convs with this square kernel; an include naming an odd
            kernel other than 3 makes such convs eligible (GWC takes that kernel).
        stride: match only this (uniform) stride.
        dilation: match only this (uniform) dilation.
        groups: match only this group count.
        conv_class: match only convs of this class name (e.g. ``"Conv2dSame"``); an include
            naming an ``nn.Conv2d`` subclass with its own forward makes it eligible.
        min_in_channels, max_in_channels, min_out_channels, max_out_channels: inclusive
            channel bounds.
        variant, alpha, squeeze_ratio, gwc_groups, gn_groups, gate_threshold, stride_policy:
            SCConv hyperparameters (:class:`~scconv_surgery.layers.ScConvConfig`) for the convs
            this include rule matches; None inherits.
        strict_paper: for the convs this include rule matches, True keeps the hyperparameters
            exactly as configured (a conv that fails the channel constraints is skipped);
            False lets the planner adapt ``squeeze_ratio`` / ``gwc_groups`` to fit
            (:func:`~scconv_surgery.fitting.fit_config`); None inherits.

    Raises:
        ValueError: a contradictory rule (a lower bound above its upper bound, hyperparameters
            or ``strict_paper`` on an exclude rule, an include asking for a 1x1 or even kernel).
    """

    pattern: str
    action: RuleAction = RuleAction.INCLUDE
    kernel_size: int | None = None
    stride: int | None = None
    dilation: int | None = None
    groups: int | None = None
    conv_class: str | None = None
    min_in_channels: int | None = None
    max_in_channels: int | None = None
    min_out_channels: int | None = None
    max_out_channels: int | None = None
    variant: Variant | None = None
    alpha: float | None = None
    squeeze_ratio: int | None = None
    gwc_groups: int | None = None
    gn_groups: int | None = None
    gate_threshold: float | None = None
    stride_policy: StridePolicy | None = None
    strict_paper: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", RuleAction(self.action))
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"a rule's pattern must be a non-empty string, got {self.pattern!r}")
        if self.variant is not None:
            object.__setattr__(self, "variant", Variant(self.variant))
        if self.stride_policy is not None:
            object.__setattr__(self, "stride_policy", StridePolicy(self.stride_policy))
        for name in ("kernel_size", "stride", "dilation", "groups", "min_in_channels", "max_in_channels",
                     "min_out_channels", "max_out_channels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be at least 1")
        for side in ("in", "out"):
            low, high = getattr(self, f"min_{side}_channels"), getattr(self, f"max_{side}_channels")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{side}_channels={low} is above max_{side}_channels={high}")
        if self.action is RuleAction.EXCLUDE and (self.config_overrides() or self.strict_paper is not None):
            keys = [*self.config_overrides(), *(["strict_paper"] if self.strict_paper is not None else [])]
            raise ValueError(f"an exclude rule cannot set hyperparameters ({', '.join(keys)})")
        if self.strict_paper is not None and not isinstance(self.strict_paper, bool):
            raise ValueError(f"strict_paper must be true or false, got {self.strict_paper!r}")
        if self.action is RuleAction.INCLUDE and self.kernel_size is not None and (
                self.kernel_size < 3 or self.kernel_size % 2 == 0):
            raise ValueError(f"kernel_size={self.kernel_size}: SCConv replaces odd kernels of 3 or more")
        if self.config_overrides():
            ScConvConfig(**self.config_overrides())  # each value valid on its own

    def config_overrides(self) -> dict[str, Any]:
        """The hyperparameters this rule sets (not None)."""
        return {f: getattr(self, f) for f in CONFIG_FIELDS if getattr(self, f) is not None}

    def matches(self, name: str) -> bool:
        """Whether the pattern matches the full module name ``name`` (filters not applied)."""
        if self.pattern.startswith(REGEX_PREFIX):
            return re.fullmatch(self.pattern[len(REGEX_PREFIX):], name) is not None
        return fnmatch.fnmatchcase(name, self.pattern)

    def matches_conv(self, names: Sequence[str], spec: Any, class_name: str) -> bool:
        """Whether the rule matches a conv: its pattern matches one of ``names`` and every
        filter it sets matches ``spec`` (a :class:`~scconv_surgery.plan.ConvSpec`)."""
        checks = (
            (self.kernel_size, lambda v: tuple(spec.kernel_size) == (v, v)),
            (self.stride, lambda v: tuple(spec.stride) == (v, v)),
            (self.dilation, lambda v: tuple(spec.dilation) == (v, v)),
            (self.groups, lambda v: spec.groups == v),
            (self.conv_class, lambda v: class_name == v),
            (self.min_in_channels, lambda v: spec.in_channels >= v),
            (self.max_in_channels, lambda v: spec.in_channels <= v),
            (self.min_out_channels, lambda v: spec.out_channels >= v),
            (self.max_out_channels, lambda v: spec.out_channels <= v),
        )
        if not all(check(value) for value, check in checks if value is not None):
            return False
        return any(self.matches(name) for name in names)

    def to_dict(self) -> dict[str, Any]:
        """The rules-file form: ``{"include": pattern, ...fields that are set}``."""
        d: dict[str, Any] = {self.action.value: self.pattern}
        for f in (*FILTER_FIELDS, *CONFIG_FIELDS, *OPTION_FIELDS):
            value = getattr(self, f)
            if value is not None:
                d[f] = value.value if isinstance(value, Enum) else value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rule:
        return rule_from_mapping(d)


PRESETS: dict[str, tuple[Rule, ...]] = {
    # every eligible conv (the default)
    "all": (),
    # the paper's ResNet placement: conv2 of each residual block (the 3x3 of a bottleneck,
    # the second 3x3 of a basic block), as timm and torchvision name them
    "paper": (Rule(r"re:(.*\.)?layer\d+\.\d+\.conv2"),),
}


def preset_rules(name: str) -> tuple[Rule, ...]:
    """The rules of a named preset.

    Raises:
        ValueError: an unknown preset (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


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


def match_rules(matching: Sequence[int], rules: Sequence[Rule]) -> tuple[bool, int | None]:
    """Whether a conv is selected, given the indices of the rules that match it.

    Returns:
        ``(selected, index)``: ``index`` is the first matching exclude rule, else the last
        matching include rule, else None (selected only when there are no include rules).
    """
    for index in matching:
        if rules[index].action is RuleAction.EXCLUDE:
            return False, index
    included = [i for i in matching if rules[i].action is RuleAction.INCLUDE]
    has_includes = any(rule.action is RuleAction.INCLUDE for rule in rules)
    return (bool(included) or not has_includes), (included[-1] if included else None)


def merged_config(base: ScConvConfig, matching: Sequence[int], rules: Sequence[Rule]) -> ScConvConfig:
    """``base`` with the hyperparameters of the matching include rules applied in order."""
    overrides: dict[str, Any] = {}
    for index in matching:
        if rules[index].action is RuleAction.INCLUDE:
            overrides.update(rules[index].config_overrides())
    return replace(base, **overrides) if overrides else base


def merged_strict_paper(base: bool, matching: Sequence[int], rules: Sequence[Rule]) -> bool:
    """``base`` unless a matching include rule sets ``strict_paper``; the last one wins."""
    for index in matching:
        rule = rules[index]
        if rule.action is RuleAction.INCLUDE and rule.strict_paper is not None:
            base = rule.strict_paper
    return base


# -- rules files ---------------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    **{f: (int,) for f in ("kernel_size", "stride", "dilation", "groups", "min_in_channels",
                           "max_in_channels", "min_out_channels", "max_out_channels",
                           "squeeze_ratio", "gwc_groups", "gn_groups")},
    "conv_class": (str,), "variant": (str,), "stride_policy": (str,),
    "alpha": (float, int), "gate_threshold": (float, int), "strict_paper": (bool,),
}
_CHOICES = {"variant": [v.value for v in Variant], "stride_policy": [p.value for p in StridePolicy]}
RULE_KEYS = ("include", "exclude", *FILTER_FIELDS, *CONFIG_FIELDS, *OPTION_FIELDS)


def rule_from_mapping(entry: Mapping[str, Any], *, path: str = "<rules>", index: int = 0) -> Rule:
    """Build a :class:`Rule` from one rules-file entry (``{"include": PATTERN, ...}``).

    Raises:
        RulesFileError: an unknown key, a value of the wrong type or outside its choices, both
            or neither of include / exclude, or a contradictory rule (names ``path``, ``index``
            and the key).
    """
    if not isinstance(entry, Mapping):
        raise RulesFileError(path, index, None, f"a rule must be a mapping, got {type(entry).__name__}")
    for key in entry:
        if key not in RULE_KEYS:
            close = difflib.get_close_matches(str(key), RULE_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(RULE_KEYS)}"
            raise RulesFileError(path, index, key, f"unknown key{hint}")
    actions = [a for a in ("include", "exclude") if a in entry]
    if len(actions) != 1:
        raise RulesFileError(path, index, None, "give exactly one of 'include' or 'exclude' (the pattern)")
    action = actions[0]
    if not isinstance(entry[action], str) or not entry[action]:
        raise RulesFileError(path, index, action, f"must be a non-empty string pattern, got {entry[action]!r}")
    values = {}
    for key, value in entry.items():
        if key in actions:
            continue
        allowed = _TYPES[key]
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise RulesFileError(path, index, key, f"must be {names}, got {value!r} ({type(value).__name__})")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise RulesFileError(path, index, key, f"must be one of {', '.join(_CHOICES[key])}, got {value!r}")
        values[key] = float(value) if allowed[0] is float else value
    try:
        rule = Rule(entry[action], RuleAction(action), **values)
        validate_rules([rule])
    except InvalidRuleError as err:
        raise RulesFileError(path, index, action, str(err).split(": ", 1)[-1]) from err
    except ValueError as err:
        text = str(err)
        named = [key for key in (*FILTER_FIELDS, *CONFIG_FIELDS, *OPTION_FIELDS) if re.search(rf"\b{key}\b", text)]
        raise RulesFileError(path, index, named[0] if named else None, f"invalid rule: {text}") from err
    return rule


@dataclass(frozen=True)
class RulesFile:
    """A parsed rules file.

    Attributes:
        path: the file.
        preset: the preset it names, or None.
        rules: its rules, in order (after the preset's).
    """

    path: str
    preset: str | None
    rules: tuple[Rule, ...]


def _parse_problem(err: Exception) -> str:
    """A parser's error on one line, with the line and column (PyYAML's spans several lines;
    tomllib's already ends with "(at line L, column C)")."""
    mark = getattr(err, "problem_mark", None)
    if mark is None:
        return str(err)
    text = f"{getattr(err, 'problem', None) or err} at line {mark.line + 1}, column {mark.column + 1}"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None:
        text += f" ({context} from line {start.line + 1}, column {start.column + 1})"
    return text


def load_rules_file(path: str | Path) -> RulesFile:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) rules file.

    Top-level keys: ``rules`` (a list of rule mappings, :func:`rule_from_mapping`) and
    ``preset`` (a name in :data:`PRESETS`), both optional.

    Raises:
        RulesFileError: the file is missing, unreadable, not YAML / TOML, has an unknown
            top-level key, or holds an invalid rule (the error names the file, the rule's
            index and the key).
    """
    path = Path(path)
    text_path = str(path)
    if path.is_dir():
        raise RulesFileError(text_path, None, None, "is a directory, not a rules file")
    if not path.is_file():
        raise RulesFileError(text_path, None, None, "no such file")
    try:
        text = path.read_text(encoding="utf-8")
        suffix = path.suffix.lower()
        if suffix == ".toml":
            document: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            document = yaml.safe_load(text) or {}
        else:
            raise RulesFileError(text_path, None, None, "unknown suffix; use .yaml, .yml or .toml")
    except RulesFileError:
        raise
    except Exception as err:
        raise RulesFileError(text_path, None, None, f"not valid {path.suffix[1:].upper()}: {_parse_problem(err)}") from err
    if not isinstance(document, Mapping):
        raise RulesFileError(text_path, None, None, "the top level must be a mapping with a 'rules' list")
    for key in document:
        if key not in ("rules", "preset"):
            raise RulesFileError(text_path, None, key, "unknown top-level key; allowed: rules, preset")
    preset = document.get("preset")
    if preset is not None and preset not in PRESETS:
        raise RulesFileError(text_path, None, "preset", f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    entries = document.get("rules", [])
    if not isinstance(entries, list):
        raise RulesFileError(text_path, None, "rules", f"must be a list, got {type(entries).__name__}")
    rules = tuple(rule_from_mapping(e, path=text_path, index=i) for i, e in enumerate(entries))
    return RulesFile(text_path, preset, rules)



def assemble_rules(*, preset: str | None = None, rules_file: str | Path | None = None,
                   include: Sequence[str] = (), exclude: Sequence[str] = ()) -> tuple[Rule, ...]:
    """The ordered rules of one command line: the preset's, then the file's, then the flags'.

    A ``preset`` given here replaces the one the file names. ``include`` / ``exclude`` are
    patterns, one rule each (never comma-split).

    Raises:
        RulesFileError: the rules file is invalid.
        InvalidRuleError: an empty pattern or a bad regex among ``include`` / ``exclude``.
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
            except ValueError as err:
                raise InvalidRuleError(pattern, len(rules), str(err)) from err
    validate_rules(rules)
    return tuple(rules)
