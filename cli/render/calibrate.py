"""``scconv calibrate`` (and the calibration part of ``scconv convert --calibrate``): each layer's
error before and after, the BatchNorm update and the warnings calibration gives."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scconv_surgery.calibration_run import CalibrationRun


def calibration_table(run: CalibrationRun) -> Table:
    """One row per calibrated layer: its relative output error before and after the fit."""
    result = run.result
    where = f"{result.held_out} held-out" if result.held_out else f"all {result.num_images} (none held out)"
    table = Table(title=f"Calibration on {result.num_images} images from {escape(str(run.data))} "
                  f"({result.strategy.value}, {result.steps} steps per layer, batch {result.batch_size}, "
                  f"{result.device}, {result.seconds:.0f} s); relative error on {where} images",
                  title_justify="left")
    for column in ("layer", "error before", "error after", "after / before", "final loss", "seconds"):
        table.add_column(column, justify="left" if column == "layer" else "right", no_wrap=True)
    for layer in result.layers:
        ratio = (f"{layer.error_after / layer.error_before:.3f}" if layer.error_before and layer.error_after is not None
                 else "-")
        table.add_row(escape(layer.name), _error(layer.error_before), _error(layer.error_after), ratio,
                      "-" if layer.loss is None else f"{layer.loss:.4g}", f"{layer.seconds:.1f}")
    return table


def _error(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def render_calibration(console: Console, run: CalibrationRun) -> None:
    """The calibration table, the BatchNorm update, and the layers that could not be fitted (the
    run's warnings are the command's: ``ConversionResult.warnings``, ``CalibrationRun.warnings``)."""
    result = run.result
    if run.available < run.requested:
        console.print(f"[yellow]note:[/] {escape(str(run.data))} holds {run.available} images, fewer than the "
                      f"{run.requested} asked for: all were used", highlight=False)
    console.print(calibration_table(run))
    console.print("relative error = sum((SCConv(x) - conv(x))^2) / sum(conv(x)^2) on the replaced conv's "
                  "input x", style="dim", highlight=False)
    if result.batchnorms:
        console.print(f"BatchNorm statistics re-estimated on the {result.num_images} images: "
                      f"{len(result.batchnorms)} layers", highlight=False)
    if result.uncalled:
        console.print(f"[yellow]not calibrated[/] (the forward never calls them): {escape(', '.join(result.uncalled))}",
                      highlight=False)
