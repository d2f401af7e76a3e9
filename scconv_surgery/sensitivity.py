"""Label-free sensitivity: how much replacing one conv alone changes the network's output.

For each eligible conv, a copy of the trained network gets that one replacement, a short
calibration of that one layer (:func:`~scconv_surgery.calibration.calibrate` with
``layers=[name]``, BatchNorm statistics re-estimated only right after it), and is then compared with
the original on unlabeled images:

- a classifier (the output is one ``(N, K)`` tensor): the KL divergence
  ``KL(softmax(original) || softmax(converted))`` of the logits, averaged over images (nats);
- any other model: the relative error ``||converted - original|| / ||original||`` over every tensor
  of its (possibly nested) output (:func:`~scconv_surgery._probe.tensor_leaves`).

The score feeds :func:`~scconv_surgery.selection.select_layers`, which then meets a budget with the
least summed sensitivity (in the spirit of ModelOpt's AutoQuantize). Seeded and repeatable: the same
images, weights and seed give the same scores. The scores of random weights mean nothing, so they
are refused.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._probe import eval_mode, noop, tensor_leaves
from .apply import apply_plan, copy_model
from .calibration import DEFAULT_LR, BatchNormUpdate, calibrate
from .errors import SelectionError
from .models import ModelSource
from .plan import Plan

__all__ = ["check_sensitivity_source", "output_change", "layer_sensitivities", "sensitivities_from_folder",
           "DEFAULT_STEPS", "DEFAULT_IMAGES"]

DEFAULT_STEPS = 30
DEFAULT_IMAGES = 64


def check_sensitivity_source(source: ModelSource) -> None:
    """Raises:
        SelectionError (name ``"weights"``): the model has random weights: the output change of a
            random network says nothing about a trained one.
    """
    if not source.weights.trained:
        raise SelectionError("sensitivity needs trained weights (pretrained or a weights file): the output change "
                             "of a randomly initialised network says nothing", "weights")


def _outputs(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> list[Any]:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    outputs = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(images), batch_size):
            out = model(images[start:start + batch_size].to(device=device, dtype=dtype))
            outputs.append([t.float().cpu() for _, t in tensor_leaves(out)])
    return outputs


def output_change(reference: Sequence[Sequence[torch.Tensor]], changed: Sequence[Sequence[torch.Tensor]]) -> float:
    """KL divergence of the softmax for a classifier's logits (one ``(N, K)`` tensor per batch),
    else the relative L2 error over every output tensor.

    Args:
        reference, changed: per batch, the output's tensors (:func:`~scconv_surgery._probe.tensor_leaves`).
    """
    if all(len(batch) == 1 and batch[0].dim() == 2 for batch in reference):
        p = torch.cat([batch[0] for batch in reference]).log_softmax(-1)
        q = torch.cat([batch[0] for batch in changed]).log_softmax(-1)
        return float(F.kl_div(q, p, log_target=True, reduction="batchmean"))
    num = sum(float((c - r).pow(2).sum()) for rb, cb in zip(reference, changed) for r, c in zip(rb, cb))
    den = sum(float(r.pow(2).sum()) for rb in reference for r in rb)
    return (num / den) ** 0.5 if den > 0 else 0.0


def layer_sensitivities(original: nn.Module, plan: Plan, images: torch.Tensor, *, names: Sequence[str] | None = None,
                        steps: int = DEFAULT_STEPS, batch_size: int = 16, lr: float = DEFAULT_LR, seed: int = 0,
                        device: torch.device | str | None = None,
                        on_layer: Callable[[str, int, int], None] = noop) -> dict[str, float]:
    """Score each replaced conv of ``plan`` by the output change of replacing it alone.

    Args:
        original: the trained base model (read, never changed).
        plan: its plan; each replaced conv is scored on its own.
        images: unlabeled images ``(N, C, H, W)`` preprocessed for the model
            (:func:`~scconv_surgery.images.load_images`); used to calibrate and to compare.
        names: score only these (default: every conv ``plan`` replaces).
        steps, batch_size, lr: the calibration of the one layer (see
            :func:`~scconv_surgery.calibration.calibrate`; ``lr`` its default, the rate its schedule
            was measured with); ``batch_size`` is also the forward batch.
        seed: seeds the replacement's initialisation and the calibration.
        device: where to compute (default: the CPU).
        on_layer: called as ``(name, done, total)`` after each layer.

    Returns:
        Name -> score (KL divergence in nats for a classifier, else a relative error; 0 = no change).

    Raises:
        CalibrationError: see :func:`~scconv_surgery.calibration.calibrate`.
    """
    device = torch.device(device or "cpu")
    wanted = [d for d in plan.replaced if names is None or d.name in names]
    original = original.to(device)
    reference = _outputs(original, images, batch_size, device)
    scores = {}
    for done, decision in enumerate(wanted, 1):
        single = Plan((decision,), plan.rules, plan.rule_matches)
        converted = apply_plan(copy_model(original), single, seed=seed)
        calibrate(original, converted, images, layers=[decision.name], steps=steps, batch_size=batch_size, lr=lr,
                  batchnorm=BatchNormUpdate.AFTER_REPLACED, device=device, seed=seed)
        scores[decision.name] = output_change(reference, _outputs(converted, images, batch_size, device))
        on_layer(decision.name, done, len(wanted))
    return scores


def sensitivities_from_folder(original: nn.Module, source: ModelSource, plan: Plan, data: str | os.PathLike,
                              input_size: tuple[int, int, int], *, num_images: int = DEFAULT_IMAGES,
                              steps: int = DEFAULT_STEPS, batch_size: int = 16, seed: int = 0,
                              device: torch.device | str | None = None,
                              on_layer: Callable[[str, int, int], None] = noop) -> dict[str, float]:
    """:func:`layer_sensitivities` on a folder of images, preprocessed as the model expects.

    Raises:
        SelectionError: ``source`` has random weights (:func:`check_sensitivity_source`), checked first.
        ImageDataError: the folder is missing, empty, or holds a file that is not an image.
    """
    from .images import image_transform, load_images

    check_sensitivity_source(source)
    images, _ = load_images(data, image_transform(original, source, input_size), num_images=num_images, seed=seed,
                            dtype=torch.float32)
    return layer_sensitivities(original, plan, images, steps=steps, batch_size=batch_size, seed=seed,
                               device=device, on_layer=on_layer)
