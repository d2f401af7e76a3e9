"""The repository stands alone: nothing in it names a path outside it."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".ini"}
FILES = sorted(p for p in ROOT.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file()
               and not any(part.startswith(".") or part in {"build", "dist"} or part.endswith(".egg-info")
                           for part in p.relative_to(ROOT).parts))


@pytest.mark.parametrize("forbidden", ["../shared", "shared/seed", "/work/"])
def test_no_file_names_a_path_outside_the_repository(forbidden):
    this = Path(__file__).resolve()
    offenders = [str(p.relative_to(ROOT)) for p in FILES if p != this and forbidden in p.read_text(errors="ignore")]
    assert not offenders, f"{forbidden!r} in {offenders}"
