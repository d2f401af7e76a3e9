"""``scconv convert MODEL``: replace convs with SCConv, report, and save a checkpoint."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from scconv_surgery.calibration import CalibrationStrategy
from scconv_surgery.calibration_run import CalibrationConfig
from scconv_surgery.errors import ModelArgumentError, SelectionError
from scconv_surgery.layers import ScConvConfig, StridePolicy, Variant
from scconv_surgery.models import ModelSource, WeightsSource, check_model_kwargs
from scconv_surgery.pipeline import DryRun, WriteCheckpoint, run_conversion
from scconv_surgery.profiling import ProfileSettings
from scconv_surgery.rules import PRESETS
from scconv_surgery.selection import DEFAULT_MARGIN, SelectionConfig

from .errors import InvalidOptionError
from .output import Output
from .params import (
    CALIBRATE_BATCH_HELP,
    CALIBRATE_DEVICE_HELP,
    CALIBRATE_IMAGES_HELP,
    CALIBRATE_STEPS_HELP,
    CALIBRATE_STRATEGY_HELP,
    FLAG,
    AllowRandomWeightsOpt,
    CountElementwiseOpt,
    DebugOpt,
    ForceOpt,
    HelpOpt,
    InputSizeOpt,
    JsonOpt,
    StrictPaperOpt,
    SummaryOpt,
    TrustPickleOpt,
    check_device_option,
    check_seed,
    choices,
    parse_input_size,
)
from .render.convert import render_conversion
from .render.profile import render_selection
from .rules import assemble_rules

Preset = Enum("Preset", {name: name for name in PRESETS}, type=str)  # type: ignore[misc]


class Select(str, Enum):
    """``--select``'s choices."""

    FASTER = "faster"


BUDGET_FLAGS = {"target_macs": "--target-macs", "target_params": "--target-params",
                "target_latency": "--target-latency"}
_BUDGET_HELP = ("Replace the convs that bring the {what} to at most this fraction (0 < F <= 1) of the original, "
                "choosing the least predicted latency (the least sensitivity with a --profile that has it).")


def selection_config(*, select: Select | None, margin: float | None, budgets: dict[str, float | None],
                     device: str | None, profile: Path | None, write_rules: Path | None) -> SelectionConfig | None:
    """The measured selection the options ask for, or None; options that need one refused without it.

    Raises:
        InvalidOptionError: two criteria, a budget outside (0, 1], a margin outside [0, 1), or --device /
            --profile / --write-rules / --select-margin without --select or a --target-* option.
    """
    given = [flag for key, flag in BUDGET_FLAGS.items() if budgets[key] is not None]
    if select is not None:
        given.insert(0, "--select")
    if len(given) > 1:
        raise InvalidOptionError(given[1], f"{given[0]} and {given[1]} are exclusive; give one criterion")
    if not given:
        for flag, value in (("--device", device), ("--profile", profile), ("--write-rules", write_rules),
                            ("--select-margin", margin)):
            if value is not None:
                raise InvalidOptionError(flag, "needs --select faster or a --target-* budget")
        return None
    if margin is not None and select is None:
        raise InvalidOptionError("--select-margin", "goes with --select faster")
    criterion = "faster" if select is not None else next(k for k in BUDGET_FLAGS if budgets[k] is not None)
    try:
        return SelectionConfig(criterion, budgets.get(criterion), DEFAULT_MARGIN if margin is None else margin,
                               settings=ProfileSettings(device=device or "cpu"), profile=profile,
                               write_rules=write_rules)
    except SelectionError as err:
        flag = BUDGET_FLAGS.get(err.name or "", "--select-margin")
        raise InvalidOptionError(flag, err.problem) from err


