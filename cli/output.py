"""Where output goes: the command's result on stdout (Rich tables for humans, or ``--json``'s one
document); progress, warnings and errors on stderr."""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from .errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_UNEXPECTED, error_document, exit_code_for, hint


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


def _os_bytes(text: str) -> bytes | None:
    """The bytes a string with lone surrogates stands for (``os.fsdecode`` turns each byte that is
    not UTF-8 into U+DC80..U+DCFF), or None for a string that is valid Unicode."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if all(
            not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text) else "surrogatepass")


def json_ready(value: Any, notes: list[str] | None = None, where: str = "") -> Any:
    r"""``value`` made strict JSON that any reader takes as it is meant.

    - A float that is not finite (NaN, inf) becomes ``null``, and ``notes`` gets its place: the
      library reports undefined numbers as None itself; this is the net under it.
    - A string that is not valid Unicode (a path whose bytes are not UTF-8, which Python holds with
      lone surrogates, e.g. ``caf\udce9`` for the bytes ``caf\xe9``; jq and most readers replace
      them) is written in a display form, each byte that is not UTF-8 as ``\xNN`` (``caf\\xe9``),
      and its exact bytes go beside it, base64-encoded, under the key with ``_bytes`` appended
      (``"output": "caf\\xe9.pt", "output_bytes": "Y2Fm6S5wdA=="``; in a list, ``KEY_bytes`` is a
      list with null for the strings that are valid Unicode). docs/commands.md describes it.
    """
    import base64

    if notes is None:
        notes = []
    if isinstance(value, float) and not math.isfinite(value):
        notes.append(f"{where or 'the document'} was {value} (written as null)")
        return None
    if isinstance(value, str):
        raw = _os_bytes(value)
        return value if raw is None else raw.decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple)):
        return [json_ready(v, notes, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    ready: dict[str, Any] = {}
    for key, item in value.items():
        ready[key] = json_ready(item, notes, f"{where}.{key}" if where else str(key))
        raws = ([_os_bytes(item)] if isinstance(item, str) else
                [_os_bytes(v) if isinstance(v, str) else None for v in item] if isinstance(item, (list, tuple))
                else [None])
        if any(r is not None for r in raws):
            encoded = [None if r is None else base64.b64encode(r).decode("ascii") for r in raws]
            ready[f"{key}_bytes"] = encoded[0] if isinstance(item, str) else encoded
    return ready


def json_text(document: dict[str, Any], *, indent: int | None = None) -> tuple[str, list[str]]:
    """``document`` as strict JSON (:func:`json_ready`), and the notes on what had to change."""
    notes: list[str] = []
    return json.dumps(json_ready(document, notes), indent=indent, allow_nan=False), notes


LOG_WIDTH = 140  # columns when stderr is not a terminal (logs, CI) and COLUMNS is unset


@dataclass(frozen=True)
class Terminal:
    """How to write to stderr, decided from whether it really is a terminal and the environment.

    Attributes:
        interactive: a terminal that takes cursor codes: a live spinner, else one line per step.
        color: write colours and styles.
        width: columns to lay out at; None lets Rich ask the terminal.
    """

    interactive: bool
    color: bool
    width: int | None

    @classmethod
    def detect(cls, is_tty: bool, environ: Mapping[str, str]) -> Terminal:
        """``FORCE_COLOR`` turns on colour only; ``NO_COLOR`` turns off every style and cursor code
        (and wins over ``FORCE_COLOR``); ``TERM=dumb`` takes no cursor codes; ``COLUMNS`` sets the
        width (https://no-color.org, https://force-color.org)."""
        no_color = bool(environ.get("NO_COLOR"))
        interactive = is_tty and not no_color and environ.get("TERM") != "dumb"
        color = not no_color and (is_tty or bool(environ.get("FORCE_COLOR")))
        columns = environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else (None if is_tty else LOG_WIDTH)
        return cls(interactive, color, width)

    def console(self, **kwargs: Any) -> Console:
        """A Rich console with these settings (on stderr unless ``file`` is given)."""
        kwargs.setdefault("stderr", "file" not in kwargs)
        # force_terminal: Rich would otherwise take FORCE_COLOR as "a terminal" (spinner, 80 columns)
        return _Console(force_terminal=self.color, color_system="auto" if self.color else None, width=self.width,
                        **kwargs)


class _Console(Console):
    """A Rich console whose closed pipe reaches :meth:`Output.errors` (exit 141, documented) instead
    of Rich's own ``SystemExit(1)``."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def _terminal(stream: Any) -> Terminal:
    try:
        is_tty = stream.isatty()
    except (AttributeError, ValueError):
        is_tty = False
    return Terminal.detect(is_tty, os.environ)


def _stderr_terminal() -> Terminal:
    return _terminal(sys.stderr)


@dataclass
class Output:
    """The output mode of one command invocation (no process-wide state).

    Attributes:
        json: write exactly one JSON document to stdout; everything else goes to stderr.
        debug: print tracebacks of unexpected errors.
        summary: a plan shown with an error (exit 3) is summarised, not listed conv by conv.
        terminal: what stderr is (a terminal or a log), hence spinner or lines, colour, width.
        console: Rich console on stderr, for progress, warnings and errors.
        result: Rich console on stdout, for the command's result in human form (its tables and
            lines: what ``| head`` and ``> file`` should get); laid out for what stdout is.
        written: the checkpoint this command has written, once it is (an error or interrupt after
            it says so).
    """

    json: bool = False
    debug: bool = False
    summary: bool = False
    terminal: Terminal = field(default_factory=_stderr_terminal)
    console: Console = field(default=None)  # type: ignore[assignment]  # from terminal unless given
    result: Console = field(default=None)  # type: ignore[assignment]  # stdout's, unless given
    written: Path | None = None

    def __post_init__(self) -> None:
        if self.console is None:
            self.console = self.terminal.console()
        if self.result is None:
            self.result = _terminal(sys.stdout).console(file=sys.stdout)

    def emit_json(self, document: dict[str, Any]) -> None:
        """Write ``document`` to stdout as strict JSON (:func:`json_ready`: never a bare NaN or a lone
        surrogate); what had to change is a warning on stderr."""
        text, notes = json_text(document, indent=2)
        for note in notes:
            self.warn(f"undefined number: {note}")
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def _error_line(self, document: dict[str, Any]) -> None:
        if self.written is not None:
            document["error"]["written"] = str(self.written)
        sys.stderr.write(json_text(document)[0] + "\n")  # one line, unstyled
        sys.stderr.flush()

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

    def _log_step(self, message: str) -> None:
        self.console.print(f"scconv: {message}...", style="dim", highlight=False)

    @contextlib.contextmanager
    def progress(self) -> Iterator[Callable[[str], None]]:
        """A step callback: a spinner on an interactive terminal, else one line per step on stderr.

        Meanwhile anything a library prints to stdout goes to stderr, so that stdout holds
        only the command's own output (e.g. torch.hub's "Downloading" lines).
        """
        with _stdout_fd_to_stderr(), contextlib.redirect_stdout(sys.stderr):
            if self.terminal.interactive:
                with self.console.status("starting") as status:
                    yield lambda message: status.update(f"{message}...")
            else:
                yield self._log_step

    @contextlib.contextmanager
    def progress_bars(self) -> Iterator[tuple[Callable[[str], None], Callable[[str, int, int, float], None]]]:
        """:meth:`progress`, plus a bar callback ``(name, done, total, loss)``: one bar per name (a NaN
        loss: a bar that counts items and shows no loss).

        On an interactive terminal, a Rich progress display: a spinner line for the current step
        and a bar per name with its loss; otherwise one line per step and one per finished bar.
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        if not self.terminal.interactive:
            def line(name: str, done: int, total: int, loss: float) -> None:
                if done == total:  # a NaN loss: a bar that counts items, not optimizer steps
                    text = f"{total} steps, loss {loss:.4g}" if loss == loss else f"{total} done"
                    self.console.print(f"scconv: {name}: {text}", style="dim", highlight=False, markup=False)
            with self.progress() as step:
                yield step, line
            return
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[loss]}"), TimeElapsedColumn())
        with _stdout_fd_to_stderr(), contextlib.redirect_stdout(sys.stderr), \
                Progress(*columns, console=self.console) as progress:
            status = progress.add_task("starting", total=None, loss="")
            bars: dict[str, Any] = {}

            def step(message: str) -> None:
                progress.update(status, description=f"{escape(message)}...")

            def bar(name: str, done: int, total: int, loss: float) -> None:
                if name not in bars:
                    bars[name] = progress.add_task(escape(name), total=total, loss="")
                progress.update(bars[name], completed=done, loss=f"loss {loss:.4g}" if loss == loss else "")
            yield step, bar
            progress.update(status, description="done", total=1, completed=1)

    def _interrupted(self, kind: str, code: int) -> None:
        message = ("interrupted: nothing was written" if self.written is None else
                   f"interrupted after {self.written} was written (it is complete)")
        if self.json:  # one JSON line, as for every other error
            self._error_line({"error": {"type": kind, "message": message, "exit_code": code}})
        else:
            self.console.print(message, style="yellow", highlight=False, markup=False)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn exceptions into a message on stderr and the exit code of cli/errors.py."""
        try:
            yield
        except typer.Exit:
            raise
        except BrokenPipeError:  # `scconv models | head`: the reader has what it wanted; say nothing more
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            except (OSError, ValueError):
                pass
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except KeyboardInterrupt:
            self._interrupted("Interrupted", EXIT_INTERRUPTED)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except SystemExit as err:  # SIGTERM (cli/app.py raises SystemExit(143) where the process is)
            if err.code == EXIT_TERMINATED:
                self._interrupted("Terminated", EXIT_TERMINATED)
            raise
        except Exception as err:
            code = exit_code_for(err)
            plan = getattr(err, "plan", None)
            if plan is not None and not self.json:  # show every conv and why it was skipped
                from .render.convert import plan_records

                title = f"The plan, not applied: {len(plan.decisions)} convs (nothing was replaced or written)"
                if self.summary:  # the error message below gives the counts per reason
                    self.console.print(title, highlight=False, markup=False)
                else:
                    self.console.print(plan_records(self.console, plan, title=title))
            if self.debug:
                self.console.print(traceback.format_exc(), highlight=False, markup=False)
            if self.json:
                self._error_line(error_document(err, code))
            elif code == EXIT_UNEXPECTED:
                self.console.print(f"[red]error:[/] unexpected {type(err).__name__}: {escape(str(err))}", highlight=False)
                if not self.debug:
                    self.console.print("Run again with --debug to see the traceback.", style="dim")
            else:
                self.console.print(f"[red]error:[/] {escape(str(err))}", highlight=False)
                advice = hint(err)
                if advice:
                    self.console.print(f"hint: {advice}", style="dim", highlight=False, markup=False)
            if self.written is not None and not self.json:
                self.console.print(f"{self.written} was written before this error (it is complete)",
                                   highlight=False, markup=False)
            raise typer.Exit(code) from None
