"""Where output goes: humans get Rich on stderr, ``--json`` gets one document on stdout."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from .errors import EXIT_INTERRUPTED, EXIT_UNEXPECTED, error_document, exit_code_for


@contextlib.contextmanager
def _stdout_fd_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr meanwhile: C extensions write to it directly."""
    try:
        is_real = sys.__stdout__ is not None and sys.__stdout__.fileno() == 1 and sys.stdout is sys.__stdout__
    except (OSError, ValueError):
        is_real = False
    if not is_real:  # captured (tests): Python-level redirection is all there is
        yield
        return
    sys.__stdout__.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _stderr_console() -> Console:
    """Rich on stderr; 140 columns when not a terminal (logs, CI) so tables stay readable."""
    console = Console(stderr=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=True, width=140)
    return console


@dataclass
class Output:
    """The output mode of one command invocation (no process-wide state).

    Attributes:
        json: write exactly one JSON document to stdout; everything else goes to stderr.
        debug: print tracebacks of unexpected errors.
        console: Rich console on stderr, for tables, progress, warnings and errors.
    """

    json: bool = False
    debug: bool = False
    console: Console = field(default_factory=lambda: _stderr_console())

    def emit_json(self, document: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        sys.stdout.flush()

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

    @contextlib.contextmanager
    def progress(self) -> Iterator[Callable[[str], None]]:
        """A step callback: a spinner on a terminal, else one line per step on stderr.

        Meanwhile anything a library prints to stdout goes to stderr, so that stdout holds
        only the command's own output (e.g. torch.hub's "Downloading" lines).
        """
        with _stdout_fd_to_stderr(), contextlib.redirect_stdout(sys.stderr):
            if self.console.is_terminal:
                with self.console.status("starting") as status:
                    yield lambda message: status.update(f"{message}...")
            else:
                yield lambda message: self.console.print(f"scconv: {message}...", style="dim", highlight=False)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn exceptions into a message on stderr and the exit code of cli/errors.py."""
        try:
            yield
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            self.console.print("interrupted: nothing was written", style="yellow")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as err:
            code = exit_code_for(err)
            plan = getattr(err, "plan", None)
            if plan is not None and not self.json:  # show every conv and why it was skipped
                from .render import plan_table

                self.console.print(plan_table(plan))
            if self.debug:
                self.console.print(traceback.format_exc(), highlight=False, markup=False)
            if self.json:
                sys.stderr.write(json.dumps(error_document(err, code)) + "\n")  # one line, unstyled
            elif code == EXIT_UNEXPECTED:
                self.console.print(f"[red]error:[/] unexpected {type(err).__name__}: {escape(str(err))}", highlight=False)
                if not self.debug:
                    self.console.print("Run again with --debug to see the traceback.", style="dim")
            else:
                self.console.print(f"[red]error:[/] {escape(str(err))}", highlight=False)
            raise typer.Exit(code) from None
