"""What the code cites lives in the repository, and the speed tables are generated, not typed."""

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


def test_the_speed_tables_are_generated_from_the_results_files():
    """docs/speed.md and docs/deploy.md show between their markers exactly what benchmarks/report.py makes of
    benchmarks/results/*.json: no table is typed by hand, and every results file can be read."""
    import report  # benchmarks/report.py (on pytest's path: pyproject.toml)

    for start, end, export, page in report.PAGES:
        shown = page.read_text().split(start, 1)[1].split(end, 1)[0].strip()
        assert shown == report.tables(export).strip(), page.name
