"""The ``scconv`` application: the root Typer app and ``main()``."""
from __future__ import annotations

import typer

from . import convert, report, verify


def create_app() -> typer.Typer:
    """Build the root app once, with shared settings (help on -h, no pretty tracebacks)."""
    app = typer.Typer(
        name="scconv",
        help="Replace the convolutions of a timm / torchvision model with SCConv (CVPR 2023), report the "
        "parameter and MAC change, and save a checkpoint ready for fine-tuning.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root() -> None:
        """scconv: SCConv model surgery."""

    app.command("convert", no_args_is_help=True)(convert.convert)
    app.command("report", no_args_is_help=True)(report.report)
    app.command("verify", no_args_is_help=True)(verify.verify)
    return app


app = create_app()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
