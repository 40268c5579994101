"""The demo's recipe, in one home: the synthetic set and the tools/train.py command that trains on it.

tools/demo.py runs it; benchmarks/quality.py trains it over seeds, and benchmarks/older_recipe.py reads the
same command (docs/quality.md); benchmarks/finetune.py starts from it. Without
PyTorch at import: tools/demo.py's --help answers at once.

    cmd = train_command(write_demo_data(Path("demo_output/data")), Path("demo_output/model"), seed=0)
    subprocess.run(cmd, cwd=REPOSITORY_ROOT)    # the tool's path is relative to the repository root
"""

from __future__ import annotations

import sys
from pathlib import Path

# The recipe's length: 384 steps of 8 images. Shorter recipes left some seeds below AP50 0.6 (docs/quality.md).
EPOCHS, BATCH_SIZE = 12, 8


def train_command(
    data: Path,
    model_dir: Path,
    *,
    seed: int,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    device: str | None = None,
    eval_every: int = 1,
    fresh: bool = False,
) -> list[str]:
    """The demo's training recipe (benchmarks/quality.py measures it over seeds): SSDLite from scratch,
    lr 0.1 for a batch of 32 (scaled), warm-up 30 iterations, x0.1 two epochs before the end.
    [python, "tools/train.py", flags...]: run it from the repository root."""
    return [
        sys.executable,
        "tools/train.py",
        "--data-path",
        str(data),
        "--save-folder",
        str(model_dir),
        "--model",
        "ssdlite",
        "--backbone-weights",
        "none",
        "--epochs",
        str(epochs),
        "--multistep",
        str(max(epochs - 2, 1)),
        "--batch-size",
        str(batch_size),
        "--lr",
        "0.1",
        "--warmup",
        "30",
        "--num-workers",
        "1",
        "--channels-last",
        "--seed",
        str(seed),
        "--eval-every",
        str(eval_every),
        *(["--no-resume"] if fresh else []),
        *(["--device", device] if device else []),
    ]


def write_demo_data(root: Path) -> Path:
    """The demo's synthetic set (256 train, 64 val images; always the same: seed 0) under root."""
    from ssdfast.data import write_synthetic_coco  # OpenCV and NumPy: loaded when the set is written

    return write_synthetic_coco(root, num_train=256, num_val=64, seed=0)
