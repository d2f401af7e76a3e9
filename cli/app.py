"""The ``scconv`` application: the root Typer app and ``main()``."""
from __future__ import annotations

import signal
import warnings
from typing import Annotated

import typer

from . import calibrate, convert, models, profile, report, verify
from .errors import exit_codes_epilog
from .params import FLAG, HelpOpt


def _print_version(value: bool) -> None:
    if value:
        from scconv_surgery import __version__

        print(f"scconv-surgery {__version__}")
        raise typer.Exit()


def create_app() -> typer.Typer:
    """Build the root app once, with shared settings (help on -h, no pretty tracebacks)."""
    app = typer.Typer(
        name="scconv",
        help="Replace the convolutions of a timm / torchvision model with SCConv (CVPR 2023), report the "
        "parameter and MAC change, and save a checkpoint ready for fine-tuning.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": []},  # each command has HelpOpt instead (no "<bool>")
    )

    @app.callback()
    def root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", metavar=FLAG,
                                                   callback=_print_version, is_eager=True)] = False,
             help_: HelpOpt = False) -> None:
        """scconv: SCConv model surgery."""

    for name, function, needs_args in (("convert", convert.convert, True), ("report", report.report, True),
                                       ("verify", verify.verify, True), ("models", models.models, False),
                                       ("calibrate", calibrate.calibrate, True), ("profile", profile.profile, True)):
        app.command(name, no_args_is_help=needs_args, epilog=exit_codes_epilog(name))(function)
    return app


app = create_app()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: a checkpoint being written is removed, not left half-written


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    # deprecation notices of the model libraries are not the user's business
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(timm|torchvision|torch)(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(timm|torchvision|torch)(\.|$)")
    app()


if __name__ == "__main__":
    main()
