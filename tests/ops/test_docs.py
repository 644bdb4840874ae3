"""README.md and docs/ link only to files that exist in the repository, and the README's test command is
the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_LINKS = [
    re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)"),  # [text](target "title"), images too
    re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M),          # [id]: target
    re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']"""),               # <img src="...">, <a href="...">
]


def relative_links(text: str) -> list[str]:
    """The link targets of a markdown text that name files (no URL, no same-page anchor), fenced code
    blocks left out."""
    text = _FENCE.sub("", text)
    targets = [m.group(1) for pattern in _LINKS for m in pattern.finditer(text)]
    return [t for t in targets if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", t) and not t.startswith("#")]


def test_links_are_found():
    assert len(DOCS) > 3
    text = ('[a](docs/x.md#part "title") ![b](<q.png>) [d](https://e.org) [f](#top)\n[c]: ../y.md\n'
            '<img src="z.svg">\n```\n[g](in/code.md)\n```\n')
    assert relative_links(text) == ["docs/x.md#part", "q.png", "../y.md", "z.svg"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_dangling_links(doc):
    bad = []
    for target in relative_links(doc.read_text(encoding="utf-8")):
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.exists() or not path.is_relative_to(ROOT):
            bad.append(target)
    assert not bad, f"{doc.relative_to(ROOT)} links to files missing from the repository: {bad}"


def test_ci_runs_the_readme_test_command():
    """.ci/run runs exactly the test command the README gives users."""
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line and
          not line.lstrip().startswith("#")]
    assert len(ci) == 1 and ci[0].strip() in (ROOT / "README.md").read_text(), ci
