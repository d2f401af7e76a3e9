"""Reading rules files: YAML (``.yaml``/``.yml``), JSON (``.json``) or TOML (``.toml``) into :class:`~scconv_surgery.rules.Rule` values.

A rules file holds an optional ``preset`` (a name in :data:`~scconv_surgery.rules.PRESETS`,
whose rules go first) and a ``rules`` list; each entry names its pattern under ``include`` or
``exclude`` and may set any other field of :class:`~scconv_surgery.rules.Rule`::

    preset: paper
    rules:
      - include: "layer4.*"
        alpha: 0.75
      - exclude: "re:layer[234]\\.0\\.conv2"

Each entry's keys and types are checked here (a ``RulesFileError`` names the file, the rule's
index and the key); what the values mean is checked by :class:`~scconv_surgery.rules.Rule`.
"""
from __future__ import annotations

import difflib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import RuleFieldError, RulesFileError
from .rules import PRESETS, Rule, RuleAction

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["RulesFile", "load_rules_file", "rule_from_mapping", "RULE_KEYS"]

_ACTIONS = tuple(action.value for action in RuleAction)
_HINTS = typing.get_type_hints(Rule)


def _accepted(field_name: str) -> tuple[type, ...]:
    """The types a rules file may give for a Rule field: its type, a float field also takes
    an int, an enum field its values as strings."""
    (kind,) = [t for t in typing.get_args(_HINTS[field_name]) if t is not type(None)]
    if isinstance(kind, type) and issubclass(kind, Enum):
        return (str,)
    return (float, int) if kind is float else (kind,)


# the keys a rule entry may hold besides include / exclude: every field of Rule after the pattern and action
_TYPES: dict[str, tuple[type, ...]] = {f.name: _accepted(f.name) for f in fields(Rule)[2:]}
_CHOICES: dict[str, list[str]] = {
    name: [member.value for member in kind]
    for name in _TYPES
    for kind in typing.get_args(_HINTS[name]) if isinstance(kind, type) and issubclass(kind, Enum)
}
RULE_KEYS = (*_ACTIONS, *_TYPES)
SUFFIXES = (".yaml", ".yml", ".json", ".toml")


def _checked_values(entry: Mapping[str, Any], action: str, path: str, index: int) -> dict[str, Any]:
    """The entry's fields other than the pattern, each of its declared type and among its choices."""
    values = {}
    for key, value in entry.items():
        if key == action:
            continue
        allowed = _TYPES[key]
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise RulesFileError(path, index, key, f"must be {names}, got {value!r} ({type(value).__name__})")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise RulesFileError(path, index, key, f"must be one of {', '.join(_CHOICES[key])}, got {value!r}")
        values[key] = float(value) if allowed[0] is float else value
    return values


def rule_from_mapping(entry: Mapping[str, Any], *, path: str = "<rules>", index: int = 0) -> Rule:
    """Build a :class:`~scconv_surgery.rules.Rule` from one rules-file entry (``{"include": PATTERN, ...}``).

    Raises:
        RulesFileError: an unknown key, a value of the wrong type or outside its choices, both
            or neither of include / exclude, or a contradictory rule (names ``path``, ``index``
            and the key).
    """
    if not isinstance(entry, Mapping):
        raise RulesFileError(path, index, None, f"a rule must be a mapping, got {type(entry).__name__}")
    unknown = [key for key in entry if key not in RULE_KEYS]
    if unknown:  # all of them at once, so that one edit fixes the file
        close = {key: difflib.get_close_matches(str(key), RULE_KEYS, n=1) for key in unknown}
        allowed = "" if all(close.values()) else f"; allowed: {', '.join(RULE_KEYS)}"
        if len(unknown) == 1:
            (key,) = unknown
            raise RulesFileError(path, index, key, f"unknown key; did you mean {close[key][0]!r}?" if close[key]
                                 else f"unknown key{allowed}")
        named = ", ".join(f"{key!r} (did you mean {close[key][0]!r}?)" if close[key] else repr(key) for key in unknown)
        raise RulesFileError(path, index, None, f"unknown keys {named}{allowed}")
    actions = [a for a in _ACTIONS if a in entry]
    if len(actions) != 1:
        raise RulesFileError(path, index, None, "give exactly one of 'include' or 'exclude' (the pattern)")
    action = actions[0]
    if not isinstance(entry[action], str) or not entry[action]:
        raise RulesFileError(path, index, action, f"must be a non-empty string pattern, got {entry[action]!r}")
    values = _checked_values(entry, action, path, index)
    try:
        return Rule(entry[action], RuleAction(action), **values)
    except RuleFieldError as err:
        if err.key == "pattern":  # the file's key for the pattern is the action
            raise RulesFileError(path, index, action, err.problem) from err
        raise RulesFileError(path, index, err.key, f"invalid rule: {err.problem}") from err


