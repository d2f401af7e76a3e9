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

Rules files (YAML or TOML, :func:`scconv_surgery.rules_file.load_rules_file`) hold the same rules::

    preset: paper            # optional: rules that go first (see PRESETS)
    rules:
      - include: "layer4.*"
        alpha: 0.75          # hyperparameters for what this rule matches
      - exclude: "re:layer[234]\\.0\\.conv2"
      - include: "features.*"
        strict_paper: true   # never adapt hyperparameters to fit these convs' channels
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

from .errors import InvalidRuleError, RuleFieldError
from .layers import ScConvConfig, StridePolicy, Variant

__all__ = ["RuleAction", "Rule", "PRESETS", "preset_rules", "validate_rules", "match_rules",
           "merged_config", "merged_strict_paper", "FILTER_FIELDS", "CONFIG_FIELDS", "OPTION_FIELDS"]

REGEX_PREFIX = "re:"

# Structural filters a rule may set: the field, and whether a conv passes the filter's value,
# given the conv's ConvSpec and class name. The one list of filters: the rest derive from it.
_FILTERS: dict[str, Callable[[Any, str, Any], bool]] = {
    "kernel_size": lambda spec, cls, v: tuple(spec.kernel_size) == (v, v),
    "stride": lambda spec, cls, v: tuple(spec.stride) == (v, v),
    "dilation": lambda spec, cls, v: tuple(spec.dilation) == (v, v),
    "groups": lambda spec, cls, v: spec.groups == v,
    "conv_class": lambda spec, cls, v: cls == v,
    "min_in_channels": lambda spec, cls, v: spec.in_channels >= v,
    "max_in_channels": lambda spec, cls, v: spec.in_channels <= v,
    "min_out_channels": lambda spec, cls, v: spec.out_channels >= v,
    "max_out_channels": lambda spec, cls, v: spec.out_channels <= v,
}
FILTER_FIELDS = tuple(_FILTERS)
# SCConv hyperparameters a rule may set: every field of ScConvConfig.
CONFIG_FIELDS = tuple(f.name for f in fields(ScConvConfig))
# Planning options a rule may set for the convs it includes (not SCConv hyperparameters).
OPTION_FIELDS = ("strict_paper",)


class RuleAction(str, Enum):
    """What a matching rule does to a conv."""

    INCLUDE = "include"
    EXCLUDE = "exclude"


