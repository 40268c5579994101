"""Turn a pytest-benchmark JSON into benchmarks/results/<machine>.json and the speed tables of docs/.

    python benchmarks/report.py benchmarks/results/latest.json
    python benchmarks/report.py part1.json part2.json --checks checks.json    # what tools/gpu_check.py does
    python benchmarks/report.py export.json --name export-cpu-2-cores       # docs/deploy.md's table
    python benchmarks/report.py edge.json --name edge-cpu-2-cores           # docs/deploy.md's formats table

Ratios compare candidates with their group's baseline from the same run (same machine, same process).
docs/speed.md's table (between the bench markers) and docs/deploy.md's (between the export-bench markers) are
regenerated from every results/*.json, never typed.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
EXPORT_START, EXPORT_END = "<!-- export-bench:start -->", "<!-- export-bench:end -->"
EDGE_START, EDGE_END = "<!-- edge-bench:start -->", "<!-- edge-bench:end -->"


def machine_name(info: dict) -> str:
    return re.sub(r"[^a-z0-9]+", "-", info["device"].lower()).strip("-")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# Dense bf16 tensor-core peak (no sparsity), from NVIDIA's data sheets, for "% of peak".
BF16_PEAK_FLOPS = {
    "H100 80GB HBM3": 989.4e12,
    "H100 SXM": 989.4e12,
    "H100 NVL": 835.5e12,
    "H100 PCIe": 756.5e12,
    "H200": 989.4e12,
    "A100": 312e12,
    "L40S": 362.1e12,
}


def bf16_peak(gpu: str | None) -> float | None:
    return next((peak for name, peak in BF16_PEAK_FLOPS.items() if gpu and name in gpu), None)


def this_machine() -> dict:
    """What this process runs on (benchmarks/conftest.py stores the same in every JSON it writes)."""
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info = {
        "device": gpu or f"CPU {os.cpu_count()} cores",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return info


def summarise(raw: dict) -> dict:
    # The machine that ran the benchmarks (recorded in the JSON), else this one.
    recorded = raw.get("machine_info", {}).get("ssdfast")
    info = {**(recorded or this_machine()), "date": raw.get("datetime")}
    if raw.get("commit_info", {}).get("id"):
        info["commit"] = raw["commit_info"]["id"][:10]
    gpu = info.get("gpu")
    groups: dict[str, list] = {}
    for bench in raw["benchmarks"]:
        groups.setdefault(bench["group"], []).append(bench)
    out = []
    peak = bf16_peak(gpu)
    if peak:
        info["bf16_peak_tflops"] = peak / 1e12
    for group, benches in sorted(groups.items()):
        base = next((b for b in benches if b["extra_info"].get("role") == "baseline"), None)
        rows = []
        for b in sorted(benches, key=lambda b: b["stats"]["median"]):
            median = b["stats"]["median"]
            items = b["extra_info"].get("items", 1)
            flop = b["extra_info"].get("flop_per_item")  # counted by torch.utils.flop_counter in the benchmark
            rows.append(
                {
                    "name": b["name"].split("[", 1)[-1].rstrip("]"),
                    "median_s": median,
                    # items = 1 is a call without a count (an op), unless the benchmark says it is one image
                    "items_per_s": items / median if items > 1 or b["extra_info"].get("throughput") else None,
                    "baseline": b is base,
                    "speedup_vs_baseline": base["stats"]["median"] / median if base else None,
                    "pct_of_bf16_peak": 100 * flop * items / median / peak if flop and peak else None,
                    "work": b["extra_info"].get("work"),
                    # benchmarks/test_bench_edge.py: COCO AP of the file, and of the float model, on the same images
                    "ap": b["extra_info"].get("ap"),
                    "ap_float": b["extra_info"].get("ap_float"),
                }
            )  # what one call computes (roofline-style note)
        out.append({"group": group, "baseline": base["name"] if base else None, "rows": rows})
    return {"machine": info, "groups": out}


def table(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"**{m['device']}** ({m['cpu']}), torch {m['torch']}, torchvision {m.get('torchvision', '?')}, "
        f"Python {m['python']}, {m['date'][:10] if m.get('date') else ''}"
        + (f", commit {m['commit']}" if m.get("commit") else "")
        + (f". {m['note']}" if m.get("note") else ""),
        "",
    ]
    with_ap = any(row.get("ap") is not None for group in result["groups"] for row in group["rows"])
    last = "AP (float model)" if with_ap else "% of bf16 peak"
    lines += [
        f"| benchmark | implementation | median | throughput | vs baseline | {last} |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for group in result["groups"]:
        for row in group["rows"]:
            thr = f"{row['items_per_s']:.1f} /s" if row["items_per_s"] else ""
            ratio = (
                "baseline"
                if row["baseline"]
                else (f"{row['speedup_vs_baseline']:.1f}x" if row["speedup_vs_baseline"] else "")
            )
            median = row["median_s"]
            shown = f"{median * 1e3:.2f} ms" if median < 1 else f"{median:.2f} s"
            pct = f"{row['pct_of_bf16_peak']:.1f}%" if row.get("pct_of_bf16_peak") else ""
            if with_ap:
                pct = f"{row['ap']:.3f} ({row['ap_float']:.3f})" if row.get("ap") is not None else ""
            lines.append(f"| {group['group']} | {row['name']} | {shown} | {thr} | {ratio} | {pct} |")
        work = next((row["work"] for row in group["rows"] if row.get("work")), None)
        if work:
            fastest = min(group["rows"], key=lambda row: row["median_s"])
            lines.append(
                f"| {group['group']} | *work per call: {work}; fastest {fastest['median_s'] * 1e3:.2f} ms* | | | | |"
            )
    checks = result.get("checks")
    if checks:
        lines += [
            "",
            "Checks on this machine (tools/gpu_check.py): "
            + ", ".join(
                f"{name} {'passed' if c.get('ok') else 'FAILED'}" for name, c in checks.items() if isinstance(c, dict)
            ),
        ]
    return "\n".join(lines)


def fill_between(text: str, start: str, end: str, body: str) -> str:
    """`text` with what stands between the markers `start` and `end` replaced by `body` (the generated tables)."""
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


# results/export-*.json (benchmarks/test_bench_export.py, `--name export-<machine>`) and results/edge-*.json
# (benchmarks/test_bench_edge.py, `--name edge-<machine>`) go to docs/deploy.md, the others to docs/speed.md:
# (start marker, end marker, results name prefix ("": none of the others), page).
PAGES = [
    (START, END, "", ROOT / "docs" / "speed.md"),
    (EXPORT_START, EXPORT_END, "export-", ROOT / "docs" / "deploy.md"),
    (EDGE_START, EDGE_END, "edge-", ROOT / "docs" / "deploy.md"),
]
PREFIXES = [prefix for *_, prefix, _ in PAGES if prefix]


def _kind(name: str) -> str:
    return next((prefix for prefix in PREFIXES if name.startswith(prefix)), "")


def tables(prefix: str) -> str:
    """The tables of every results file whose name starts with `prefix` ("": of no other page), as the page shows them."""
    results = [
        json.loads(p.read_text())
        for p in sorted(RESULTS.glob("*.json"))
        if p.name != "latest.json" and _kind(p.name) == prefix
    ]
    # quality.py and finetune.py write results of another kind (no groups), with tables of their own.
    return "\n\n".join(table(result) for result in results if "groups" in result)


def merge(paths: list[str]) -> dict:
    """One pytest-benchmark JSON from several runs on the same machine (benchmarks concatenated)."""
    raws = [json.loads(Path(p).read_text()) for p in paths]
    return {
        "datetime": raws[-1].get("datetime"),
        "machine_info": raws[-1].get("machine_info", {}),
        "commit_info": raws[-1].get("commit_info", {}),
        "benchmarks": [b for raw in raws for b in raw["benchmarks"]],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="*", default=[str(RESULTS / "latest.json")], help="pytest-benchmark JSON file(s)")
    parser.add_argument("--checks", default=None, help="JSON of check results to store beside the timings")
    parser.add_argument("--name", default=None, help="results file name (default: the machine's name)")
    parser.add_argument("--note", default=None, help="a sentence shown with the table (e.g. what code was measured)")
    args = parser.parse_args(argv)
    result = summarise(merge(args.json))
    if args.note:
        result["machine"]["note"] = args.note
    if args.checks:
        result["checks"] = json.loads(Path(args.checks).read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"{args.name or machine_name(result['machine'])}.json"
    target.write_text(json.dumps(result, indent=1))
    print(f"wrote {target}")
    for start, end, prefix, page in PAGES:
        text = page.read_text()
        if start in text and end in text:
            page.write_text(fill_between(text, start, end, tables(prefix)))
            print(f"updated the {prefix or 'speed '}table in {page}")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
