"""``scconv verify``: one line per check."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from scconv_surgery.verify import VerifyResult


def render_verification(console: Console, result: VerifyResult) -> None:
    """``ok`` or ``FAIL``, the check's name and its detail, one line per check."""
    for check in result.checks:
        mark = "[green]ok[/]  " if check.passed else "[red]FAIL[/]"
        console.print(f"{mark} {escape(check.name)}: {escape(check.detail)}", highlight=False)
