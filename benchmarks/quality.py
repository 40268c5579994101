"""Training quality you can rerun: the demo recipe over several seeds -> mean and spread of AP, AP50, loss.

    python benchmarks/quality.py --seeds 1 2 3 4 5           # ~5 min a seed on 2 CPU cores
    python benchmarks/quality.py --seeds 1 2 --epochs 2       # a quick check of the script itself
    python benchmarks/quality.py --older PATH --seeds 1 2 3 4 5   # the older implementation, same recipe

Each seed is one run of tools/train.py with the demo's recipe (ssdfast/training/demo_recipe.py: SSDLite from scratch on
the synthetic set of 256/64 images), evaluated on the val set after the last epoch. Writes
benchmarks/results/quality-<machine>-e<epochs>b<batch>.json (every run, its command, the summary) and docs/quality.md's
quality table (between the quality markers). A speed table is not made here: see report.py.

With --older PATH (a clone of uvipen/SSD-pytorch, kept outside this repository), each seed is trained
by the older implementation's own code instead (benchmarks/older_recipe.py drives it: same data, same
recipe, read from the same train_command) and written to quality-older-<machine>-e<epochs>b<batch>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from report import RESULTS, fill_between, machine_name, this_machine  # benchmarks/report.py, beside this script

from ssdfast.training.demo_recipe import BATCH_SIZE, EPOCHS, train_command, write_demo_data

ROOT = Path(__file__).resolve().parent.parent

START, END = "<!-- quality:start -->", "<!-- quality:end -->"
METRICS = ("AP", "AP50", "loss")


def run_checked(cmd: list[str], env: dict, what: str) -> str:
    """Run one training process; its stdout, or an error with the tail of its stderr."""
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result.stdout


def shown(cmd: list[str]) -> list[str]:
    """The command as stored in the results (the interpreter by name, not this machine's path)."""
    return [Path(c).name if c == sys.executable else c for c in cmd]


def train_once(
    data: Path, folder: Path, seed: int, epochs: int, device: str | None, env: dict, extra: list[str] = ()
) -> dict:
    """One seed of the recipe (+ `extra` flags) -> {"seed", "AP", "AP50", "loss", "minutes", "command"}."""
    cmd = [*train_command(data, folder, epochs=epochs, seed=seed, device=device, eval_every=epochs), *extra]
    start = time.time()
    run_checked(cmd, env, f"seed {seed}")
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    final = [r for r in records if "iteration" not in r][-1]
    return {
        "seed": seed,
        "AP": final["coco/AP"],
        "AP50": final["coco/AP50"],
        "loss": final["loss"],
        "minutes": (time.time() - start) / 60,
        "command": shown(cmd),
    }


def recipe_flags(cmd: list[str]) -> dict[str, list[str]]:
    """tools/train.py's command line -> {flag: [values]} (the recipe the older implementation is given)."""
    flags, current = {}, None
    for word in cmd[2:]:
        if word.startswith("--"):
            current = flags.setdefault(word, [])
        elif current is not None:
            current.append(word)
    return flags


def older_command(older: Path, data: Path, seed: int, epochs: int) -> list[str]:
    """benchmarks/older_recipe.py's command line for one seed of the demo's recipe."""
    flags = recipe_flags(train_command(data, Path("unused"), epochs=epochs, seed=seed))
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "older_recipe.py"),
        "--older",
        str(older),
        "--data-path",
        str(data),
        "--seed",
        str(seed),
    ]
    for flag in ("--epochs", "--batch-size", "--lr", "--warmup", "--multistep", "--num-workers"):
        cmd += [flag, *flags[flag]]
    return cmd


