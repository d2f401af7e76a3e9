"""Eligibility: whether one conv can be replaced by SCConv, with which hyperparameters, or why not.

:func:`decide` reads one conv and returns a :class:`Replace` or a :class:`Skip`; the planning
loop (:func:`~scconv_surgery.plan.plan_conversion`) matches the rules and records a
:class:`~scconv_surgery.plan.Decision` from it.

Eligibility (DESIGN section 3): a conv with a square odd kernel of 3 (other odd kernels only
if a rule names them; never 1x1), dilation 1, zero padding of ``k // 2`` ('same'), a uniform
stride (skipped under the ``skip`` stride policy), and channel counts SCConv can map
(:func:`~scconv_surgery.layers.scconv_constraint_error`). Beyond the paper:

- a dense conv whose channels fail the paper's constraints gets adapted hyperparameters (a
  larger ``squeeze_ratio``, a smaller ``gwc_groups``: :func:`~scconv_surgery.fitting.fit_config`),
  recorded in :attr:`Replace.adapted`, unless ``strict``;
- a grouped (not depthwise) conv is replaced by an SCConv whose GWC takes its group count when
  that costs fewer parameters and MACs than the conv (the paper converts ResNeXt-29);
- a conv that standardises its weight (timm's ``StdConv2d`` family) is replaced only when a
  normalisation layer follows it, which makes its output scale irrelevant, or when a rule
  names its class.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING

from torch import nn
from torch.nn.utils import parametrize

from .fitting import Adaptation, conv_cost, fit_config, format_fix, scconv_cost, suggest_fixes
from .layers import ScConvConfig, StridePolicy, scconv_constraint_error
from .rules import Rule
from .std_conv import WEIGHT_STANDARDIZING_CONVS, following_norm

if TYPE_CHECKING:
    from .plan import ConvSpec

__all__ = ["SkipReason", "Replace", "Skip", "decide", "managed_weight", "structural_ineligibility",
           "TIMM_SAME_SHAPE_CONVS"]

# timm's nn.Conv2d subclasses whose output shape equals a 'same'-padded conv for k=3,
# dilation 1 (timm/layers/conv2d_same.py, timm/layers/std_conv.py).
TIMM_SAME_SHAPE_CONVS = frozenset({"Conv2dSame", "StdConv2d", "StdConv2dSame", "ScaledStdConv2d",
                                   "ScaledStdConv2dSame"})
_DYNAMIC_SAME_PADDING = frozenset({"Conv2dSame", "StdConv2dSame", "ScaledStdConv2dSame"})


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
    SHARED_WEIGHT = "shared_weight"  # another module holds or reads its weight or bias (scconv_surgery.sharing)


@dataclass(frozen=True)
class Replace:
    """The conv can be replaced.

    Attributes:
        config: the SCConv hyperparameters that replace it.
        adapted: the hyperparameters of ``config`` that differ from the configured ones so that
            the conv fits (empty when none does).
        detail: what replaces it, in words.
    """

    config: ScConvConfig
    adapted: tuple[Adaptation, ...]
    detail: str


@dataclass(frozen=True)
class Skip:
    """The conv is not replaced.

    Attributes:
        reason: why, as a closed-set value.
        detail: the reason in words (which constraint failed, and what would change it).
    """

    reason: SkipReason
    detail: str


def managed_weight(conv: nn.Conv2d) -> Skip | None:
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
        return Skip(SkipReason.PARAMETRIZED, f"parametrized ({kinds}, torch.nn.utils.parametrize): SCConv has no "
                                             "such tensor; remove_parametrizations() first to replace it")
    computed = [name for name in ("weight", "bias") if name not in conv._parameters and getattr(conv, name, None) is not None]
    if computed:
        hooks = sorted({type(h).__name__ for h in conv._forward_pre_hooks.values()
                        if hasattr(h, "name") or hasattr(h, "_tensor_name")}) or ["a forward pre-hook"]
        return Skip(SkipReason.WEIGHT_HOOK, f"{' and '.join(computed)} computed by {', '.join(hooks)} (old-style "
                                            "weight_norm / spectral_norm, or pruning): the hook cannot move to SCConv; "
                                            "remove it first to replace this conv")
    hooked = [name for name, p in conv._parameters.items()
              if p is not None and (p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None))]
    if hooked:
        return Skip(SkipReason.WEIGHT_HOOK, f"gradient hooks on its {' and '.join(hooked)} tensor "
                                            "(Tensor.register_hook), which SCConv does not have")
    return None


def _kernel_problem(class_name: str, spec: ConvSpec, *, kernel_asked: bool) -> Skip | None:
    """Why the conv's kernel or groups rule it out (1x1, depthwise, non-square, even, not 3)."""
    kh, kw = spec.kernel_size
    if (kh, kw) == (1, 1):
        return Skip(SkipReason.POINTWISE, "1x1 kernel: SCConv would cost more")
    if spec.groups > 1 and spec.groups == spec.in_channels:
        return Skip(SkipReason.GROUPED, f"depthwise (groups={spec.groups}): SCConv replaces dense and grouped convs, "
                                        "never depthwise ones (it would cost more)")
    if kh != kw:
        return Skip(SkipReason.KERNEL, f"non-square kernel {kh}x{kw}")
    if kh % 2 == 0:
        return Skip(SkipReason.KERNEL, f"even kernel {kh}x{kw}")
    if kh != 3 and not kernel_asked:
        return Skip(SkipReason.KERNEL, f"kernel {kh}x{kw}: 3x3 only, unless a rule sets kernel_size: {kh}")
    if class_name in _DYNAMIC_SAME_PADDING and kh != 3:
        return Skip(SkipReason.KERNEL, f"{class_name} with kernel {kh}x{kw}: output shape matches only for 3x3")
    return None


