"""scconv-surgery: replace the convolutions of a model with SCConv (Li, Wen and He, CVPR 2023).

The pipeline, one step per module: :func:`create_model` (models; weights files in weights) ->
:func:`plan_conversion` (plan) -> :func:`apply_plan` (apply) -> :func:`compare_counts`
(counting) -> :func:`save_checkpoint` / :func:`load` (checkpoint). :func:`fit_config` (fitting)
adapts SCConv's hyperparameters to a conv's channels; :func:`survey_models` (survey) plans
whole zoos on the meta device. :func:`convert` plans and
applies in one call on any ``nn.Module``; :func:`run_conversion` (pipeline) is ``scconv
convert`` as a function, :func:`verify_checkpoint` (verify) is ``scconv verify``.
:func:`calibrate` (calibration) fits the new layers to the replaced convs without labels, on
images read by :func:`load_images` (images); :func:`calibrate_checkpoint` (calibration_run) is
``scconv calibrate``.
"""
from ._probe import tensor_leaves
from .apply import apply_plan, build_replacement, check_shapes, convert
from .calibration import (
    BatchNormUpdate,
    CalibrationResult,
    CalibrationStrategy,
    LayerCalibration,
    calibrate,
    recompute_batchnorm_stats,
)
from .calibration_run import (
    CalibrationConfig,
    CalibrationRun,
    CheckpointCalibration,
    calibrate_checkpoint,
    calibrate_from_folder,
    check_calibration_images,
)
from .checkpoint import build_manifest, check_output_path, load, read_checkpoint, save_checkpoint
from .counting import CountReport, Counts, compare_counts, count_model
from .errors import (
    CalibrationError,
    CheckpointError,
    FactoryError,
    ImageDataError,
    InvalidOptionError,
    InvalidRuleError,
    ModelArgumentError,
    ModelForwardError,
    NothingSelectedError,
    OutputPathError,
    PlanMismatchError,
    PretrainedWeightsError,
    RulesFileError,
    ScconvError,
    ShapeMismatchError,
    UnknownModelError,
    UnmatchedRuleError,
    WeightsFileError,
)
from .finetune import (
    gradient_free_parameters,
    new_parameter_names,
    param_groups,
    reset_batchnorm_stats,
    stale_batchnorms,
)
from .images import ImageChoice, check_images, choose_images, find_images, image_transform, load_images, read_images
from .inference import optimize_for_inference
from .fitting import Adaptation, fit_config
from .layers import CRU, SRU, ScConv, ScConvConfig, StridePolicy, Variant
from .models import ModelSource, build_model, check_model_kwargs, create_model, default_input_size
from .pipeline import CheckpointReport, ConversionResult, recount_checkpoint, run_conversion
from .plan import Action, ConvSpec, Decision, Plan, SkipReason, plan_conversion
from .rules import PRESETS, Rule, RuleAction
from .rules_file import load_rules_file
from .survey import Coverage, ModelSurvey, default_cache_dir, list_model_names, survey_model, survey_models
from .verify import Check, VerifyResult, verify_checkpoint
from .weights import WeightsFile, load_weights_file, read_state_dict, read_weights, strip_wrapper_prefixes

__version__ = "0.1.0"

__all__ = [
    "convert", "plan_conversion", "apply_plan", "build_replacement", "load", "save_checkpoint",
    "read_checkpoint", "build_manifest", "count_model", "compare_counts", "create_model",
    "default_input_size", "ScConv", "SRU", "CRU", "ScConvConfig", "Variant", "StridePolicy",
    "Rule", "RuleAction", "Plan", "Decision", "ConvSpec", "Action", "SkipReason", "Counts",
    "CountReport", "ModelSource", "ScconvError", "UnknownModelError", "PretrainedWeightsError",
    "WeightsFileError", "InvalidRuleError", "UnmatchedRuleError", "NothingSelectedError",
    "OutputPathError", "CheckpointError", "PlanMismatchError", "ShapeMismatchError",
    "RulesFileError", "ModelArgumentError", "FactoryError", "check_shapes", "load_rules_file",
    "param_groups", "new_parameter_names", "stale_batchnorms", "reset_batchnorm_stats", "optimize_for_inference",
    "build_model", "load_weights_file", "read_state_dict", "PRESETS", "InvalidOptionError", "ModelForwardError",
    "run_conversion", "ConversionResult", "recount_checkpoint", "CheckpointReport", "verify_checkpoint",
    "VerifyResult", "Check", "tensor_leaves", "WeightsFile", "read_weights", "strip_wrapper_prefixes",
    "check_model_kwargs", "gradient_free_parameters", "check_output_path", "Adaptation", "fit_config", "Coverage",
    "ModelSurvey", "list_model_names", "survey_model", "survey_models", "default_cache_dir",
    "calibrate", "recompute_batchnorm_stats", "CalibrationStrategy", "BatchNormUpdate", "LayerCalibration",
    "CalibrationResult", "CalibrationConfig", "CalibrationRun", "CheckpointCalibration", "calibrate_from_folder",
    "calibrate_checkpoint", "check_calibration_images", "find_images", "choose_images", "check_images",
    "image_transform", "load_images", "read_images", "ImageChoice", "ImageDataError", "CalibrationError",
]
