"""The whole pipeline on a built-in synthetic dataset: no data, no GPU, no downloads needed.

    make demo                # installs, builds, then runs this
    python tools/demo.py --out demo_output

1. writes a COCO-layout dataset of coloured shapes (256 train, 64 val images) to OUT/data;
2. trains SSDLite-MobileNetV2 from scratch (tools/train.py with ssdfast/training/demo_recipe.py's recipe; minutes
   on a CPU: the time and the AP50 it reaches are in docs/quality.md);
3. evaluates it (tools/eval.py: the 12-number COCO table);
4. draws its detections on a few val images (tools/detect.py).
Every step is one of the real tools, run with the command line printed before it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ssdfast import flag_types as flags
from ssdfast.machinery.exit_codes import EXIT_ERROR, EXIT_STOPPED
from ssdfast.training.demo_recipe import BATCH_SIZE, EPOCHS, train_command, write_demo_data

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str]) -> None:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode == EXIT_STOPPED:  # stopped after writing last.pt: `make demo` again goes on from there
        sys.exit(f"demo: stopped; last.pt is saved: run `make demo` again to resume ({shlex.join(cmd)})")
    if result.returncode != 0:
        sys.exit(f"demo: step failed (exit {result.returncode}): {shlex.join(cmd)}")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=flags.HelpFormatter)
    p.add_argument("--out", default="demo_output", help="everything the demo writes goes here")
    p.add_argument(
        "--epochs",
        type=flags.positive,
        default=EPOCHS,
        help="training epochs (README and docs/quality.md give the AP50 they reach)",
    )
    p.add_argument(
        "--batch-size", type=flags.batch_size, default=BATCH_SIZE, help="training batch size (lr scales with it)"
    )
    flags.add_device_flags(p, cudnn=False)
    p.add_argument("--fresh", action="store_true", help="retrain even if OUT/model/last.pt exists")
    p.add_argument(
        "--seed",
        type=flags.integer(0, flags.MAX_SEED),
        default=0,
        help="seed of the training run (initialisation, data order, augmentation)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = get_args(argv)
    from ssdfast.machinery.runtime import check_device  # PyTorch: after --help

    try:
        check_device(args.device)  # here, not after writing the data, in the training step
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    data, model_dir, detections = out / "data", out / "model", out / "detections"
    py = sys.executable
    device = ["--device", args.device] if args.device else []
    start = time.time()
    if not (data / "annotations" / "instances_val2017.json").exists():
        print(f"writing the synthetic COCO-layout dataset to {data}", flush=True)
        write_demo_data(data)
    run(
        train_command(
            data,
            model_dir,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            fresh=args.fresh,
        )
    )
    run(
        [
            py,
            "tools/eval.py",
            "--data-path",
            str(data),
            "--weights",
            str(model_dir / "last.pt"),
            "--batch-size",
            "16",
            "--num-workers",
            "1",
            *device,
        ]
    )
    run(
        [
            py,
            "tools/detect.py",
            "--weights",
            str(model_dir / "last.pt"),
            "--input",
            str(data / "val2017" / "*00[0-7].jpg"),
            "--output",
            str(detections),
            "--score-threshold",
            "0.4",
            *device,
        ]
    )
    metrics = json.loads((model_dir / "metrics_val.json").read_text())
    print(f"\ndemo finished in {(time.time() - start) / 60:.1f} min")
    print(
        f"  COCO AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f} on {metrics['images_evaluated']} synthetic val images"
    )
    print(f"  checkpoints:        {model_dir}/last.pt, best.pt")
    print(f"  metrics:            {model_dir}/metrics_val.json, training log {model_dir}/log.jsonl")
    print(f"  annotated images:   {detections}/ (detections listed in {detections}/detections.json)")
    print(f"  TensorBoard:        tensorboard --logdir {model_dir}/tensorboard")
    python = Path(py).relative_to(ROOT) if Path(py).is_relative_to(ROOT) else py  # .venv/bin/python after make demo
    print(
        f"  your own image:     {python} tools/detect.py --weights {model_dir}/last.pt --input IMAGE --output out.jpg"
    )
    print(
        "  (the demo model knows only coloured circles, squares and triangles: README, 'What the demo model can detect')"
    )
    return 0 if metrics["AP50"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