@dataclass(frozen=True)
class RulesFile:
    """A parsed rules file.

    Attributes:
        path: the file.
        preset: the preset it names, or None.
        rules: its rules, in order (after the preset's).
    """

    path: str
    preset: str | None
    rules: tuple[Rule, ...]


def _parse_problem(err: Exception) -> str:
    """A parser's error on one line, with the line and column (PyYAML's spans several lines;
    tomllib's already ends with "(at line L, column C)")."""
    mark = getattr(err, "problem_mark", None)
    if mark is None:
        return str(err)
    text = f"{getattr(err, 'problem', None) or err} at line {mark.line + 1}, column {mark.column + 1}"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None:
        text += f" ({context} from line {start.line + 1}, column {start.column + 1})"
    return text


def _read_document(path: Path) -> Any:
    """The file parsed as TOML, JSON or YAML, by its suffix; None for a file with nothing in it.

    Raises:
        RulesFileError: the file is missing, a directory, of another suffix, or does not parse.
    """
    text_path = str(path)
    if path.is_dir():
        raise RulesFileError(text_path, None, None, "is a directory, not a rules file")
    if not path.is_file():
        raise RulesFileError(text_path, None, None, "no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise RulesFileError(text_path, None, None, f"unknown suffix; use {', '.join(SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            return None
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as err:
        raise RulesFileError(text_path, None, None, f"not valid {path.suffix[1:].upper()}: {_parse_problem(err)}") from err


def load_rules_file(path: str | Path) -> RulesFile:
    """Read a YAML (``.yaml``/``.yml``), JSON (``.json``, read as JSON) or TOML (``.toml``) rules file.

    Top-level keys: ``rules`` (a list of rule mappings, :func:`rule_from_mapping`) and
    ``preset`` (a name in :data:`~scconv_surgery.rules.PRESETS`); at least one of them must say
    something (a non-empty ``rules`` list, or a ``preset``).

    Raises:
        RulesFileError: the file is missing, unreadable, not YAML / JSON / TOML, empty (or with
            neither rules nor a preset), has an unknown top-level key, or holds an invalid rule
            (the error names the file, the rule's index and the key).
    """
    path = Path(path)
    text_path = str(path)
    document = _read_document(path)
    if document is None or document == {}:
        raise RulesFileError(text_path, None, None, "is empty: it holds no rules and no preset; give a 'rules' list "
                             "(e.g. 'rules: [{include: \"layer4.*\"}]' in YAML), or leave the rules file out to "
                             "replace every eligible conv")
    if not isinstance(document, Mapping):
        raise RulesFileError(text_path, None, None, "the top level must be a mapping with a 'rules' list")
    for key in document:
        if key not in ("rules", "preset"):
            raise RulesFileError(text_path, None, key, "unknown top-level key; allowed: rules, preset")
    preset = document.get("preset")
    if preset is not None and preset not in PRESETS:
        raise RulesFileError(text_path, None, "preset", f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    entries = document.get("rules", [])
    if not isinstance(entries, list):
        raise RulesFileError(text_path, None, "rules", f"must be a list, got {type(entries).__name__}")
    if not entries and preset is None:
        raise RulesFileError(text_path, None, "rules", "is empty and there is no preset: the file says nothing; give "
                             "at least one rule, or a preset")
    rules = tuple(rule_from_mapping(e, path=text_path, index=i) for i, e in enumerate(entries))
    return RulesFile(text_path, preset, rules)
