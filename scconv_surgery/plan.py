"""Planning: one :class:`Decision` per conv of a model (replace, or skip with a reason).

Planning reads the model and never changes it. The :class:`Plan` it returns is a plain value:
the dry run prints it, the report reads it and the checkpoint stores its replaced entries, so
that :func:`scconv_surgery.load` replays it by exact name without evaluating rules again.

Eligibility (DESIGN section 3): a conv with a square odd kernel of 3 (other odd kernels only
if a rule names them; never 1x1), dilation 1, zero padding of ``k // 2`` ('same'), a uniform
stride (skipped under the ``skip`` stride policy), and channel counts SCConv can map
(:func:`~scconv_surgery.layers.scconv_constraint_error`). Beyond the paper:

- a dense conv whose channels fail the paper's constraints gets adapted hyperparameters (a
  larger ``squeeze_ratio``, a smaller ``gwc_groups``: :func:`~scconv_surgery.fitting.fit_config`),
  recorded in :attr:`Decision.adapted`, unless ``strict_paper``;
- a grouped (not depthwise) conv is replaced by an SCConv whose GWC takes its group count when
  that costs fewer parameters and MACs than the conv (the paper converts ResNeXt-29);
- a conv that standardises its weight (timm's ``StdConv2d`` family) is replaced only when a
  normalisation layer follows it, which makes its output scale irrelevant, or when a rule
  names its class.
"""
from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from .fitting import Adaptation, conv_cost, fit_config, format_fix, scconv_cost, suggest_fixes
from .layers import ScConv, ScConvConfig, StridePolicy, scconv_constraint_error
from .rules import FILTER_FIELDS, Rule, RuleAction, match_rules, merged_config, merged_strict_paper, validate_rules
from .std_conv import WEIGHT_STANDARDIZING_CONVS, following_norm

__all__ = ["Action", "SkipReason", "ConvSpec", "Decision", "Plan", "plan_conversion",
           "find_convs", "TIMM_SAME_SHAPE_CONVS"]

PLAN_SCHEMA_VERSION = 1

# timm's nn.Conv2d subclasses whose output shape equals a 'same'-padded conv for k=3,
# dilation 1 (timm/layers/conv2d_same.py, timm/layers/std_conv.py).
TIMM_SAME_SHAPE_CONVS = frozenset({"Conv2dSame", "StdConv2d", "StdConv2dSame", "ScaledStdConv2d",
                                   "ScaledStdConv2dSame"})
_DYNAMIC_SAME_PADDING = frozenset({"Conv2dSame", "StdConv2dSame", "ScaledStdConv2dSame"})


class Action(str, Enum):
    """What happens to one conv."""

    REPLACE = "replace"
    SKIP = "skip"


class SkipReason(str, Enum):
    """Why a conv is not replaced (a closed set: JSON carries these strings)."""

    NOT_SELECTED = "not_selected"  # include rules exist and none matched
    EXCLUDED = "excluded"  # an exclude rule matched
    POINTWISE = "pointwise"  # 1x1 kernel: SCConv would cost more
    KERNEL = "kernel"  # non-square, even, or not 3 without a rule asking
    DILATED = "dilated"  # dilation != 1
    GROUPED = "grouped"  # groups != 1 (grouped or depthwise)
    PADDING = "padding"  # padding other than zeros of k // 2
    STRIDE = "stride"  # non-uniform stride, or stride policy 'skip'
    CHANNELS = "channels"  # channel counts SCConv cannot map (the detail says what would fit)
    CONV_SUBCLASS = "conv_subclass"  # an nn.Conv2d subclass with its own forward
    PARAMETRIZED = "parametrized"  # torch.nn.utils.parametrize on its weight or bias
    WEIGHT_HOOK = "weight_hook"  # a hook computes its weight or hooks the weight tensor's gradient
    WEIGHT_STANDARDIZED = "weight_standardized"  # standardises its weight and no normalisation follows


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
                filters = {k: v for k, v in rule.to_dict().items() if k in FILTER_FIELDS}
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