def parse_model_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["output_stride=8", "drop_rate=0.1"]`` -> ``{"output_stride": 8, "drop_rate": 0.1}``.

    Values are read as YAML: ``8`` is an int, ``0.1`` a float, ``true`` a bool, ``null`` None,
    ``[1, 2]`` a list, anything else a string. Only values that JSON carries unchanged are taken
    (the checkpoint records them): YAML's dates, ``.nan`` and ``.inf`` are refused.
    """
    kwargs: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InvalidOptionError("--model-kwargs", f"{item!r} is not KEY=VALUE (e.g. output_stride=8)")
        if key in kwargs:
            raise InvalidOptionError("--model-kwargs", f"{key!r} is given twice; give it once")
        try:
            kwargs[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as err:
            raise InvalidOptionError("--model-kwargs", f"{item!r}: the value is not valid YAML "
                                     f"({str(err).splitlines()[0]}); quote text values") from err
        try:
            check_model_kwargs("--model-kwargs", {key: kwargs[key]})
        except ModelArgumentError as err:
            problem = err.problem
            raise InvalidOptionError("--model-kwargs", f"{item!r}: {problem}. To pass it as text, quote it for "
                                     f"YAML inside the shell's quotes: --model-kwargs \"{key}='{value}'\"") from err
    return kwargs


def convert(
    model: Annotated[str | None, typer.Argument(
        metavar="MODEL", help="Model name: 'resnet50' (timm first, then torchvision), 'timm:NAME' (with a "
        "pretrained tag: timm:resnet50.a1_in1k), 'torchvision:NAME', 'hf-hub:ORG/REPO' (timm, from the Hugging "
        "Face cache first), 'ultralytics:yolov8n.yaml' (a YOLO model YAML, shipped or a path; needs the 'yolo' extra) "
        "or 'ultralytics:FILE.pt' (a YOLO checkpoint, with --trust-pickle). Omit it with --factory.",
        show_default=False)] = None,
    *,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", metavar="FILE", help="Checkpoint to write: .pt/.pth or .safetensors. Required unless --dry-run.",
        show_default=False,
        dir_okay=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", metavar=FLAG, help="Plan and count, print what would change and what would be saved; write "
        "nothing.")] = False,
    json_output: JsonOpt = False,
    include: Annotated[list[str] | None, typer.Option(
        "--include", "-i", metavar="PATTERN", help="Replace only convs whose full dotted name matches this glob ('*' crosses dots) "
        "or 're:REGEX' (full match). Repeatable; never comma-split.", show_default=False)] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", "-x", metavar="PATTERN", help="Never replace convs whose name matches this pattern; exclude wins over include. "
        "Repeatable.", show_default=False)] = None,
    preset: Annotated[str | None, typer.Option(
        **choices(Preset, "preset"), help="Rules that go first: 'paper' = the paper's ResNet placement (conv2 of each "
        "residual block); 'all' = every eligible conv (the default); 'yolo' = the bottleneck convs of ultralytics' "
        "C2f / C3k2 blocks.", show_default=False)] = None,
    rules_file: Annotated[Path | None, typer.Option(
        "--rules", metavar="FILE", help="Rules file (.yaml, .yml, .json or .toml): ordered include/exclude rules with structural filters "
        "and hyperparameters. --include/--exclude add to its rules.", show_default=False, dir_okay=False)] = None,
    variant: Annotated[str, typer.Option(
        **choices(Variant, "variant"), help="'paper': the paper's equations. 'seed': the unofficial ScConv implementation that circulates in "
        "blog posts, defects included.")] = Variant.PAPER.value,
    stride_policy: Annotated[str, typer.Option(
        **choices(StridePolicy, "stride policy"), help="Strided convs: 'inside' strides GWC/PWC1/PWC2 and pools the reused channels; 'pool' average-pools "
        "first; 'skip' leaves them alone.")] = StridePolicy.INSIDE.value,
    strict_paper: StrictPaperOpt = False,
    input_size: InputSizeOpt = None,
    pretrained: Annotated[bool, typer.Option(
        "--pretrained", metavar=FLAG, help="Start from the library's pretrained weights (from its cache, else downloaded).")] = False,
    weights: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Start from a local weights file: a state_dict (.pt, .pth, .bin, .safetensors) or a timm/torchvision "
        "training checkpoint.", show_default=False, dir_okay=False)] = None,
    weights_key: Annotated[str | None, typer.Option(
        metavar="KEY", help="The entry of a training checkpoint to read with --weights, e.g. 'state_dict' for the live "
        "weights of a timm checkpoint that also holds 'state_dict_ema'. Default: the EMA when there is one "
        "(state_dict_ema, model_ema), else state_dict, else model, as timm's load_checkpoint picks.",
        show_default=False)] = None,
    num_classes: Annotated[int | None, typer.Option(
        metavar="N", help="Classifier size passed to the model constructor (a YOLO model's 'nc').", min=1,
        max=1_000_000, show_default=False)] = None,
    trust_pickle: TrustPickleOpt = False,
    yolo_out: Annotated[Path | None, typer.Option(
        "--yolo-out", metavar="FILE.pt", help="Also write the converted ultralytics model in ultralytics' own .pt "
        "format (a pickle, which YOLO(FILE.pt) loads, predicts, validates and exports), with the manifest inside.",
        show_default=False, dir_okay=False)] = None,
    factory: Annotated[str | None, typer.Option(
        metavar="MODULE:FUNCTION", help="Build your own model: the function (e.g. mypkg.models:build) is called "
        "with --model-kwargs and --num-classes; the working directory is importable. Recorded so that load() "
        "rebuilds it.", show_default=False)] = None,
    model_kwargs: Annotated[list[str] | None, typer.Option(
        "--model-kwargs", metavar="KEY=VALUE", help="Constructor argument KEY=VALUE (value read as YAML: 8, 0.1, true, text), e.g. "
        "output_stride=8. Repeatable; recorded in the checkpoint.", show_default=False)] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed (0 to 2**63 - 1) that initialises the new SCConv "
                                      "parameters (and, with --calibrate, chooses the images and orders the batches).",
                                      min=0)] = 0,
    force: ForceOpt = False,
    count_elementwise: CountElementwiseOpt = False,
    reset_bn_stats: Annotated[bool, typer.Option(
        "--reset-bn-stats", metavar=FLAG, help="Reset the running statistics of the BatchNorm right after each replaced conv "
        "(they were gathered on the dense conv's outputs); the report lists them either way.")] = False,
    allow_unmatched: Annotated[bool, typer.Option(
        "--allow-unmatched", metavar=FLAG, help="Do not fail (exit 3) when an --include pattern matches no conv.")] = False,
    summary: SummaryOpt = False,
    calibrate: Annotated[Path | None, typer.Option(
        "--calibrate", metavar="DIR", help="Before saving, fit each SCConv to reproduce the conv it replaces on this "
        "folder of images (searched recursively; no labels), then re-estimate BatchNorm statistics. Needs "
        "--pretrained or --weights.", show_default=False)] = None,
    calibrate_images: Annotated[int, typer.Option(metavar="N", help=CALIBRATE_IMAGES_HELP, min=1)] = CalibrationConfig.num_images,
    calibrate_steps: Annotated[int, typer.Option(metavar="N", help=CALIBRATE_STEPS_HELP, min=0)] = CalibrationConfig.steps,
    calibrate_batch_size: Annotated[int, typer.Option(metavar="N", help=CALIBRATE_BATCH_HELP, min=1)] = CalibrationConfig.batch_size,
    calibrate_strategy: Annotated[str, typer.Option(**choices(CalibrationStrategy, "strategy", "STRATEGY"), help=CALIBRATE_STRATEGY_HELP)] = CalibrationConfig.strategy.value,
    calibrate_device: Annotated[str | None, typer.Option(metavar="DEVICE", help=CALIBRATE_DEVICE_HELP, show_default=False)] = None,
    allow_random_weights: AllowRandomWeightsOpt = False,
    select: Annotated[Select | None, typer.Option(
        "--select", metavar="faster", help="Measure each conv the rules select and its SCConv on --device, and replace "
        "only those where SCConv is faster (by --select-margin); the report adds the predicted and the measured "
        "end-to-end latency.", show_default=False)] = None,
    select_margin: Annotated[float | None, typer.Option(
        metavar="F", help=f"How much faster SCConv must be for --select faster (default {DEFAULT_MARGIN}: at most "
        f"{1 - DEFAULT_MARGIN:g}x the dense conv).", show_default=False)] = None,
    target_macs: Annotated[float | None, typer.Option(
        metavar="F", help=_BUDGET_HELP.format(what="MACs"), show_default=False)] = None,
    target_params: Annotated[float | None, typer.Option(
        metavar="F", help=_BUDGET_HELP.format(what="parameters"), show_default=False)] = None,
    target_latency: Annotated[float | None, typer.Option(
        metavar="F", help="Replace the convs that bring the predicted latency to at most this fraction (0 < F <= 1) "
        "of the original, the biggest savings (or, with sensitivities, the least sensitive) first.",
        show_default=False)] = None,
    device: Annotated[str | None, typer.Option(
        metavar="DEVICE", help="Where --select / --target-* measure: cpu, cuda, cuda:1, ... (default cpu; checked "
        "before any work).", show_default=False)] = None,
    profile_file: Annotated[Path | None, typer.Option(
        "--profile", metavar="FILE", help="Reuse a profile written by 'scconv profile --out FILE' (same model and "
        "device, else exit 2) instead of measuring; its batch size, dtype and sensitivities apply.",
        show_default=False, dir_okay=False)] = None,
    write_rules: Annotated[Path | None, typer.Option(
        "--write-rules", metavar="FILE", help="Write the chosen convs as a YAML rules file (exact names; replay with "
        "--rules FILE), also with --dry-run.", show_default=False, dir_okay=False)] = None,
    debug: DebugOpt = False,
    help_: HelpOpt = False,
) -> None:
    """Replace the convs of MODEL with SCConv, report the change and save a checkpoint."""
    output = Output(json=json_output, debug=debug, summary=summary)
    with output.errors():
        with output.progress_bars() as (step, fit):
            if out is None and not dry_run:
                raise InvalidOptionError("--out", "give --out FILE.pt, or --dry-run to write nothing")
            if (model is None) == (factory is None):
                raise InvalidOptionError("MODEL", "give a MODEL name or --factory package.module:function (one of them)")
            if pretrained and weights is not None:
                raise InvalidOptionError("--weights", "--pretrained and --weights are exclusive; pass one")
            if weights_key is not None and weights is None:
                raise InvalidOptionError("--weights-key", "names an entry of a --weights file; give --weights FILE too")
            check_seed(seed)
            check_device_option("--calibrate-device", calibrate_device)
            size = parse_input_size(input_size)
            kwargs = parse_model_kwargs(model_kwargs)
            if num_classes is not None and "num_classes" in kwargs and kwargs["num_classes"] != num_classes:
                raise InvalidOptionError("--num-classes", f"{num_classes} contradicts --model-kwargs "
                                         f"num_classes={kwargs['num_classes']}; give one")
            config = ScConvConfig(variant=variant, stride_policy=stride_policy)
            rules = assemble_rules(preset=preset.value if preset else None,  # type: ignore[attr-defined]
                                   rules_file=rules_file, include=include or (), exclude=exclude or ())
            weights_source = (WeightsSource.pretrained() if pretrained else
                              WeightsSource.file(weights, entry=weights_key) if weights is not None
                              else WeightsSource.random(seed))
            if num_classes is not None:
                kwargs["num_classes"] = num_classes
            source = (ModelSource.parse(model, weights=weights_source, kwargs=kwargs, trust_pickle=trust_pickle)
                      if model is not None
                      else ModelSource.factory(factory, weights=weights_source, kwargs=kwargs))  # type: ignore[arg-type]
            destination = DryRun(out, overwrite=force) if dry_run else WriteCheckpoint(out, overwrite=force)  # type: ignore[arg-type]
            selection = selection_config(select=select, margin=select_margin,
                                         budgets={"target_macs": target_macs, "target_params": target_params,
                                                  "target_latency": target_latency},
                                         device=device, profile=profile_file, write_rules=write_rules)
            calibration = None
            if calibrate is not None:
                calibration = CalibrationConfig(data=calibrate, num_images=calibrate_images, steps=calibrate_steps,
                                                batch_size=calibrate_batch_size, strategy=calibrate_strategy,
                                                device=calibrate_device, seed=seed,
                                                allow_random_weights=allow_random_weights)
            result = run_conversion(source, output=destination, rules=rules, config=config, strict_paper=strict_paper,
                                    input_size=size, seed=seed, allow_unmatched=allow_unmatched,
                                    count_elementwise=count_elementwise, reset_bn_stats=reset_bn_stats,
                                    calibration=calibration, selection=selection, yolo_output=yolo_out,
                                    on_step=step, on_fit=fit)
        if not dry_run:
            output.written = result.output
        for warning in result.warnings:
            output.warn(warning)
        if json_output:
            output.emit_json(result.to_dict())
        else:
            render_conversion(output.result, result, summary=summary)
            if result.selection is not None:
                render_selection(output.result, result.selection)
            if calibration is not None and dry_run:
                output.result.print(f"dry run: would calibrate on {result.calibration_images} images from "
                                    f"{calibration.data} (each checked to open as an image)", highlight=False,
                                    markup=False)
