"""Rich renderers for measured selection: a profile's table, a selection's summary (no decisions here)."""
from __future__ import annotations

from rich.console import Console, RenderableType
from rich.markup import escape

from scconv_surgery.profiling import Profile
from scconv_surgery.selection import SelectionReport

from ..layout import Column, records
from .common import human

PROFILE_COLUMNS = (Column("name", key=True), Column("input"), *(Column(h, "right") for h in (
    "dense", "SCConv", "ratio", "spread", "MACs", "params", "sensitivity")))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _settings(profile: Profile) -> str:
    s = profile.settings
    return (f"{s.device} ({profile.device_name}), {s.dtype}, batch {s.batch_size}, "
            f"{'channels_last' if s.channels_last else 'contiguous'}, {'optimized' if s.optimized else 'eager'} "
            f"{s.mode}, {profile.timer}, {s.repeats} rounds")


def profile_records(console: Console, profile: Profile) -> RenderableType:
    """One record per measured conv: input shape, dense and SCConv time, ratio (green below 1), spread,
    MACs and params before -> after, sensitivity."""
    rows = []
    for lp in profile.layers:
        ratio = f"[green]{lp.ratio:.2f}x[/]" if lp.ratio < 1 else f"{lp.ratio:.2f}x"
        rows.append([escape(lp.name), "x".join(map(str, lp.input_shape)), _ms(lp.dense_seconds),
                     _ms(lp.scconv_seconds), ratio, f"{lp.spread:.2f}", f"{human(lp.macs_before)} -> "
                     f"{human(lp.macs_after)}", f"{lp.params_before:,} -> {lp.params_after:,}",
                     "-" if lp.sensitivity is None else f"{lp.sensitivity:.4g}"])
    title = f"{profile.source.display_name}: {len(profile.layers)} convs on {_settings(profile)}"
    return records(console, title, PROFILE_COLUMNS, rows)


def render_profile(console: Console, profile: Profile) -> None:
    """The table, the whole network's time, and how long profiling took."""
    console.print(profile_records(console, profile))
    faster = sum(lp.ratio < 1 for lp in profile.layers)
    console.print(f"whole network: {_ms(profile.model_seconds)} per forward; SCConv is faster at {faster} of "
                  f"{len(profile.layers)} convs; profiled in {profile.seconds:.1f} s "
                  f"({profile.cached_layers} layers from the cache)", highlight=False, markup=False)


def render_selection(console: Console, report: SelectionReport) -> None:
    """What was chosen, what was predicted and what was measured end to end."""
    s = report.selection
    console.print(f"Selection: {s.describe()} on {s.device} ({s.device_name}): {len(s.chosen)} of {s.candidates} "
                  f"measured convs chosen", highlight=False, markup=False)
    if s.chosen:
        console.print("  " + ", ".join(s.chosen), highlight=False, markup=False)
    line = (f"  latency: predicted {s.predicted_latency:.3f}x the original"
            + (f", measured {report.timing.ratio:.3f}x (spread {report.timing.spread:.3f}; "
               f"{_ms(report.timing.original_seconds)} -> {_ms(report.timing.converted_seconds)})"
               if report.timing else ", not measured")
            + f"; MACs {s.macs_ratio:.3f}x, params {s.params_ratio:.3f}x")
    console.print(line, highlight=False, markup=False)
