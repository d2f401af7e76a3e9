"""scconv-surgery: replace the convolutions of a model with SCConv (Li, Wen and He, CVPR 2023).

The main job, one step per module: :func:`create_model` (models) -> :func:`plan_conversion`
(plan) -> :func:`apply_plan` (apply) -> :func:`compare_counts` (counting) ->
:func:`save_checkpoint` / :func:`load` (checkpoint). :func:`convert` plans and applies in one
call on any ``nn.Module``; :func:`calibrate` fits the new layers to the convs they replaced,
without labels; :func:`optimize_for_inference` prepares a converted model for deployment.

The top level holds what most users need. Everything else is importable from its module and
documented there: ``scconv_surgery.pipeline.run_conversion`` (``scconv convert`` as a
function), ``scconv_surgery.finetune`` (parameter groups, stale norms), ``scconv_surgery.rules``,
``scconv_surgery.images``, ``scconv_surgery.survey``, ``scconv_surgery.errors`` (every error).
"""
from .apply import apply_plan, convert
from .calibration import calibrate
from .checkpoint import Checkpoint, load, read_checkpoint, save_checkpoint
from .counting import compare_counts
from .errors import (
    CheckpointError,
    NothingSelectedError,
    PretrainedWeightsError,
    ScconvError,
    UnknownModelError,
    UnmatchedRuleError,
    WeightsFileError,
)
from .inference import optimize_for_inference
from .layers import ScConv, ScConvConfig
from .manifest import Manifest
from .models import WeightsSource, create_model
from .plan import Decision, Plan, plan_conversion
from .rules import Rule
from .verify import verify_checkpoint

__version__ = "0.1.0"

__all__ = [
    # the main job
    "convert", "plan_conversion", "apply_plan", "create_model", "compare_counts", "calibrate",
    "optimize_for_inference", "save_checkpoint", "read_checkpoint", "load", "verify_checkpoint",
    # values
    "ScConv", "ScConvConfig", "Rule", "Plan", "Decision", "Manifest", "Checkpoint", "WeightsSource",
    # the errors users catch (every error derives from ScconvError; the rest are in scconv_surgery.errors)
    "ScconvError", "UnknownModelError", "PretrainedWeightsError", "WeightsFileError", "CheckpointError",
    "NothingSelectedError", "UnmatchedRuleError",
]