def train_older_once(older: Path, data: Path, seed: int, epochs: int, env: dict) -> dict:
    """One seed of the same recipe trained by the older implementation (benchmarks/older_recipe.py)."""
    cmd = older_command(older, data, seed, epochs)
    stdout = run_checked(cmd, env, f"older implementation, seed {seed}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "command": shown(cmd)}


def summary(runs: list[dict]) -> dict:
    """Mean, sample standard deviation, min and max of each metric over the seeds."""
    out = {}
    for key in METRICS:
        values = [r[key] for r in runs]
        out[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }
    return out


def table(results: list[dict]) -> str:
    """Markdown rows grouped by recipe (longest first), ssdfast above the older implementation."""
    rows = ["| recipe | implementation | machine | seeds | AP | AP50 | final loss |", "|---|---|---|---|---|---|---|"]
    for result in sorted(
        results, key=lambda r: (-r["recipe"]["epochs"], r["recipe"]["batch_size"], r["implementation"] != "ssdfast")
    ):
        s, recipe = result["summary"], result["recipe"]
        cells = [f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f} ({s[k]['min']:.3f}-{s[k]['max']:.3f})" for k in METRICS]
        rows.append(
            f"| {recipe['epochs']} epochs, batch {recipe['batch_size']} | {result['implementation']} "
            f"| {result['machine']['cpu']}, {result['machine']['cores']} cores "
            f"| {len(result['runs'])} | " + " | ".join(cells) + " |"
        )
    return "\n".join(rows)


def git_commit(folder: Path) -> str:
    return (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True
        ).stdout.strip()
        or "unknown commit"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="training seeds (one run each)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per run (default: the demo's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: as tools/train.py picks)")
    p.add_argument(
        "--older",
        type=Path,
        default=None,
        help="a clone of uvipen/SSD-pytorch: train the older implementation instead of ssdfast",
    )
    p.add_argument(
        "--output",
        default=None,
        help="results file (default: benchmarks/results/quality[-older]-<machine>-e<epochs>b<batch>.json)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="seeds trained at once, each with cores/jobs threads unless OMP_NUM_THREADS is set "
        "(2 on 2 cores: ~1.2x the images/s in all, each run slower: its minutes are then not a "
        "speed figure)",
    )
    args = p.parse_args(argv)
    if args.older is not None and not (args.older / "src" / "model.py").is_file():
        p.error(f"--older {args.older}: no src/model.py there (expected a clone of uvipen/SSD-pytorch)")

    machine = this_machine()
    # One file per implementation, machine and recipe length: measuring another length adds a row.
    prefix = "quality-older" if args.older else "quality"
    output = Path(args.output or RESULTS / f"{prefix}-{machine_name(machine)}-e{args.epochs}b{BATCH_SIZE}.json")
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.jobs)), **os.environ}  # the user's wins

    with tempfile.TemporaryDirectory(prefix="ssdfast_quality_") as tmp:
        data = write_demo_data(Path(tmp) / "data")

        def one_seed(seed: int) -> dict:
            if args.older:
                run = train_older_once(args.older.resolve(), data, seed, args.epochs, env)
            else:
                run = train_once(data, Path(tmp) / f"seed{seed}", seed, args.epochs, args.device, env)
            print(
                f"seed {seed}: AP {run['AP']:.3f}, AP50 {run['AP50']:.3f}, loss {run['loss']:.3f} "
                f"({run['minutes']:.1f} min)",
                flush=True,
            )
            return run

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # threads only wait on the training processes
            runs = list(pool.map(one_seed, args.seeds))
    name = f"older implementation (uvipen/SSD-pytorch {git_commit(args.older)})" if args.older else "ssdfast"
    result = {
        "implementation": name,
        "recipe": {"epochs": args.epochs, "batch_size": BATCH_SIZE},
        "machine": machine,
        "commit": git_commit(ROOT),
        "jobs": args.jobs,
        "runs": runs,
        "summary": summary(runs),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    print(f"wrote {output}\n{table([result])}")
    page = ROOT / "docs" / "quality.md"
    text = page.read_text()
    if START in text and END in text:
        tables = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("quality-*.json"))]
        page.write_text(fill_between(text, START, END, table(tables)))
        print(f"updated the quality table in {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
