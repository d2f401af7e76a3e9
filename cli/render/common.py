"""What several commands' renderers share: number formatting and the "wrote" line."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console


def human(n: float, unit: str = "") -> str:
    """``25557032 -> '25.56 M'``, ``4111512576 -> '4.112 G'`` (decimal prefixes)."""
    for scale, prefix, digits in ((1e9, "G", 3), (1e6, "M", 2), (1e3, "K", 1)):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip()


def render_written(console: Console, path: Path) -> None:
    """The line that names a checkpoint just written and how to load it."""
    console.print(f"[bold]wrote[/] {path}  (load with scconv_surgery.load({str(path)!r}))", highlight=False)
