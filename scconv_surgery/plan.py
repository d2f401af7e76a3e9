"""Planning: one :class:`Decision` per conv of a model (replace, or skip with a reason).

Planning reads the model and never changes it. The :class:`Plan` it returns is a plain value:
the dry run prints it, the report reads it and the checkpoint stores its replaced entries, so
that :func:`scconv_surgery.load` replays it by exact name without evaluating rules again.

What makes one conv eligible, and with which hyperparameters, is :mod:`scconv_surgery.eligibility`;
this module holds the values (:class:`ConvSpec`, :class:`Decision`, :class:`Plan`) and the loop
that matches the rules against every conv (:func:`plan_conversion`).
"""
from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from torch import nn

from .eligibility import Replace, Skip, SkipReason, decide
from .fitting import Adaptation
from .layers import ScConv, ScConvConfig
from .probe import ModelProbe
from .rules import Rule, RuleAction, match_rules, merged_config, merged_strict_paper, validate_rules
from .sharing import shared_parameter_uses

__all__ = ["Action", "SkipReason", "ConvSpec", "Decision", "Plan", "plan_conversion", "find_convs"]

PLAN_SCHEMA_VERSION = 1


class Action(str, Enum):
    """What happens to one conv."""

    REPLACE = "replace"
    SKIP = "skip"


@dataclass(frozen=True)
class ConvSpec:
    """The constructor arguments of an ``nn.Conv2d`` (PyTorch's names)."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    bias: bool
    padding_mode: str

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ConvSpec:
        padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        return cls(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                   padding, tuple(conv.dilation), conv.groups, conv.bias is not None, conv.padding_mode)

    def to_dict(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.bias,
                "padding_mode": self.padding_mode}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConvSpec:
        padding = d["padding"] if isinstance(d["padding"], str) else tuple(d["padding"])
        return cls(d["in_channels"], d["out_channels"], tuple(d["kernel_size"]), tuple(d["stride"]),
                   padding, tuple(d["dilation"]), d["groups"], d["bias"], d["padding_mode"])

    @property
    def params(self) -> int:
        """Parameter count of the conv: weight plus bias."""
        k = self.kernel_size[0] * self.kernel_size[1]
        return self.out_channels * (self.in_channels // self.groups) * k + (self.out_channels if self.bias else 0)


@dataclass(frozen=True)
class Decision:
    """What happens to one conv, and why.

    Attributes:
        name: the conv's full dotted name (the first under ``named_modules()``).
        aliases: its other names, when one conv object is reachable under several.
        class_name: the conv's class, e.g. ``Conv2d`` or ``Conv2dSame``.
        spec: the conv's constructor arguments.
        action: ``replace`` or ``skip``.
        reason: why it is skipped (None when replaced).
        detail: the reason in words (which constraint failed), or what replaces it.
        rule_index: the index of the rule that decided, None for the default rule.
        config: SCConv hyperparameters when replaced, else None.
        params_before: the conv's parameter count.
        params_after: the replacement's parameter count (equal to ``params_before`` if skipped).
        adapted: the hyperparameters of ``config`` that differ from the configured ones so that
            the conv fits (empty when none does, and for manifests written before they existed).
    """

    name: str
    aliases: tuple[str, ...]
    class_name: str
    spec: ConvSpec
    action: Action
    reason: SkipReason | None
    detail: str
    rule_index: int | None
    config: ScConvConfig | None
    params_before: int
    params_after: int
    adapted: tuple[Adaptation, ...] = ()

    @property
    def is_replaced(self) -> bool:
        return self.action is Action.REPLACE

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "aliases": list(self.aliases), "class_name": self.class_name,
                "spec": self.spec.to_dict(), "action": self.action.value,
                "reason": self.reason.value if self.reason else None, "detail": self.detail,
                "rule_index": self.rule_index,
                "config": self.config.to_dict() if self.config else None,
                "params_before": self.params_before, "params_after": self.params_after,
                "adapted": [a.to_dict() for a in self.adapted]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        """Read :meth:`to_dict`'s form; keys added in later releases (``adapted``) are optional."""
        return cls(d["name"], tuple(d.get("aliases", ())), d["class_name"], ConvSpec.from_dict(d["spec"]),
                   Action(d["action"]), SkipReason(d["reason"]) if d.get("reason") else None,
                   d.get("detail", ""), d.get("rule_index"),
                   ScConvConfig(**d["config"]) if d.get("config") else None,
                   d["params_before"], d["params_after"],
                   tuple(Adaptation.from_dict(a) for a in d.get("adapted") or ()))


@dataclass(frozen=True)
class Plan:
    """A decision for every conv of a model, in module order, and the rules that made them.

    Attributes:
        decisions: one per distinct conv object.
        rules: the rules as given (empty: the default rule).
        rule_matches: for each rule, the number of convs its pattern matched.
    """

    decisions: tuple[Decision, ...]
    rules: tuple[Rule, ...] = ()
    rule_matches: tuple[int, ...] = field(default=())

    @property
    def replaced(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.is_replaced)

    @property
    def skipped(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if not d.is_replaced)

    @property
    def adapted(self) -> tuple[Decision, ...]:
        """Replaced convs whose hyperparameters were adapted to fit their channels."""
        return tuple(d for d in self.decisions if d.is_replaced and d.adapted)

    def skip_summary(self) -> dict[str, int]:
        """Skip reason -> number of convs skipped for it."""
        return dict(Counter(d.reason.value for d in self.skipped if d.reason))

    def unmatched_includes(self) -> tuple[str, ...]:
        """Include rules that matched no conv: the pattern, with the rule's filters if it has any."""
        unmatched = []
        for rule, n in zip(self.rules, self.rule_matches):
            if rule.action is RuleAction.INCLUDE and n == 0:
                filters = rule.filters()
                unmatched.append(rule.pattern + (f" with {filters}" if filters else ""))
        return tuple(unmatched)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "convs": len(self.decisions),
            "replaced": len(self.replaced),
            "skipped": len(self.skipped),
            "adapted": len(self.adapted),
            "skip_reasons": self.skip_summary(),
            "rules": [dict(r.to_dict(), matched=n) for r, n in zip(self.rules, self.rule_matches)],
            "decisions": [d.to_dict() for d in self.decisions],
        }