def _managed_weight(conv: nn.Conv2d) -> tuple[SkipReason, str] | None:
    """Why the conv's weight belongs to something that cannot move to SCConv, or None.

    SCConv has none of the conv's tensors, so whatever computes or hooks them would act on
    nothing: ``torch.nn.utils.parametrize`` (the new-style ``weight_norm``, ``spectral_norm``,
    ``orthogonal``), the forward pre-hooks of the old-style ``weight_norm`` / ``spectral_norm``
    and of ``torch.nn.utils.prune`` (the weight is then a plain attribute, not a parameter), and
    gradient hooks on the weight or bias tensors.
    """
    if parametrize.is_parametrized(conv):
        kinds = "; ".join(f"{name} by {', '.join(type(p).__name__.lstrip('_') for p in chain)}"
                          for name, chain in conv.parametrizations.items())
        return SkipReason.PARAMETRIZED, (f"parametrized ({kinds}, torch.nn.utils.parametrize): SCConv has no such "
                                         "tensor; remove_parametrizations() first to replace it")
    computed = [name for name in ("weight", "bias") if name not in conv._parameters and getattr(conv, name, None) is not None]
    if computed:
        hooks = sorted({type(h).__name__ for h in conv._forward_pre_hooks.values()
                        if hasattr(h, "name") or hasattr(h, "_tensor_name")}) or ["a forward pre-hook"]
        return SkipReason.WEIGHT_HOOK, (f"{' and '.join(computed)} computed by {', '.join(hooks)} (old-style "
                                        "weight_norm / spectral_norm, or pruning): the hook cannot move to SCConv; "
                                        "remove it first to replace this conv")
    hooked = [name for name, p in conv._parameters.items()
              if p is not None and (p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None))]
    if hooked:
        return SkipReason.WEIGHT_HOOK, (f"gradient hooks on its {' and '.join(hooked)} tensor (Tensor.register_hook), "
                                        "which SCConv does not have")
    return None


