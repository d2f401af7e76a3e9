"""``scconv profile MODEL``: time each eligible conv and its SCConv on a device; optionally their sensitivity."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from scconv_surgery.checkpoint import check_output_path
from scconv_surgery.layers import ScConvConfig, StridePolicy, Variant
from scconv_surgery.models import ModelSource, WeightsSource, default_input_size, rebuild_base
from scconv_surgery.plan import plan_conversion
from scconv_surgery.profiling import DEFAULT_REPEATS, DTYPES, ProfileSettings, profile_plan
from scconv_surgery.timing import resolve_device
from scconv_surgery.sensitivity import DEFAULT_IMAGES, DEFAULT_STEPS, check_sensitivity_source, sensitivities_from_folder

from .convert import parse_model_kwargs
from .errors import InvalidOptionError
from .output import Output
from .params import (
    FLAG,
    DebugOpt,
    HelpOpt,
    InputSizeOpt,
    JsonOpt,
    StrictPaperOpt,
    check_seed,
    choices,
    parse_input_size,
)
from .render.profile import render_profile
from .rules import assemble_rules

DType = Enum("DType", {name: name for name in DTYPES}, type=str)  # type: ignore[misc]

DEVICE_HELP = "Where to time: cpu, cuda, cuda:1, ... (checked to exist before any work)."


def profile(
    model: Annotated[str | None, typer.Argument(
        metavar="MODEL", help="Model name, as for 'scconv convert' (resnet50, timm:NAME, torchvision:NAME). Omit it "
        "with --factory.", show_default=False)] = None,
    *,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "cpu",
    batch_size: Annotated[int, typer.Option(metavar="N", help="Images per forward.", min=1, max=4096)] = 1,
    dtype: Annotated[DType, typer.Option(metavar="DTYPE", help="Dtype of the modules and inputs: float32, float16 or "
                                         "bfloat16.")] = DType.float32,  # type: ignore[attr-defined]
    channels_last: Annotated[bool, typer.Option(
        "--channels-last", metavar=FLAG, help="Modules and inputs in channels_last memory format.")] = False,
    optimized: Annotated[bool, typer.Option(
        "--optimized", metavar=FLAG, help="Time SCConv after optimize_for_inference (cached weights), as deployed.")] = False,
    train: Annotated[bool, typer.Option(
        "--train", metavar=FLAG, help="Time a training step (forward and backward) instead of an inference forward.")] = False,
    repeats: Annotated[int, typer.Option(metavar="N", help="Interleaved rounds per layer (the order rotates each "
                                         "round); medians of the per-round ratios.", min=3, max=1000)] = DEFAULT_REPEATS,
    data: Annotated[Path | None, typer.Option(
        metavar="DIR", help="Also score each conv's sensitivity on this folder of images (no labels): the output change "
        "when it alone is replaced and calibrated. Needs --pretrained or --weights.", show_default=False)] = None,
    images: Annotated[int, typer.Option(metavar="N", help="Images for --data.", min=1)] = DEFAULT_IMAGES,
    steps: Annotated[int, typer.Option(metavar="N", help="Calibration steps per layer for --data.", min=0)] = DEFAULT_STEPS,
    pretrained: Annotated[bool, typer.Option(
        "--pretrained", metavar=FLAG, help="Start from the library's pretrained weights (for --data).")] = False,
    weights: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Start from a local weights file (for --data).", show_default=False, dir_okay=False)] = None,
    factory: Annotated[str | None, typer.Option(
        metavar="MODULE:FUNCTION", help="Build your own model, as for 'scconv convert'.", show_default=False)] = None,
    model_kwargs: Annotated[list[str] | None, typer.Option(
        "--model-kwargs", metavar="KEY=VALUE", help="Constructor argument KEY=VALUE, as for 'scconv convert'. "
        "Repeatable.", show_default=False)] = None,
    num_classes: Annotated[int | None, typer.Option(
        metavar="N", help="Classifier size passed to the model constructor.", min=1, max=1_000_000,
        show_default=False)] = None,
    input_size: InputSizeOpt = None,
    variant: Annotated[str, typer.Option(
        **choices(Variant, "variant"), help="The SCConv to measure, as for 'scconv convert': a profile reused with "
        "--profile must be measured with the variant, stride policy and rules-file hyperparameters of the "
        "conversion.")] = Variant.PAPER.value,
    stride_policy: Annotated[str, typer.Option(
        **choices(StridePolicy, "stride policy"), help="Strided convs, as for 'scconv convert'.")
    ] = StridePolicy.INSIDE.value,
    rules_file: Annotated[Path | None, typer.Option(
        "--rules", metavar="FILE", help="Rules file, as for 'scconv convert': which convs to measure, with its "
        "hyperparameters.", show_default=False, dir_okay=False)] = None,
    strict_paper: StrictPaperOpt = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", metavar="FILE", help="Write the profile as JSON, for 'scconv convert --profile FILE'.",
        show_default=False, dir_okay=False)] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", metavar=FLAG, help="Time every layer again; neither read nor write the cache.")] = False,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the replacements, the inputs and the image choice.",
                                      min=0)] = 0,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
    help_: HelpOpt = False,
) -> None:
    """Time each conv that 'scconv convert' would replace, and its SCConv, at the conv's real input shape on a device.

    Dense and SCConv run interleaved, round by round, with a rotating order; each ratio is the median of the per-round ratios, with its spread (interquartile range). On CPUs the clock is the thread's CPU time on one thread (a loaded machine's wall clock is mostly noise); on CUDA, CUDA events. Layer results are cached in $SCCONV_CACHE_DIR (default $XDG_CACHE_HOME/scconv-surgery) per shape, config, device, dtype, memory format, mode and torch version, so a second profile is fast. The whole network is timed too, so that 'scconv convert --profile FILE --select faster' or '--target-macs F' predicts the converted network's latency.
    """
    output = Output(json=json_output, debug=debug)
    with output.errors(), output.progress_bars() as (step, bar):
        if (model is None) == (factory is None):
            raise InvalidOptionError("MODEL", "give a MODEL name or --factory package.module:function (one of them)")
        if pretrained and weights is not None:
            raise InvalidOptionError("--weights", "--pretrained and --weights are exclusive; pass one")
        check_seed(seed)
        resolve_device(device)  # before any work
        if out is not None:
            check_output_path(out, suffixes=None, example="profile.json")
        size = parse_input_size(input_size)
        kwargs = parse_model_kwargs(model_kwargs)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        weights_source = (WeightsSource.pretrained() if pretrained else
                          WeightsSource.file(weights) if weights is not None else WeightsSource.random(seed))
        source = (ModelSource.parse(model, weights=weights_source, kwargs=kwargs) if model is not None
                  else ModelSource.factory(factory, weights=weights_source, kwargs=kwargs))  # type: ignore[arg-type]
        if data is not None:
            check_sensitivity_source(source)
        settings = ProfileSettings(device=device, batch_size=batch_size, dtype=dtype.value, channels_last=channels_last,
                                   optimized=optimized, train=train, repeats=repeats)
        config = ScConvConfig(variant=variant, stride_policy=stride_policy)
        rules = assemble_rules(rules_file=rules_file)
        step(f"building {source.display_name}")
        base, source = rebuild_base(source)
        plan = plan_conversion(base, rules, config=config, strict_paper=strict_paper)
        size = size or default_input_size(base, source)
        step(f"timing {len(plan.replaced)} convs and their SCConvs on {device}")
        result = profile_plan(base, source, plan, size, settings, cache_dir=False if no_cache else None, seed=seed,
                              on_layer=lambda name, done, total: bar("timing convs", done, total, float("nan")))
        if data is not None:
            step(f"scoring sensitivity on {data}")
            scores = sensitivities_from_folder(base, source, plan, data, size, num_images=images, steps=steps,
                                               seed=seed, device=device,
                                               on_layer=lambda n, done, total: bar("sensitivity", done, total,
                                                                                   float("nan")))
            result = result.with_sensitivities(scores)
        if out is not None:
            step(f"writing {out}")
            result.save(out)
    if json_output:
        output.emit_json(result.to_dict())
    else:
        render_profile(output.result, result)  # a result: stdout, as convert's report
        if out is not None:
            output.result.print(f"wrote {out}", highlight=False, markup=False)
