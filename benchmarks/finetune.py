"""Does fine-tuning pay, with the recipe a user gets? The demo's model (trained on the synthetic set A)
fine-tuned onto a second, smaller synthetic set B whose categories carry other names, against B trained
from scratch with the demo's recipe.

    python benchmarks/finetune.py                                   # trains A first (the demo's recipe)
    python benchmarks/finetune.py --source demo_output/model/best.pt    # start from make demo's model

B is the synthetic generator with another seed (other images), 128 training and 64 val images by
default (a coco128-sized set; --train-images, --val-images), its categories renamed (circle -> disc, square -> tile, triangle -> wedge): no class
row is shared by name, so only the backbone, the extra layers and the box heads carry over. The shapes
are the same ones A's model learnt, which makes B easier than a real new set.

The fine-tune run is what a user types: tools/train.py with --weights, the data and the model, and no
schedule flag, so the fine-tuning recipe (ssdfast/training/recipe.py) chooses epochs, batch, lr, warm-up
and lr drops. It is evaluated once, at its end (--eval-every: not part of the schedule). Measured on B's
val split with tools/eval.py:

- before: the model the fine-tune run starts from (A's weights, B's class rows fresh); expect AP ~0;
- A's model with its labels read as B's by position (--ignore-category-names): what the features
  already know, since the shapes are the same;
- after: the fine-tune run's last.pt;
- B from scratch with the demo's recipe (ssdfast/training/demo_recipe.py).

Writes benchmarks/results/finetune-<machine>.json (AP, AP50, optimizer steps, minutes and the command of
each run) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from quality import run_checked, shown, train_once  # benchmarks/quality.py and report.py, beside this script
from report import RESULTS, fill_between, machine_name, this_machine

from ssdfast.training.demo_recipe import BATCH_SIZE, EPOCHS, write_demo_data
from ssdfast.training.recipe import FINE_TUNE

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "training.md"  # its table, between these markers, is generated from the results file
DOC_START, DOC_END = "<!-- finetune:start -->", "<!-- finetune:end -->"

RENAMED = {"circle": "disc", "square": "tile", "triangle": "wedge"}
NUM_TRAIN, NUM_VAL = 128, 64  # set B: a coco128-sized set (the recipe's 30 epochs: 480 steps of 8)


def second_set(root: Path, num_train: int = NUM_TRAIN, num_val: int = NUM_VAL) -> Path:
    """Set B: the synthetic generator with another seed (other images), its categories renamed."""
    from ssdfast.data import write_synthetic_coco

    data = write_synthetic_coco(root, num_train=num_train, num_val=num_val, seed=1)
    for split in ("train", "val"):
        path = data / "annotations" / f"instances_{split}2017.json"
        coco = json.loads(path.read_text())
        for category in coco["categories"]:
            category["name"] = RENAMED[category["name"]]
        path.write_text(json.dumps(coco))
    return data


def finetune_command(data: Path, folder: Path, source: Path, seed: int) -> list[str]:
    """What a user types to fine-tune: --weights, the data and the model, no schedule flag (the recipe
    chooses them). Evaluated once, after the recipe's last epoch. [python, "tools/train.py", flags...]"""
    return [
        sys.executable,
        "tools/train.py",
        "--data-path",
        str(data),
        "--save-folder",
        str(folder),
        "--model",
        "ssdlite",
        "--weights",
        str(source),
        "--num-workers",
        "1",
        "--seed",
        str(seed),
        "--eval-every",
        str(FINE_TUNE.epochs),
    ]


