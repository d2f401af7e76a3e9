"""The ``scconv`` application: the root Typer app and ``main()``."""
from __future__ import annotations

import json
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # Typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older Typer, on click itself
    from click.exceptions import ClickException

from . import calibrate, convert, models, profile, report, verify
from .errors import EXIT_INTERRUPTED, exit_codes_epilog
from .params import FLAG, HelpOpt


def _print_version(value: bool) -> None:
    if value:
        from scconv_surgery import __version__

        print(f"scconv-surgery {__version__}")
        raise typer.Exit()


def _wants_json(args: Sequence[str]) -> bool:
    words = list(args)
    return "--json" in words or "--format=json" in words or any(
        a == "--format" and b == "json" for a, b in zip(words, words[1:]))


class _Group(TyperGroup):
    """The root group: with ``--json`` (or ``report --format json``), a usage error (an unknown
    option, a bad choice, a missing argument) is one JSON line on stderr like every other error,
    not a box of text: ``--json`` output stays JSON in every outcome."""

    def main(self, args: Sequence[str] | None = None, *pos: Any, standalone_mode: bool = True,
             **extra: Any) -> Any:
        words = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or not _wants_json(words):
            return super().main(words, *pos, standalone_mode=standalone_mode, **extra)
        try:
            code = super().main(words, *pos, standalone_mode=False, **extra)
        except ClickException as err:
            document = {"type": "UsageError", "message": err.format_message(), "exit_code": err.exit_code}
            param = getattr(err, "param", None)
            if param is not None and getattr(param, "opts", None):
                document["option"] = param.opts[0]
            sys.stderr.write(json.dumps({"error": document}) + "\n")
            sys.exit(err.exit_code)
        except typer.Abort:  # Ctrl-C outside a command's own handling
            sys.stderr.write(json.dumps({"error": {"type": "Interrupted", "message": "interrupted: nothing was "
                                                   "written", "exit_code": EXIT_INTERRUPTED}}) + "\n")
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


def create_app() -> typer.Typer:
    """Build the root app once, with shared settings (help on -h, no pretty tracebacks)."""
    app = typer.Typer(
        name="scconv",
        help="Replace the convolutions of a timm / torchvision model with SCConv (CVPR 2023), report the "
        "parameter and MAC change, and save a checkpoint ready for fine-tuning.",
        cls=_Group,
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
