"""``scconv calibrate CHECKPOINT --data DIR --out FILE``: fit a checkpoint's SCConvs to the convs they replaced."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scconv_surgery.calibration import CalibrationStrategy
from scconv_surgery.calibration_run import CalibrationConfig, calibrate_checkpoint

from .output import Output
from .params import (
    CALIBRATE_BATCH_HELP,
    CALIBRATE_DEVICE_HELP,
    CALIBRATE_IMAGES_HELP,
    CALIBRATE_STEPS_HELP,
    CALIBRATE_STRATEGY_HELP,
    AllowRandomWeightsOpt,
    DebugOpt,
    ForceOpt,
    HelpOpt,
    JsonOpt,
    TrustPickleOpt,
    check_device_option,
    check_seed,
    choices,
)
from .render.calibrate import render_calibration
from .render.common import render_written


def calibrate(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="A checkpoint written by 'scconv convert'.", dir_okay=False,
                                               show_default=False)],
    *,
    data: Annotated[Path, typer.Option(
        metavar="DIR", help="A folder of images, searched recursively (an ImageFolder works; labels are not used).",
        show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="The calibrated checkpoint to write (.pt/.pth or "
                                      ".safetensors); may be CHECKPOINT itself with --force.", show_default=False,
                                      dir_okay=False)],
    weights: Annotated[Path | None, typer.Option(
        metavar="FILE", help="The base weights file the checkpoint was converted from (its sha256 is checked against the manifest); "
        "also replaces pretrained weights that are neither cached nor downloadable.", dir_okay=False,
        show_default=False)] = None,
    images: Annotated[int, typer.Option(metavar="N", help=CALIBRATE_IMAGES_HELP, min=1)] = CalibrationConfig.num_images,
    steps: Annotated[int, typer.Option(metavar="N", help=CALIBRATE_STEPS_HELP, min=0)] = CalibrationConfig.steps,
    batch_size: Annotated[int, typer.Option(metavar="N", help=CALIBRATE_BATCH_HELP, min=1)] = CalibrationConfig.batch_size,
    strategy: Annotated[str, typer.Option(**choices(CalibrationStrategy, "strategy", "STRATEGY"), help=CALIBRATE_STRATEGY_HELP)] = CalibrationConfig.strategy.value,
    device: Annotated[str | None, typer.Option(metavar="DEVICE", help=CALIBRATE_DEVICE_HELP, show_default=False)] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed (0 to 2**63 - 1) that chooses the images and orders the "
                                      "batches.", min=0)] = 0,
    allow_random_weights: AllowRandomWeightsOpt = False,
    trust_pickle: TrustPickleOpt = False,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
    help_: HelpOpt = False,
) -> None:
    """Fit each SCConv of CHECKPOINT, without labels, to reproduce the conv it replaced, then re-estimate BatchNorm statistics.

    The replaced convs' weights are not in the checkpoint: the original model is rebuilt from the manifest (pretrained weights from the cache, or --weights FILE). Exit codes: 0 success; 1 unexpected failure; 2 bad input (unreadable checkpoint or images, weights that do not match, random base weights without --allow-random-weights).
    """
    output = Output(json=json_output, debug=debug)
    with output.errors():
        with output.progress_bars() as (step, fit):
            check_seed(seed)
            check_device_option("--device", device)
            config = CalibrationConfig(data=data, num_images=images, steps=steps, batch_size=batch_size,
                                       strategy=strategy, device=device, seed=seed,
                                       allow_random_weights=allow_random_weights)
            result = calibrate_checkpoint(checkpoint, config, out=out, weights=weights, overwrite=force,
                                          trust_pickle=trust_pickle, on_step=step, on_fit=fit)
        output.written = result.output
        for warning in result.run.warnings:
            output.warn(warning)
        if json_output:
            output.emit_json(result.to_dict())
        else:
            render_calibration(output.result, result.run)
            render_written(output.result, result.output)
