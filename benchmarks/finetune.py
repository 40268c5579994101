"""Does fine-tuning pay? A detector trained on one synthetic set (A: the demo's), fine-tuned onto a second
set (B: other images, its categories renamed, so no class row is shared by name: only the backbone, the extra
layers and the box heads carry over) against B trained from scratch with the demo's whole recipe.

    python benchmarks/finetune.py --epochs 1 2 3        # fine-tuning lengths to try (the scratch run: 12)

Writes benchmarks/results/finetune-<machine>.json: the COCO AP/AP50 on B's val set and the training steps
of each run, and prints them. Every run is tools/train.py with the demo's recipe (ssdfast/training/demo_recipe.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from quality import train_once  # benchmarks/quality.py and report.py, beside this script
from report import RESULTS, machine_name, this_machine

from ssdfast.training.demo_recipe import BATCH_SIZE, EPOCHS, write_demo_data

ROOT = Path(__file__).resolve().parent.parent

RENAMED = {"circle": "disc", "square": "tile", "triangle": "wedge"}


def second_set(root: Path) -> Path:
    """Set B: the synthetic generator with another seed (other images), its categories renamed."""
    from ssdfast.data import write_synthetic_coco

    data = write_synthetic_coco(root, num_train=256, num_val=64, seed=1)
    for split in ("train", "val"):
        path = data / "annotations" / f"instances_{split}2017.json"
        coco = json.loads(path.read_text())
        for category in coco["categories"]:
            category["name"] = RENAMED[category["name"]]
        path.write_text(json.dumps(coco))
    return data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 3], help="fine-tuning lengths (epochs) to try")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    steps_per_epoch = 256 // BATCH_SIZE
    with tempfile.TemporaryDirectory(prefix="ssdfast_finetune_") as tmp:
        tmp = Path(tmp)
        set_a, set_b = write_demo_data(tmp / "a"), second_set(tmp / "b")
        source = train_once(set_a, tmp / "model_a", args.seed, EPOCHS, None, env)
        runs = {"source (A, from scratch)": {**source, "steps": EPOCHS * steps_per_epoch}}
        print(f"A from scratch, {EPOCHS} epochs: AP {source['AP']:.3f}, AP50 {source['AP50']:.3f}", flush=True)
        scratch = train_once(set_b, tmp / "scratch_b", args.seed, EPOCHS, None, env)
        runs["B from scratch"] = {**scratch, "steps": EPOCHS * steps_per_epoch}
        print(f"B from scratch, {EPOCHS} epochs: AP {scratch['AP']:.3f}, AP50 {scratch['AP50']:.3f}", flush=True)
        for epochs in args.epochs:
            weights = ["--weights", str(tmp / "model_a" / "last.pt")]
            tuned = train_once(set_b, tmp / f"tuned_b_{epochs}", args.seed, epochs, None, env, extra=weights)
            runs[f"B fine-tuned from A, {epochs} epoch(s)"] = {**tuned, "steps": epochs * steps_per_epoch}
            print(f"B fine-tuned, {epochs} epoch(s): AP {tuned['AP']:.3f}, AP50 {tuned['AP50']:.3f}", flush=True)
    machine = this_machine()
    out = RESULTS / f"finetune-{machine_name(machine)}.json"
    out.write_text(json.dumps({"machine": machine, "runs": runs}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