def find_convs(model: nn.Module) -> list[tuple[str, tuple[str, ...], nn.Conv2d]]:
    """Every distinct ``nn.Conv2d`` (subclasses included) as ``(name, aliases, module)``.

    Names come from ``named_modules(remove_duplicate=False)``; the first name of a module
    is its name, the others its aliases.
    """
    names: dict[int, list[str]] = {}
    modules: dict[int, nn.Conv2d] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.Conv2d) and name:
            names.setdefault(id(module), []).append(name)
            modules[id(module)] = module
    return [(n[0], tuple(n[1:]), modules[key]) for key, n in names.items()]


@functools.lru_cache(maxsize=4096)
def _params_after(in_channels: int, out_channels: int, kernel_size: int, stride: int, config: ScConvConfig) -> int:
    """Parameter count of the replacement, from a module built on the meta device."""
    layer = ScConv(in_channels, out_channels, kernel_size=kernel_size, stride=stride, config=config, device="meta")
    return sum(p.numel() for p in layer.parameters())


def _decision(name: str, aliases: tuple[str, ...], class_name: str, spec: ConvSpec, rule_index: int | None,
              outcome: Replace | Skip) -> Decision:
    """The :class:`Decision` that records an eligibility outcome."""
    if isinstance(outcome, Skip):
        return Decision(name=name, aliases=aliases, class_name=class_name, spec=spec, action=Action.SKIP,
                        reason=outcome.reason, detail=outcome.detail, rule_index=rule_index, config=None,
                        params_before=spec.params, params_after=spec.params)
    params_after = _params_after(spec.in_channels, spec.out_channels, spec.kernel_size[0], spec.stride[0],
                                 outcome.config)
    return Decision(name=name, aliases=aliases, class_name=class_name, spec=spec, action=Action.REPLACE, reason=None,
                    detail=outcome.detail, rule_index=rule_index, config=outcome.config, params_before=spec.params,
                    params_after=params_after, adapted=outcome.adapted)


def _unselected(rules: Sequence[Rule], rule_index: int | None) -> Skip:
    """The skip of an eligible conv that no rule selects: an exclude rule matched, or no include did."""
    if rule_index is not None:
        return Skip(SkipReason.EXCLUDED, f"excluded by rule {rule_index} ({rules[rule_index].pattern!r})")
    return Skip(SkipReason.NOT_SELECTED, "no include rule matched")


def plan_conversion(model: nn.Module, rules: Sequence[Rule] = (), *,
                    config: ScConvConfig | None = None, strict_paper: bool = False,
                    probe: ModelProbe | None = None) -> Plan:
    """Decide, for every conv of ``model``, whether it is replaced by SCConv and why.

    Never modifies ``model``. A :class:`~scconv_surgery.rules.Rule` is checked when it is made
    (its regex compiles); here only that each item is one. What decides one conv is
    :func:`scconv_surgery.eligibility.decide`.

    Args:
        model: any ``nn.Module``.
        rules: ordered include / exclude rules (:mod:`scconv_surgery.rules`); empty selects
            every eligible conv.
        config: SCConv hyperparameters for every replaced conv (default: the paper's); the
            matching include rules' hyperparameters override it, later rules last.
        strict_paper: never adapt hyperparameters to a conv's channels (a conv they do not fit
            is skipped as ``channels``); a matching include rule's ``strict_paper`` overrides it.
        probe: a probe pass of ``model`` (:func:`~scconv_surgery.probe.probe_model`): a conv whose
            parameters another module's forward reads (``F.conv2d(x, self.conv.weight)``) is then
            skipped as ``shared_weight``. Without it, only parameters that another module holds
            (tied weights, shared storage) are found (:mod:`scconv_surgery.sharing`).

    Returns:
        A :class:`Plan` with one decision per distinct ``nn.Conv2d``, in module order.

    Raises:
        InvalidRuleError: an item of ``rules`` is not a :class:`~scconv_surgery.rules.Rule`
            (a bare pattern string, say).
    """
    validate_rules(rules)
    base = config or ScConvConfig()
    rules = tuple(rules)
    matches = [0] * len(rules)
    decisions = []
    convs = find_convs(model)
    shared = shared_parameter_uses(model, {name: conv for name, _, conv in convs}, probe)
    for name, aliases, conv in convs:
        spec, cls = ConvSpec.from_conv(conv), type(conv).__name__
        matching = [i for i, rule in enumerate(rules) if rule.matches_conv((name, *aliases), spec, cls)]
        for index in matching:
            matches[index] += 1
        selected, rule_index = match_rules(matching, rules)
        includes = [rules[i] for i in matching if rules[i].action is RuleAction.INCLUDE]
        outcome = decide(model, name, conv, spec, merged_config(base, matching, rules), includes=includes,
                         strict=merged_strict_paper(strict_paper, matching, rules), shared=shared.get(name))
        if isinstance(outcome, Replace) and not selected:
            outcome = _unselected(rules, rule_index)
        decisions.append(_decision(name, aliases, cls, spec, rule_index, outcome))
    return Plan(tuple(decisions), rules, tuple(matches))
