"""What the code cites lives in the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    p
    for pattern in ("ssdfast/**/*.py", "tools/*.py", "tests/*.py", "benchmarks/*.py", "csrc/**/*.*", "*.md")
    for p in ROOT.glob(pattern)
]


def test_no_citation_points_outside_the_repository():
    design = "DESIGN" + " section"  # split so this file does not cite it
    outside = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in SOURCES
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if design in line or "../" + "shared" in line
    ]
    assert not outside, outside


def test_cited_sections_of_the_design_document_exist():
    doc = (ROOT / "docs" / "ssd.md").read_text()
    sections = set(re.findall(r"^## (\d+)\.", doc, flags=re.M))
    cited = {
        (str(p.relative_to(ROOT)), n)
        for p in SOURCES
        for n in re.findall(r"docs/ssd\.md(?:;[^)]*)? section (\d+)", p.read_text())
    }
    assert cited and all(n in sections for _, n in cited), sorted(cited)