def structural_ineligibility(conv: nn.Conv2d, spec: ConvSpec, config: ScConvConfig, *, kernel_asked: bool,
                             class_asked: bool) -> Skip | None:
    """Why ``conv`` is not the kind of conv SCConv replaces (a weight something else manages,
    its class, kernel, depthwise groups, dilation, padding, stride), or None. Channels are
    :func:`decide`'s business.

    ``kernel_asked``: an include rule names this conv's kernel size (odd kernels other than 3
    become eligible). ``class_asked``: an include rule names this conv's class (an
    ``nn.Conv2d`` subclass with its own forward becomes eligible).
    """
    managed = managed_weight(conv)
    if managed:
        return managed
    cls = type(conv).__name__
    if type(conv) is not nn.Conv2d and cls not in TIMM_SAME_SHAPE_CONVS and not class_asked:
        return Skip(SkipReason.CONV_SUBCLASS, f"{cls} subclasses nn.Conv2d with its own forward; name it in a "
                                              "rule's conv_class")
    kernel = _kernel_problem(cls, spec, kernel_asked=kernel_asked)
    if kernel:
        return kernel
    kh, kw = spec.kernel_size
    if spec.dilation != (1, 1):
        return Skip(SkipReason.DILATED, f"dilation {spec.dilation[0]}x{spec.dilation[1]}")
    if spec.padding_mode != "zeros":
        return Skip(SkipReason.PADDING, f"padding_mode={spec.padding_mode!r}; only zero padding")
    if not (cls in _DYNAMIC_SAME_PADDING or spec.padding in ((kh // 2, kw // 2), "same")):
        return Skip(SkipReason.PADDING, f"padding {spec.padding} is not kernel_size // 2 = {kh // 2}: SCConv keeps a "
                                        "'same' conv's output size, and this conv's output is smaller")
    sh, sw = spec.stride
    if sh != sw:
        return Skip(SkipReason.STRIDE, f"non-uniform stride {sh}x{sw}")
    if sh > 1 and config.stride_policy is StridePolicy.SKIP:
        return Skip(SkipReason.STRIDE, f"stride {sh} and stride_policy 'skip'")
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
        return f"{problem}; fits with {options} in a rule that matches it (strict paper hyperparameters: no automatic adaptation)"
    tried = f"squeeze_ratio >= {config.squeeze_ratio}" + ("" if groups else f", gwc_groups <= {config.gwc_groups}")
    return f"{problem}; no {tried} fits; {options} would, in a rule that matches it"


def _fit(spec: ConvSpec, config: ScConvConfig, *, strict: bool, note: str) -> Replace | Skip:
    """The hyperparameters that replace the conv (adapted unless ``strict``), or why none do.

    A grouped conv is replaced only when the SCConv whose GWC takes its groups is cheaper in
    both parameters and MACs. ``note`` ends the detail of a replacement.
    """
    groups = spec.groups if spec.groups > 1 else None
    fitted = fit_config(spec.in_channels, spec.out_channels, config, groups=groups, strict=strict)
    if fitted is None:
        return Skip(SkipReason.GROUPED if groups else SkipReason.CHANNELS, _unfit_detail(spec, config, strict=strict))
    chosen, adapted = fitted
    if groups:
        k = spec.kernel_size[0]
        dense = conv_cost(spec.in_channels, spec.out_channels, k, groups=groups, bias=spec.bias)
        ours = scconv_cost(spec.in_channels, spec.out_channels, k, spec.stride[0], chosen)
        if ours.params >= dense.params or ours.macs_per_position >= dense.macs_per_position:
            return Skip(SkipReason.GROUPED, f"grouped (groups={groups}): an SCConv whose GWC takes the {groups} "
                                            f"groups costs {ours}, the conv {dense}; it is replaced only when SCConv "
                                            "costs less")
    return Replace(chosen, adapted, _replaced_detail(adapted, note))


def _replaced_detail(adapted: Sequence[Adaptation], note: str) -> str:
    detail = "replaced by SCConv"
    if adapted:
        detail += "; adapted " + "; ".join(str(a) for a in adapted)
    return detail + (f"; {note}" if note else "")


def _standardization(model: nn.Module, name: str, class_name: str, *, class_asked: bool) -> Skip | str:
    """For a weight-standardising conv: a skip when no normalisation follows it and no rule
    names its class, else the note its replacement's detail ends with ("" for other convs)."""
    if class_name not in WEIGHT_STANDARDIZING_CONVS:
        return ""
    if class_asked:
        return f"{class_name}'s weight standardisation is dropped: an include rule names the class"
    norm = following_norm(model, name)
    if norm is None:
        return Skip(SkipReason.WEIGHT_STANDARDIZED, (
            f"{class_name} standardises its weight and no normalisation layer follows it, so SCConv would change "
            f"the output scale; name it in an include rule's conv_class ({class_name}) to replace it anyway"))
    return f"{class_name}'s weight standardisation is dropped, and {norm} normalises the output after it"


def decide(model: nn.Module, name: str, conv: nn.Conv2d, spec: ConvSpec, config: ScConvConfig, *,
           includes: Sequence[Rule], strict: bool, shared: str | None = None) -> Replace | Skip:
    """Whether the conv ``name`` of ``model`` can be replaced, with which hyperparameters, or why not.

    Rule selection is not applied here: the caller turns a :class:`Replace` of a conv that no
    rule selects into a skip (``excluded`` / ``not_selected``).

    Args:
        model: the model, read to find the normalisation that follows a weight-standardising conv.
        name: the conv's full dotted name.
        conv: the conv.
        spec: its constructor arguments (:meth:`~scconv_surgery.plan.ConvSpec.from_conv`).
        config: the hyperparameters the matching rules configure for it.
        includes: the include rules that match it: one naming its kernel size or class makes
            an odd kernel other than 3, or an ``nn.Conv2d`` subclass, eligible.
        strict: never adapt hyperparameters to the conv's channels.
        shared: how other code holds or reads the conv's parameters
            (:func:`~scconv_surgery.sharing.shared_parameter_uses`), or None: a conv that is
            otherwise replaceable is then skipped as ``shared_weight``, since SCConv has no such
            tensors (no rule overrides this).

    Returns:
        :class:`Replace` with the (possibly adapted) hyperparameters, or :class:`Skip` with the
        reason and the detail.
    """
    cls = type(conv).__name__
    class_asked = any(r.conv_class == cls for r in includes)
    skip = structural_ineligibility(conv, spec, config, kernel_asked=any(r.kernel_size for r in includes),
                                    class_asked=class_asked)
    if skip is not None:
        return skip
    if shared:
        return Skip(SkipReason.SHARED_WEIGHT, f"{shared}: SCConv has no weight or bias, so that code would "
                                              "break (or train a tensor the model no longer uses); left as it is")
    note = _standardization(model, name, cls, class_asked=class_asked)
    if isinstance(note, Skip):
        return note
    return _fit(spec, config, strict=strict, note=note)