@dataclass(frozen=True)
class Rule:
    """One matching rule; a rule that constructs is valid (its regex compiles).

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
        RuleFieldError: an empty pattern or a ``re:`` pattern that does not compile (key
            ``"pattern"``), or a contradictory rule (a lower bound above its upper bound,
            hyperparameters or ``strict_paper`` on an exclude rule, an include asking for a 1x1
            or even kernel, a hyperparameter out of range); ``key`` names the field. An
            :class:`~scconv_surgery.errors.InvalidRuleError` and a ``ValueError``.
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
        if not isinstance(self.pattern, str) or not self.pattern:
            raise RuleFieldError(self.pattern, "pattern", f"a rule's pattern must be a non-empty string, got "
                                                          f"{self.pattern!r}")
        for key, kind in (("action", RuleAction), ("variant", Variant), ("stride_policy", StridePolicy)):
            value = getattr(self, key)
            if value is not None:
                try:
                    object.__setattr__(self, key, kind(value))
                except ValueError as err:
                    raise RuleFieldError(self.pattern, key, str(err)) from err
        self._check_filters()
        self._check_settings()
        if self.pattern.startswith(REGEX_PREFIX):
            try:
                re.compile(self.pattern[len(REGEX_PREFIX):])
            except re.error as err:
                raise RuleFieldError(self.pattern, "pattern", f"invalid regular expression: {err}") from err

    def _check_filters(self) -> None:
        """Filters are at least 1, and each lower channel bound is at most its upper bound."""
        for key, value in self.filters().items():
            if isinstance(value, int) and value < 1:
                raise RuleFieldError(self.pattern, key, f"{key}={value} must be at least 1")
        for side in ("in", "out"):
            low, high = getattr(self, f"min_{side}_channels"), getattr(self, f"max_{side}_channels")
            if low is not None and high is not None and low > high:
                raise RuleFieldError(self.pattern, f"min_{side}_channels",
                                     f"min_{side}_channels={low} is above max_{side}_channels={high}")

    def _check_settings(self) -> None:
        """Only include rules set hyperparameters and ``strict_paper``, an included kernel is odd
        and at least 3, and each hyperparameter is valid on its own (:class:`ScConvConfig`)."""
        overrides = self.config_overrides()
        keys = [*overrides, *(["strict_paper"] if self.strict_paper is not None else [])]
        if self.action is RuleAction.EXCLUDE and keys:
            raise RuleFieldError(self.pattern, keys[0],
                                 f"an exclude rule cannot set hyperparameters ({', '.join(keys)})")
        if self.strict_paper is not None and not isinstance(self.strict_paper, bool):
            raise RuleFieldError(self.pattern, "strict_paper",
                                 f"strict_paper must be true or false, got {self.strict_paper!r}")
        if self.action is RuleAction.INCLUDE and self.kernel_size is not None and (
                self.kernel_size < 3 or self.kernel_size % 2 == 0):
            raise RuleFieldError(self.pattern, "kernel_size",
                                 f"kernel_size={self.kernel_size}: SCConv replaces odd kernels of 3 or more")
        for key, value in overrides.items():
            try:
                ScConvConfig(**{key: value})
            except ValueError as err:
                raise RuleFieldError(self.pattern, key, str(err)) from err

    def _set(self, keys: Sequence[str]) -> dict[str, Any]:
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}

    def filters(self) -> dict[str, Any]:
        """The structural filters this rule sets (not None)."""
        return self._set(FILTER_FIELDS)

    def config_overrides(self) -> dict[str, Any]:
        """The hyperparameters this rule sets (not None)."""
        return self._set(CONFIG_FIELDS)

    def matches(self, name: str) -> bool:
        """Whether the pattern matches the full module name ``name`` (filters not applied)."""
        if self.pattern.startswith(REGEX_PREFIX):
            return re.fullmatch(self.pattern[len(REGEX_PREFIX):], name) is not None
        return fnmatch.fnmatchcase(name, self.pattern)

    def matches_conv(self, names: Sequence[str], spec: Any, class_name: str) -> bool:
        """Whether the rule matches a conv: its pattern matches one of ``names`` and every
        filter it sets matches ``spec`` (a :class:`~scconv_surgery.plan.ConvSpec`)."""
        if not all(_FILTERS[key](spec, class_name, value) for key, value in self.filters().items()):
            return False
        return any(self.matches(name) for name in names)

    def to_dict(self) -> dict[str, Any]:
        """The rules-file form: ``{"include": pattern, ...fields that are set}``."""
        d: dict[str, Any] = {self.action.value: self.pattern}
        for key, value in self._set((*FILTER_FIELDS, *CONFIG_FIELDS, *OPTION_FIELDS)).items():
            d[key] = value.value if isinstance(value, Enum) else value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rule:
        """Read :meth:`to_dict`'s form. A mapping from a user's file goes through
        :func:`scconv_surgery.rules_file.rule_from_mapping`, which checks each key's type and
        names the file and the rule in its errors.

        Raises:
            RuleFieldError: as the constructor.
            TypeError: a key that is not a field.
        """
        action = RuleAction.EXCLUDE if RuleAction.EXCLUDE.value in d else RuleAction.INCLUDE
        return cls(d[action.value], action, **{k: v for k, v in d.items() if k != action.value})


PRESETS: dict[str, tuple[Rule, ...]] = {
    # every eligible conv (the default)
    "all": (),
    # the paper's ResNet placement: conv2 of each residual block (the 3x3 of a bottleneck,
    # the second 3x3 of a basic block), as timm and torchvision name them
    "paper": (Rule(r"re:(.*\.)?layer\d+\.\d+\.conv2"),),
    # ultralytics YOLO: the bottleneck convs inside C2f / C3k2 blocks (m.N.cv1.conv, m.N.cv2.conv;
    # C3k2's nested C3k bottlenecks too), the community's C2f_ScConv / C3k2_ScConv placement
    "yolo": (Rule(r"re:(.*\.)?m\.\d+\.cv[12]\.conv"),),
}


def preset_rules(name: str) -> tuple[Rule, ...]:
    """The rules of a named preset.

    Raises:
        ValueError: an unknown preset (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def validate_rules(rules: Sequence[Any]) -> None:
    """Check that every item of ``rules`` is a :class:`Rule` (a Rule that constructs is valid).

    Raises:
        InvalidRuleError: an item that is not a :class:`Rule`, e.g. a bare pattern string (the
            error names its index).
    """
    for index, rule in enumerate(rules):
        if not isinstance(rule, Rule):
            raise InvalidRuleError(str(rule), index, f"not a Rule but a {type(rule).__name__}; wrap a pattern as "
                                                     "Rule(pattern)")


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


def _merged(matching: Sequence[int], rules: Sequence[Rule], keys: Sequence[str]) -> dict[str, Any]:
    """The fields among ``keys`` that the matching include rules set, later rules last."""
    merged: dict[str, Any] = {}
    for index in matching:
        if rules[index].action is RuleAction.INCLUDE:
            merged.update(rules[index]._set(keys))
    return merged


def merged_config(base: ScConvConfig, matching: Sequence[int], rules: Sequence[Rule]) -> ScConvConfig:
    """``base`` with the hyperparameters of the matching include rules applied in order."""
    overrides = _merged(matching, rules, CONFIG_FIELDS)
    return replace(base, **overrides) if overrides else base


def merged_strict_paper(base: bool, matching: Sequence[int], rules: Sequence[Rule]) -> bool:
    """``base`` unless a matching include rule sets ``strict_paper``; the last one wins."""
    return _merged(matching, rules, OPTION_FIELDS).get("strict_paper", base)
