"""Exit codes, and the one table that maps library errors to them (see README, "Exit codes")."""
from __future__ import annotations

import math
from typing import Any

from scconv_surgery import (
    NothingSelectedError,
    ScconvError,
    ShapeMismatchError,
    UnmatchedRuleError,
)

EXIT_OK = 0
EXIT_UNEXPECTED = 1  # a bug or an environment failure: run again with --debug
EXIT_BAD_INPUT = 2  # unknown model, unreadable or invalid file, bad option (as Click's usage errors)
EXIT_NOTHING_SELECTED = 3  # an include rule matched nothing, or no conv was selected
EXIT_VERIFY_FAILED = 4  # scconv verify: a check failed
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT). Nothing is left at the output path.
EXIT_TERMINATED = 143  # SIGTERM (128 + 15), likewise.

# Looked up along the exception's MRO, so the most specific class wins whatever the order.
ERROR_EXIT_CODES: dict[type[BaseException], int] = {
    UnmatchedRuleError: EXIT_NOTHING_SELECTED,
    NothingSelectedError: EXIT_NOTHING_SELECTED,
    ShapeMismatchError: EXIT_UNEXPECTED,
    ScconvError: EXIT_BAD_INPUT,
}

_FIELDS = ("name", "suggestions", "path", "patterns", "pattern", "index", "key", "reasons",
           "missing_keys", "unexpected_keys", "expected", "actual", "factory", "kwargs", "option", "input_shape")


def exit_code_for(err: BaseException) -> int:
    """The exit code of an exception: the first class of its MRO in :data:`ERROR_EXIT_CODES`."""
    for cls in type(err).__mro__:
        if cls in ERROR_EXIT_CODES:
            return ERROR_EXIT_CODES[cls]
    return EXIT_UNEXPECTED


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and anything JSON cannot hold exactly (NaN, objects) as text."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def error_document(err: BaseException, code: int) -> dict[str, Any]:
    """The JSON form of an error (written to stderr under ``--json``).

    Errors that carry a plan (exit 3: nothing selected, an include matched nothing) include it
    whole under ``plan``: every conv with its decision and reason, as ``--dry-run --json`` has.
    """
    fields = {f: _jsonable(getattr(err, f)) for f in _FIELDS if hasattr(err, f)}
    plan = getattr(err, "plan", None)
    if plan is not None:
        fields["plan"] = plan.to_dict()
    return {"error": {"type": type(err).__name__, "message": str(err), "exit_code": code, **fields}}
