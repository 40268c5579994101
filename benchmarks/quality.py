"""Training quality you can rerun: the demo recipe over several seeds -> mean and spread of AP, AP50, loss.

    python benchmarks/quality.py --seeds 1 2 3 4 5           # ~5 min a seed on 2 CPU cores
    python benchmarks/quality.py --seeds 1 2 --epochs 2       # a quick check of the script itself

Each seed is one run of tools/train.py with the demo's recipe (tools/demo.py: SSDLite from scratch on
the synthetic set of 256/64 images), evaluated on the val set after the last epoch. Writes
benchmarks/results/quality-<machine>.json (every run, its command, and the summary) and README's
quality table (between the quality markers). A speed table is not made here: see report.py.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from demo import train_command  # noqa: E402  (the demo's recipe: one home)
from report import RESULTS, fill_between, machine_name, this_machine  # noqa: E402

START, END = "<!-- quality:start -->", "<!-- quality:end -->"
METRICS = ("AP", "AP50", "loss")


def train_once(data: Path, folder: Path, seed: int, epochs: int, device: str | None) -> dict:
    """One seed of the recipe -> {"seed", "AP", "AP50", "loss", "minutes", "command"}."""
    cmd = train_command(data, folder, epochs=epochs, batch_size=16, seed=seed, device=device, eval_every=epochs)
    start = time.time()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"seed {seed} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    final = [r for r in records if "iteration" not in r][-1]
    return {"seed": seed, "AP": final["coco/AP"], "AP50": final["coco/AP50"], "loss": final["loss"],
            "minutes": (time.time() - start) / 60, "command": [Path(c).name if c == sys.executable else c for c in cmd]}


def summary(runs: list[dict]) -> dict:
    """Mean, sample standard deviation, min and max of each metric over the seeds."""
    out = {}
    for key in METRICS:
        values = [r[key] for r in runs]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values)}
    return out


def table(results: list[dict]) -> str:
    rows = ["| implementation | machine | seeds | AP | AP50 | final loss |", "|---|---|---|---|---|---|"]
    for result in results:
        s = result["summary"]
        cells = [f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f} ({s[k]['min']:.3f}-{s[k]['max']:.3f})" for k in METRICS]
        rows.append(f"| {result['implementation']} | {result['machine']['cpu']}, {result['machine']['cores']} cores "
                    f"| {len(result['runs'])} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="training seeds (one run each)")
    p.add_argument("--epochs", type=int, default=8, help="epochs per run (the demo's 8)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: as tools/train.py picks)")
    p.add_argument("--output", default=None, help="results file (default: benchmarks/results/quality-<machine>.json)")
    args = p.parse_args(argv)

    from ssdfast.data import write_synthetic_coco

    machine = this_machine()
    output = Path(args.output or RESULTS / f"quality-{machine_name(machine)}.json")
    runs = []
    with tempfile.TemporaryDirectory(prefix="ssdfast_quality_") as tmp:
        data = write_synthetic_coco(Path(tmp) / "data", num_train=256, num_val=64, seed=0)  # the demo's set
        for seed in args.seeds:
            runs.append(train_once(data, Path(tmp) / f"seed{seed}", seed, args.epochs, args.device))
            print(f"seed {seed}: AP {runs[-1]['AP']:.3f}, AP50 {runs[-1]['AP50']:.3f}, loss {runs[-1]['loss']:.3f} "
                  f"({runs[-1]['minutes']:.1f} min)", flush=True)
    result = {"implementation": f"ssdfast, demo recipe, {args.epochs} epochs", "machine": machine,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True).stdout.strip(),
              "runs": runs, "summary": summary(runs)}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    print(f"wrote {output}\n{table([result])}")
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        tables = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("quality-*.json"))]
        readme.write_text(fill_between(text, START, END, table(tables)))
        print(f"updated the quality table in {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
