"""Applying a :class:`~scconv_surgery.plan.Plan`: build each replacement and swap it in.

:func:`apply_plan` mutates the model it is given (and says so); :func:`convert` plans and
applies on a deep copy unless ``inplace=True``.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._probe import eval_mode, example_input
from .errors import PlanMismatchError, ShapeMismatchError
from .finetune import gradient_free_parameters
from .layers import ScConv, ScConvConfig
from .plan import ConvSpec, Decision, Plan, plan_conversion
from .probe import ModelProbe, as_probe, probe_model
from .rules import Rule

__all__ = ["build_replacement", "apply_plan", "convert", "check_shapes", "copy_model"]

# The hooks a replacement takes over from its conv: they see the module's input, output and their
# gradients, which a drop-in keeps. Hooks on the conv's own tensors (parametrizations, the old-style
# weight_norm / spectral_norm / pruning pre-hooks, tensor hooks) are planned as skip reasons instead;
# state_dict hooks describe the conv's own keys, which the replacement does not have. The replacement
# takes over the conv's hook dictionaries themselves (not copies): a RemovableHandle holds weak
# references to the dictionaries its hook was registered in, so a handle obtained from the conv
# before the swap still removes the hook from the replacement.
CARRIED_HOOKS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                 "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks",
                 "_backward_hooks")


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that also works while a hook keeps a computed tensor on a module.

    ``copy.deepcopy`` refuses tensors that are not graph leaves, such as the weight that the
    old-style ``torch.nn.utils.weight_norm`` and ``spectral_norm`` (or pruning) store on the
    module after computing it with grad enabled; the copy gets that tensor detached (its hook
    recomputes it on the next forward).
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def build_replacement(decision: Decision, *, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> ScConv:
    """The :class:`ScConv` that replaces the conv of a ``replace`` decision.

    Raises:
        ValueError: the decision is not a replacement.
    """
    if not decision.is_replaced or decision.config is None:
        raise ValueError(f"{decision.name!r} is not planned for replacement")
    spec = decision.spec
    return ScConv(spec.in_channels, spec.out_channels, kernel_size=spec.kernel_size[0],
                  stride=spec.stride[0], config=decision.config, device=device, dtype=dtype)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_plan(model: nn.Module, plan: Plan, *, seed: int | None = 0) -> nn.Module:
    """Replace, **in place**, every conv that ``plan`` marks ``replace`` by SCConv.

    Each replacement takes the conv's device, dtype, train/eval mode and its module hooks
    (forward pre- and post-hooks, full backward hooks: :data:`CARRIED_HOOKS`; a handle
    returned when a hook was registered on the conv removes it from the replacement); a conv under
    several names (aliases) gets one replacement set under all of them. Parameters that can
    never receive a gradient (:func:`~scconv_surgery.finetune.gradient_free_parameters`, the ``seed``
    variant's group norm) are created with ``requires_grad=False``. New parameters
    are initialised on the CPU from ``torch.manual_seed(seed)``, in plan order, then moved, so
    one plan and seed always give the same tensors on any device (the global RNG is left as
    it was).

    Args:
        model: the model the plan was made for; it is modified.
        plan: from :func:`~scconv_surgery.plan.plan_conversion` or a checkpoint's manifest.
        seed: initialisation seed; None draws from the current global RNG.

    Returns:
        ``model`` itself.

    Raises:
        PlanMismatchError: a planned name is not a conv of ``model`` with the recorded spec (the
            model is left unchanged).
    """
    targets = []
    for decision in plan.replaced:  # check everything before mutating anything
        try:
            conv = model.get_submodule(decision.name)
        except AttributeError:
            conv = None
        if not isinstance(conv, nn.Conv2d) or ConvSpec.from_conv(conv) != decision.spec:
            found = type(conv).__name__ if conv is not None else "nothing"
            raise PlanMismatchError(decision.name, f"is {found}, not the planned conv "
                                    f"{decision.spec.to_dict()}: the plan does not fit this model")
        targets.append((decision, conv))
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for decision, conv in targets:
            is_meta = conv.weight.is_meta
            layer = build_replacement(decision, device="meta" if is_meta else "cpu")
            layer = layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
            layer.train(conv.training)
            for name in gradient_free_parameters(layer):  # the seed's group norm: no gradient ever reaches it
                layer.get_parameter(name).requires_grad_(False)
            for attr in CARRIED_HOOKS:  # the conv's own dicts, so that its hooks' handles still remove them
                own = getattr(conv, attr)
                own.update(getattr(layer, attr))  # empty for a new ScConv; kept should it ever hold any
                layer.__dict__[attr] = own
            layer._is_full_backward_hook = conv._is_full_backward_hook
            for name in (decision.name, *decision.aliases):
                _set_submodule(model, name, layer)
    return model


def check_shapes(base: nn.Module | ModelProbe, converted: nn.Module, plan: Plan,
                 input_size: tuple[int, int, int] | None = None) -> None:
    """Check that every replacement returns the shape its conv returned.

    The base model's probe (:class:`~scconv_surgery.probe.ModelProbe`) gives each planned conv's
    input and output shapes at its first call, batch dimension included (a model may call a conv
    on another batch size than its input's); each replacement in ``converted`` then runs alone on
    a zero input of its conv's input shape, on its own device and dtype, so a mismatch is pinned
    to its layer and ``converted`` never runs a whole forward here. Eval mode and no grad; no hook
    or mode change is left behind. A planned conv that the forward never calls is not checked.

    Args:
        base: a probe of the base model, or the base model itself, probed here with
            :func:`~scconv_surgery.probe.probe_model` at ``input_size`` (one forward).
        converted: the model with the replacements (same module names as the base).
        plan: the plan ``converted`` was made with.
        input_size: ``(C, H, W)``; only (and then required) with a model as ``base``.

    Raises:
        ShapeMismatchError: a replacement's output shape differs (names the first such layer).
        ModelForwardError: ``base`` (a model) fails on the dummy input (wrong channels, or not an
            image model).
        ValueError: ``base`` is a model and ``input_size`` is missing, or a probe and it is given.
    """
    base = as_probe(base, input_size=input_size, caller="check_shapes")
    for decision in plan.replaced:
        call = base.first_call(decision.name)
        if call is None:  # not called by the model's forward
            continue
        module = converted.get_submodule(decision.name)
        with eval_mode(module), torch.no_grad():
            actual = tuple(module(example_input(module, call.input_shape)).shape)
        if actual != call.output_shape:
            raise ShapeMismatchError(decision.name, call.output_shape, actual)


def convert(model: nn.Module, rules: Sequence[Rule] = (), *, config: ScConvConfig | None = None,
            strict_paper: bool = False, seed: int | None = 0, inplace: bool = False,
            input_size: tuple[int, int, int] | None = None) -> tuple[nn.Module, Plan]:
    """Plan and apply SCConv replacements on any ``nn.Module``.

    Args:
        model: the model to convert.
        rules: include / exclude rules; empty replaces every eligible conv.
        config: SCConv hyperparameters (default: the paper's).
        strict_paper: never adapt hyperparameters to a conv's channels (see
            :func:`~scconv_surgery.plan.plan_conversion`).
        seed: initialisation seed of the new modules.
        inplace: modify ``model`` itself; by default a deep copy is converted and ``model`` is
            left untouched.
        input_size: ``(C, H, W)``: run ``model`` once on a dummy batch of this size before
            planning (:func:`~scconv_surgery.probe.probe_model`), so that a conv whose parameters
            another module's forward reads (``F.conv2d(x, self.conv.weight)``) is skipped as
            ``shared_weight``; None plans without a forward, which finds only parameters that
            another module holds (tied weights, shared storage).

    Returns:
        ``(converted model, plan)``.

    Raises:
        InvalidRuleError: a rule cannot be evaluated.
        ModelForwardError: ``input_size`` is given and the forward fails on the dummy batch.

    Example:
        >>> import torchvision
        >>> model, plan = convert(torchvision.models.resnet50())
        >>> len(plan.replaced)  # the 3x3 conv of each of the 16 bottlenecks
        16
    """
    probe = probe_model(model, input_size) if input_size is not None else None
    plan = plan_conversion(model, rules, config=config, strict_paper=strict_paper, probe=probe)
    target = model if inplace else copy_model(model)
    return apply_plan(target, plan, seed=seed), plan
