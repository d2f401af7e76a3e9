"""The documentation stays true: docs/cli.md equals --help, and every link in it resolves."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")


def _prose_lines(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks."""
    lines, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if match and (fence is None or match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)):
            fence = None if fence else match.group(1)
            continue
        if fence is None:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, punctuation other than '-' and
    '_' dropped, each space a '-' (duplicates get -1, -2, ...: see :func:`anchors`)."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub makes for ``page``'s headings, and the ids of its HTML anchors."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose_lines(page.read_text()):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        found.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", line))
    return found


def links(page: Path) -> list[str]:
    """The targets of ``page``'s Markdown links, outside code blocks and inline code."""
    targets = []
    for line in _prose_lines(page.read_text()):
        targets += LINK.findall(INLINE_CODE.sub("", line))
    return targets


@pytest.mark.parametrize("heading, expected", [
    ("Channels beyond the paper's constraints", "channels-beyond-the-papers-constraints"),
    ("`scconv verify CHECKPOINT [--weights FILE]`", "scconv-verify-checkpoint---weights-file"),
    ("Calibration: keep what the pretrained model knew", "calibration-keep-what-the-pretrained-model-knew"),
    ("Variants: `paper` and `seed`", "variants-paper-and-seed"),
    ("Measured: calibrating ResNet-50", "measured-calibrating-resnet-50"),
    ("snake_case and 1.5x", "snake_case-and-15x"),
])
def test_slug_follows_github(heading, expected):
    assert slug(heading) == expected


def test_duplicate_headings_get_numbered_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Usage\n\n## Options\n\n```bash\n# Options\n```\n\n## Options\n\n## Options\n")
    assert anchors(page) == {"usage", "options", "options-1", "options-2"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not checked here
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_index():
    index = ROOT / "docs" / "index.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in links(index) if t.partition("#")[0]}
    missing = [p.name for p in PAGES[1:] if p != index and p.resolve() not in linked]
    assert not missing, f"docs/index.md links none of {missing}"


def test_readme_stays_short():
    """The README says what, why, how to start and where to read on; the rest lives in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220


@pytest.fixture(scope="module")
def cli_docs():
    return load_script("scripts/gen_cli_docs.py")


def test_cli_reference_equals_help(cli_docs):
    """docs/cli.md is what `python scripts/gen_cli_docs.py` writes from --help today."""
    assert cli_docs.PAGE.read_text() == cli_docs.render(), \
        "docs/cli.md differs from --help: run python scripts/gen_cli_docs.py and commit docs/cli.md"


def test_cli_reference_covers_every_command(cli_docs):
    from scconv_surgery.cli.app import app

    paths = cli_docs.command_paths()
    assert [] in paths
    assert {p[0] for p in paths if p} == {c.name for c in app.registered_commands}


def test_exit_codes_page_equals_the_cli_table(cli_docs):
    """docs/exit-codes.md's table is what EXIT_CODES says, the prose around it as written."""
    from scconv_surgery.cli.errors import EXIT_CODES

    page = cli_docs.EXIT_CODES_PAGE.read_text()
    assert page == cli_docs.exit_codes_page(page), "run python scripts/gen_cli_docs.py and commit docs/exit-codes.md"
    assert all(f"| {code.code} | {code.meaning} |" in page for code in EXIT_CODES)


def test_cli_docs_check_reports_drift(cli_docs, tmp_path, capsys):
    stale = tmp_path / "cli.md"
    stale.write_text(cli_docs.PAGE.read_text().replace("--dry-run", "--dry-rnu", 1))
    assert cli_docs.main(["--check", "--out", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_zoo_page_has_the_section_the_sweep_rewrites():
    """`benchmarks/zoo.py --docs docs/zoo.md` replaces the text between these markers, nothing else."""
    zoo = load_script("benchmarks/zoo.py")
    text = (ROOT / "docs" / "zoo.md").read_text()
    assert text.count(zoo.SECTION_START) == 1 and text.count(zoo.SECTION_END) == 1
    assert text.index(zoo.SECTION_START) < text.index(zoo.SECTION_END)
    assert zoo.SECTION_START not in (ROOT / "README.md").read_text()