def _structural_ineligibility(conv: nn.Conv2d, spec: ConvSpec, config: ScConvConfig, *, kernel_asked: bool,
                              class_asked: bool) -> tuple[SkipReason, str] | None:
    """Why ``conv`` is not the kind of conv SCConv replaces (a weight something else manages,
    its class, kernel, depthwise groups, dilation, padding, stride), or None. Channels are
    :func:`_fit`'s business.

    ``kernel_asked``: an include rule names this conv's kernel size (odd kernels other than 3
    become eligible). ``class_asked``: an include rule names this conv's class (an
    ``nn.Conv2d`` subclass with its own forward becomes eligible).
    """
    managed = _managed_weight(conv)
    if managed:
        return managed
    cls = type(conv).__name__
    if type(conv) is not nn.Conv2d and cls not in TIMM_SAME_SHAPE_CONVS and not class_asked:
        return SkipReason.CONV_SUBCLASS, f"{cls} subclasses nn.Conv2d with its own forward; name it in a rule's conv_class"
    kh, kw = spec.kernel_size
    if (kh, kw) == (1, 1):
        return SkipReason.POINTWISE, "1x1 kernel: SCConv would cost more"
    if spec.groups > 1 and spec.groups == spec.in_channels:
        return SkipReason.GROUPED, (f"depthwise (groups={spec.groups}): SCConv replaces dense and grouped convs, "
                                    "never depthwise ones (it would cost more)")
    if kh != kw:
        return SkipReason.KERNEL, f"non-square kernel {kh}x{kw}"
    if kh % 2 == 0:
        return SkipReason.KERNEL, f"even kernel {kh}x{kw}"
    if kh != 3 and not kernel_asked:
        return SkipReason.KERNEL, f"kernel {kh}x{kw}: 3x3 only, unless a rule sets kernel_size: {kh}"
    if cls in _DYNAMIC_SAME_PADDING and kh != 3:
        return SkipReason.KERNEL, f"{cls} with kernel {kh}x{kw}: output shape matches only for 3x3"
    if spec.dilation != (1, 1):
        return SkipReason.DILATED, f"dilation {spec.dilation[0]}x{spec.dilation[1]}"
    if spec.padding_mode != "zeros":
        return SkipReason.PADDING, f"padding_mode={spec.padding_mode!r}; only zero padding"
    same = cls in _DYNAMIC_SAME_PADDING or spec.padding in ((kh // 2, kw // 2), "same")
    if not same:
        return SkipReason.PADDING, (f"padding {spec.padding} is not kernel_size // 2 = {kh // 2}: SCConv keeps a "
                                    "'same' conv's output size, and this conv's output is smaller")
    sh, sw = spec.stride
    if sh != sw:
        return SkipReason.STRIDE, f"non-uniform stride {sh}x{sw}"
    if sh > 1 and config.stride_policy is StridePolicy.SKIP:
        return SkipReason.STRIDE, f"stride {sh} and stride_policy 'skip'"
    return None


def _unfit_detail(spec: ConvSpec, config: ScConvConfig, *, strict: bool) -> str:
    """Why no hyperparameters fit the conv's channels, and which change would (for a skip)."""
    groups = spec.groups if spec.groups > 1 else None
    problem = scconv_constraint_error(spec.in_channels, spec.out_channels,
                                      replace(config, gwc_groups=groups or config.gwc_groups))
    if groups:
        problem = f"grouped (groups={groups}): GWC would take the conv's {groups} groups, but {problem}"
    fixes = suggest_fixes(spec.in_channels, spec.out_channels, config, groups=groups)
    if not fixes:
        return f"{problem}; no hyperparameters make SCConv map {spec.in_channels} -> {spec.out_channels} channels"
    options = " or ".join(format_fix(fix) for fix in fixes)
    if strict:
        return f"{problem}; fits with {options} in a rule that matches it (--strict-paper: no automatic adaptation)"
    tried = f"squeeze_ratio >= {config.squeeze_ratio}" + ("" if groups else f", gwc_groups <= {config.gwc_groups}")
    return f"{problem}; no {tried} fits; {options} would, in a rule that matches it"


def _fit(spec: ConvSpec, config: ScConvConfig, *, strict: bool
         ) -> tuple[ScConvConfig, tuple[Adaptation, ...]] | tuple[SkipReason, str]:
    """The hyperparameters that replace the conv (adapted unless ``strict``), or why none do.

    A grouped conv is replaced only when the SCConv whose GWC takes its groups is cheaper in
    both parameters and MACs.
    """
    groups = spec.groups if spec.groups > 1 else None
    fitted = fit_config(spec.in_channels, spec.out_channels, config, groups=groups, strict=strict)
    if fitted is None:
        return (SkipReason.GROUPED if groups else SkipReason.CHANNELS), _unfit_detail(spec, config, strict=strict)
    if groups:
        k = spec.kernel_size[0]
        dense = conv_cost(spec.in_channels, spec.out_channels, k, groups=groups, bias=spec.bias)
        ours = scconv_cost(spec.in_channels, spec.out_channels, k, spec.stride[0], fitted[0])
        if ours.params >= dense.params or ours.macs_per_position >= dense.macs_per_position:
            return SkipReason.GROUPED, (f"grouped (groups={groups}): an SCConv whose GWC takes the {groups} groups "
                                        f"costs {ours}, the conv {dense}; it is replaced only when SCConv costs less")
    return fitted


@functools.lru_cache(maxsize=4096)
def _params_after(in_channels: int, out_channels: int, kernel_size: int, stride: int, config: ScConvConfig) -> int:
    """Parameter count of the replacement, from a module built on the meta device."""
    layer = ScConv(in_channels, out_channels, kernel_size=kernel_size, stride=stride, config=config, device="meta")
    return sum(p.numel() for p in layer.parameters())


def _replaced_detail(adapted: Sequence[Adaptation], note: str) -> str:
    detail = "replaced by SCConv"
    if adapted:
        detail += "; adapted " + "; ".join(str(a) for a in adapted)
    return detail + (f"; {note}" if note else "")


def _decide(model: nn.Module, name: str, conv: nn.Conv2d, spec: ConvSpec, config: ScConvConfig, *,
            includes: Sequence[Rule], strict: bool
            ) -> tuple[ScConvConfig, tuple[Adaptation, ...], str] | tuple[SkipReason, str]:
    """``(config, adaptations, detail)`` when the conv can be replaced, else ``(reason, detail)``."""
    cls = type(conv).__name__
    class_asked = any(r.conv_class == cls for r in includes)
    reason = _structural_ineligibility(conv, spec, config, kernel_asked=any(r.kernel_size for r in includes),
                                       class_asked=class_asked)
    if reason is not None:
        return reason
    note = ""
    if cls in WEIGHT_STANDARDIZING_CONVS:
        norm = None if class_asked else following_norm(model, name)
        if norm is None and not class_asked:
            return SkipReason.WEIGHT_STANDARDIZED, (
                f"{cls} standardises its weight and no normalisation layer follows it, so SCConv would change the "
                f"output scale; name it in an include rule's conv_class ({cls}) to replace it anyway")
        note = (f"{cls}'s weight standardisation is dropped, and {norm} normalises the output after it" if norm
                else f"{cls}'s weight standardisation is dropped: an include rule names the class")
    fitted = _fit(spec, config, strict=strict)
    if isinstance(fitted[0], SkipReason):
        return fitted  # type: ignore[return-value]
    config, adapted = fitted  # type: ignore[misc]
    return config, adapted, _replaced_detail(adapted, note)


def plan_conversion(model: nn.Module, rules: Sequence[Rule] = (), *,
                    config: ScConvConfig | None = None, strict_paper: bool = False) -> Plan:
    """Decide, for every conv of ``model``, whether it is replaced by SCConv and why.

    Never modifies ``model``.

    Args:
        model: any ``nn.Module``.
        rules: ordered include / exclude rules (:mod:`scconv_surgery.rules`); empty selects
            every eligible conv.
        config: SCConv hyperparameters for every replaced conv (default: the paper's); the
            matching include rules' hyperparameters override it, later rules last.
        strict_paper: never adapt hyperparameters to a conv's channels (a conv they do not fit
            is skipped as ``channels``); a matching include rule's ``strict_paper`` overrides it.

    Returns:
        A :class:`Plan` with one decision per distinct ``nn.Conv2d``, in module order.

    Raises:
        InvalidRuleError: a rule cannot be evaluated (bad regex).
    """
    base = config or ScConvConfig()
    rules = tuple(rules)
    validate_rules(rules)
    matches = [0] * len(rules)
    decisions = []
    for name, aliases, conv in find_convs(model):
        spec = ConvSpec.from_conv(conv)
        cls = type(conv).__name__
        matching = [i for i, rule in enumerate(rules) if rule.matches_conv((name, *aliases), spec, cls)]
        for index in matching:
            matches[index] += 1
        selected, rule_index = match_rules(matching, rules)
        includes = [rules[i] for i in matching if rules[i].action is RuleAction.INCLUDE]
        outcome = _decide(model, name, conv, spec, merged_config(base, matching, rules), includes=includes,
                          strict=merged_strict_paper(strict_paper, matching, rules))
        if not isinstance(outcome[0], SkipReason) and not selected:
            outcome = ((SkipReason.EXCLUDED, f"excluded by rule {rule_index} ({rules[rule_index].pattern!r})")
                       if rule_index is not None else (SkipReason.NOT_SELECTED, "no include rule matched"))
        if isinstance(outcome[0], SkipReason):
            decisions.append(Decision(name, aliases, cls, spec, Action.SKIP, outcome[0], outcome[1],
                                      rule_index, None, spec.params, spec.params))
        else:
            chosen, adapted, detail = outcome
            decisions.append(Decision(name, aliases, cls, spec, Action.REPLACE, None, detail, rule_index, chosen,
                                      spec.params, _params_after(spec.in_channels, spec.out_channels,
                                                                 spec.kernel_size[0], spec.stride[0], chosen), adapted))
    return Plan(tuple(decisions), rules, tuple(matches))