def steps_of(epochs: int, images: int, batch_size: int) -> int:
    """Optimizer steps of a one-process run: full batches only (the training sampler drops the last
    partial batch, or gives one smaller batch when there are fewer images than a batch; ssdfast/data/sampler.py)."""
    return epochs * max(images // batch_size, 1)


def start_checkpoint(source: Path, data: Path, out: Path, seed: int) -> Path:
    """The model a fine-tune run from `source` onto `data` starts from (ssdfast/training/finetune.py: the
    source's weights, class rows of shared names kept, the others freshly initialised), saved at `out`."""
    import torch

    from ssdfast.machinery.checkpoint import save_checkpoint
    from ssdfast.models import build_model
    from ssdfast.training.finetune import load_source, transfer_weights

    coco = json.loads((data / "annotations" / "instances_val2017.json").read_text())
    categories = sorted(coco["categories"], key=lambda c: c["id"])  # labels follow sorted category ids
    names = [c["name"] for c in categories]
    state, meta = load_source(source)
    torch.manual_seed(seed)
    model = build_model(meta["model_name"], num_classes=len(names), backbone_weights="none")
    transfer_weights(model, state, meta["category_names"], names)
    save_checkpoint(
        out,
        {
            "model": model.state_dict(),
            "model_name": meta["model_name"],
            "num_classes": len(names),
            "category_ids": [c["id"] for c in categories],
            "category_names": names,
        },
    )
    return out


def evaluate(weights: Path, data: Path, output: Path, env: dict, extra: list[str] = ()) -> dict:
    """tools/eval.py on data's val split -> {"AP", "AP50", "minutes", "command"}."""
    cmd = [
        sys.executable,
        "tools/eval.py",
        "--data-path",
        str(data),
        "--weights",
        str(weights),
        "--output",
        str(output),
        "--num-workers",
        "1",
        *extra,
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    run_checked(cmd, env, f"evaluating {weights}")
    metrics = json.loads(output.with_name(f"{output.stem}.metrics.json").read_text())
    return {"AP": metrics["AP"], "AP50": metrics["AP50"], "minutes": (time.time() - start) / 60, "command": shown(cmd)}


def finetune_once(data: Path, folder: Path, source: Path, seed: int, env: dict) -> dict:
    """The fine-tune run, recipe defaults -> {"AP", "AP50", "loss", "recipe", "minutes", "command"}."""
    cmd = finetune_command(data, folder, source, seed)
    start = time.time()
    stdout = run_checked(cmd, env, "fine-tuning")
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    final = [r for r in records if "iteration" not in r and "coco/AP" in r][-1]
    recipe = next((line.strip() for line in stdout.splitlines() if line.strip().startswith("recipe:")), None)
    return {
        "AP": final["coco/AP"],
        "AP50": final["coco/AP50"],
        "loss": final["loss"],
        "recipe": recipe,
        "minutes": (time.time() - start) / 60,
        "command": shown(cmd),
    }


def table(runs: dict) -> str:
    """Markdown rows: run, AP, AP50, optimizer steps, minutes."""
    rows = ["| run | AP | AP50 | steps | minutes |", "|---|---|---|---|---|"]
    for name, run in runs.items():
        steps = run.get("steps")
        rows.append(
            f"| {name} | {run['AP']:.3f} | {run['AP50']:.3f} | {steps if steps is not None else '-'} "
            f"| {run['minutes']:.1f} |"
        )
    return "\n".join(rows)


def doc_table(results: Path) -> str:
    """docs/training.md's measured table: the machine and the note of a results file, then its table."""
    data = json.loads(results.read_text())
    machine = data["machine"]
    where = f"{machine.get('cpu') or machine_name(machine)}, torch {machine.get('torch', '?')}"
    return f"`benchmarks/results/{results.name}` ({where}; {data['note']}):\n\n{table(data['runs'])}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=None, help="A's model (default: trained here, the demo's recipe)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")
    p.add_argument("--train-images", type=int, default=NUM_TRAIN, help="B's training images")
    p.add_argument("--val-images", type=int, default=NUM_VAL, help="B's val images")
    p.add_argument("--note", default="", help="a note stored with the results (what else ran on the machine)")
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    runs = {}
    with tempfile.TemporaryDirectory(prefix="ssdfast_finetune_") as tmp:
        tmp = Path(tmp)
        set_b = second_set(tmp / "b", args.train_images, args.val_images)
        source = args.source
        if source is None:
            source_run = train_once(write_demo_data(tmp / "a"), tmp / "model_a", args.seed, EPOCHS, None, env)
            runs["A from scratch (demo recipe; the source)"] = {
                **source_run,
                "steps": steps_of(EPOCHS, 256, BATCH_SIZE),
            }
            source = tmp / "model_a" / "last.pt"
        runs["B before fine-tuning (A's weights, B's class rows fresh)"] = evaluate(
            start_checkpoint(source, set_b, tmp / "start.pt", args.seed), set_b, tmp / "eval_start" / "d.json", env
        )
        runs["A's model on B, labels by position (--ignore-category-names)"] = evaluate(
            source, set_b, tmp / "eval_source" / "d.json", env, ["--ignore-category-names"]
        )
        print(table(runs), flush=True)
        tuned = finetune_once(set_b, tmp / "tuned_b", source, args.seed, env)
        runs["B fine-tuned from A (recipe defaults)"] = {
            **tuned,
            "steps": steps_of(FINE_TUNE.epochs, args.train_images, FINE_TUNE.batch_size),
        }
        print(table(runs), flush=True)
        scratch = train_once(set_b, tmp / "scratch_b", args.seed, EPOCHS, None, env)
        runs["B from scratch (demo recipe)"] = {**scratch, "steps": steps_of(EPOCHS, args.train_images, BATCH_SIZE)}
    machine = this_machine()
    note = f"set B: {args.train_images} train / {args.val_images} val images; seed {args.seed}. {args.note}".strip()
    out = RESULTS / f"finetune-{machine_name(machine)}.json"
    out.write_text(json.dumps({"machine": machine, "note": note, "runs": runs}, indent=1))
    DOC.write_text(fill_between(DOC.read_text(), DOC_START, DOC_END, doc_table(out)))
    print(table(runs))
    print(f"wrote {out} and its table in {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
