"""Train SSD300-ResNet50 or SSDLite-MobileNetV2 on a dataset in the COCO, Pascal VOC or YOLO layout.

    python tools/train.py --data-path /coco --model ssd --amp                        # one GPU (or CPU)
    torchrun --nproc_per_node=8 tools/train.py --data-path /coco --model ssd --amp --dali
    python tools/train.py --data-path demo_data --model ssdlite --backbone-weights none --epochs 2
    python tools/train.py --data-path VOCdevkit/VOC2007 --model ssdlite   # or a YOLO data.yaml (detected)
    python tools/train.py --data-path my_photos/data.yaml --model ssd --weights coco_detector.pt   # fine-tune

Without --weights the recipe is COCO's; with it, one for a few hundred images (fewer epochs, smaller
batch, lower lr, a warm-up). Either way the lr drops at fractions of --epochs, a flag given wins, and
the first line printed says what was chosen.

Start the same command again to resume: it continues from --save-folder/last.pt (model, optimizer,
scaler, epoch and the iteration inside it; the data order and augmentation derive from --seed, the
epoch and the image index, so a resumed run replays what an uninterrupted one would have done).
last.pt is written atomically every --checkpoint-every (10 minutes) and at every epoch end, best.pt
when COCO AP improves; log.jsonl and TensorBoard scalars (--log-path) follow the run.
SIGTERM, SIGUSR1 or Ctrl-C: the current step finishes, last.pt is written, exit code 75 (a second
Ctrl-C aborts at once). Exit codes: ssdfast/machinery/exit_codes.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

# Only modules without PyTorch up here: --help answers at once; main() and run() import the rest.
from ssdfast import flag_types as flags
from ssdfast.data.image_files import add_image_limit_args
from ssdfast.defaults import COMPILE_BACKENDS, COMPILE_MODES, DEFAULT_MAX_BOXES, DETECTION_POLICY, MODEL_CHOICES
from ssdfast.machinery.exit_codes import EXIT_ABORTED, EXIT_ERROR, EXIT_PEER_LOST
from ssdfast.models.registry import MODEL_HELP
from ssdfast.training import recipe

if TYPE_CHECKING:
    from ssdfast.machinery.preemption import StopRequest


def get_args(argv=None) -> argparse.Namespace:
    """The command line's flags (argparse dests). The recipe flags (ssdfast/training/recipe.py) are None
    where not given: the recipe fills them in when TrainConfig is built."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=flags.HelpFormatter)
    for add_group in (data_flags, model_flags, schedule_flags, speed_flags, run_flags, evaluation_flags, logging_flags):
        add_group(p)
    args = p.parse_args(argv, argparse.Namespace(**dict.fromkeys(recipe.RECIPE_FLAGS)))
    if args.data_path is None and not (args.train_ann and args.train_images):
        p.error("no dataset given: --data-path, or --train-ann and --train-images (and --val-ann, --val-images)")
    if not args.compile and (args.compile_mode != "default" or args.compile_backend != "inductor"):
        p.error("--compile-mode and --compile-backend need --compile")
    if args.momentum == 0 and not args.no_nesterov:
        p.error("argument --momentum: Nesterov momentum needs a momentum > 0 (or pass --no-nesterov)")
    return args


def data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-path",
        default=None,
        help="dataset: COCO layout root (annotations/, train2017/, val2017/), "
        "VOCdevkit year folder (Annotations/, JPEGImages/, ImageSets/Main/), or YOLO data.yaml (or its folder)",
    )
    flags.add_data_flags(g)  # --data-format, --data-backend, --dali
    g.add_argument(
        "--train-ann", default=None, help="a COCO annotation file for training, anywhere (with --train-images)"
    )
    g.add_argument("--train-images", default=None, help="the image folder of --train-ann")
    g.add_argument(
        "--val-ann", default=None, help="a COCO annotation file for evaluation, anywhere (with --val-images)"
    )
    g.add_argument("--val-images", default=None, help="the image folder of --val-ann")
    g.add_argument(
        "--num-workers",
        type=flags.workers,
        default=flags.default_workers(),
        help="data loading workers per process (DALI: threads); the default is min(4, the CPU cores this "
        "process may use)",
    )
    g.add_argument(
        "--max-boxes",
        type=flags.integer(1, flags.MAX_BOXES),
        default=DEFAULT_MAX_BOXES,
        help="ground-truth boxes per image after padding (G)",
    )
    add_image_limit_args(g)  # --max-pixels, --allow-outside-paths


def model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="ssd", choices=MODEL_CHOICES, help=MODEL_HELP)
    g.add_argument(
        "--weights",
        default=None,
        help="fine-tune: start from this detector checkpoint (ssdfast's, the "
        "older implementation's or NVIDIA's) trained on other categories, or "
        + flags.pretrained_help("detector")
        + "; backbone and box heads are kept, the class heads keep the rows of categories with the same names. "
        "Chooses the fine-tuning recipe",
    )
    g.add_argument(
        "--backbone-weights",
        default="imagenet",
        help="none (random init), a path to a torchvision state dict, or " + flags.pretrained_help("backbone"),
    )


def schedule_flags(p: argparse.ArgumentParser) -> None:
    """The recipe's flags show both recipes' defaults in their help (argparse's own is suppressed: the
    recipe, not the parser, fills them in)."""
    coco, tune = recipe.COCO, recipe.FINE_TUNE
    g = p.add_argument_group(
        "optimisation and schedule",
        f"recipe defaults: {coco.name} without --weights, {tune.name} with it; a flag given always wins",
    )
    g.add_argument(
        "--epochs",
        type=flags.positive,
        default=argparse.SUPPRESS,
        help=f"number of epochs (default: {coco.epochs}); {tune.epochs} with --weights",
    )
    g.add_argument(
        "--batch-size",
        type=flags.batch_size,
        default=argparse.SUPPRESS,
        help=f"images per GPU (per process) (default: {coco.batch_size}); {tune.batch_size} with --weights",
    )
    g.add_argument(
        "--multistep",
        type=flags.non_negative,
        nargs="*",
        default=argparse.SUPPRESS,
        help="epochs where lr is multiplied by 0.1 (default: 43/65 and 54/65 of --epochs, rounded: 43 54 "
        "of 65); none given: no drop",
    )
    g.add_argument(
        "--lr",
        type=flags.real(0, low_open=True),
        default=argparse.SUPPRESS,
        help=f"lr for a global batch of 32; scaled linearly by global batch / 32 (default: {coco.lr:g}); "
        f"{tune.lr:g} with --weights",
    )
    g.add_argument(
        "--warmup",
        type=flags.non_negative,
        default=argparse.SUPPRESS,
        help=f"linear lr warmup over this many iterations (default: {coco.warmup}); {tune.warmup} with --weights "
        "(NVIDIA uses 300 on COCO)",
    )
    g.add_argument("--momentum", type=flags.real(0, 1, high_open=True), default=0.9, help="SGD momentum")
    g.add_argument(
        "--no-nesterov",
        action="store_true",
        help="plain momentum instead of the older implementation's Nesterov momentum",
    )
    g.add_argument("--weight-decay", type=flags.real(0), default=5e-4, help="SGD weight decay")
    g.add_argument(
        "--no-bn-weight-decay",
        action="store_true",
        help="no weight decay on BatchNorm and bias parameters (NVIDIA's tweak)",
    )
    g.add_argument(
        "--iters-per-epoch",
        type=flags.positive,
        default=None,
        help="stop each epoch after this many iterations (smoke tests)",
    )


def speed_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("precision and speed")
    flags.add_device_flags(g)  # --device, --no-cudnn-benchmark
    g.add_argument("--amp", action="store_true", help="mixed precision (autocast; GradScaler with fp16)")
    g.add_argument(
        "--amp-dtype",
        choices=["fp16", "bf16"],
        default=None,
        help="autocast dtype (default: fp16 on CUDA; bf16 with --cuda-graphs and on CPU)",
    )
    g.add_argument(
        "--channels-last",
        dest="channels_last",
        action="store_true",
        default=None,
        help="channels_last memory format (default on CUDA)",
    )
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW")
    g.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="capture the whole training step in a CUDA graph (one CUDA GPU; not with torchrun)",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the step's targets, forward and loss (and so their backward; the optimizer step "
        "stays eager): the first step compiles (minutes on a CPU: docs/training.md), later ones run "
        "fused kernels. Not with --cuda-graphs (--compile-mode reduce-overhead is the compiled way to CUDA graphs)",
    )
    g.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default="default",
        help="with --compile: default (fused kernels, the shortest compile), reduce-overhead (also replays the "
        "compiled forward and backward from CUDA graphs: fewer launches, more memory; on CPU as default), "
        "max-autotune (also times kernel variants of each matmul/convolution, with CUDA graphs: the longest compile)",
    )
    g.add_argument(
        "--compile-backend",
        choices=COMPILE_BACKENDS,
        default="inductor",
        help="with --compile: inductor (generated kernels) or aot_eager (the same graphs run by eager kernels: "
        "compiles in seconds, no speed-up; tells a compiler bug from a tracing one)",
    )


def run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run and checkpoints")
    g.add_argument(
        "--save-folder", default="trained_models", help="checkpoints (last.pt, best.pt) and log.jsonl go here"
    )
    g.add_argument(
        "--seed", type=flags.integer(0, flags.MAX_SEED), default=0, help="seed of the data order, augmentation and init"
    )
    g.add_argument(
        "--no-resume",
        action="store_true",
        help="start from scratch even if SAVE_FOLDER/last.pt exists (the previous run's files are moved "
        "into SAVE_FOLDER/previous_run_<time>/)",
    )
    g.add_argument(
        "--checkpoint-every",
        default="10m",
        help="also write last.pt inside an epoch: every N iterations "
        "(e.g. 500) or wall time (e.g. 10m, 90s, 1h); 0: at epoch ends only",
    )
    g.add_argument(
        "--keep-checkpoints",
        type=flags.non_negative,
        default=0,
        metavar="K",
        help="keep the last K epoch checkpoints as epoch_NNN.pt besides last.pt and best.pt (0: none)",
    )
    g.add_argument(
        "--dist-timeout",
        type=flags.real(0, flags.MAX_DIST_TIMEOUT, low_open=True),
        default=600,
        help="seconds a collective may wait for another rank "
        "before the job stops with exit code 3 (a rank died or hangs outside torchrun's watch)",
    )
    g.add_argument(
        "--ignore-category-names",
        action="store_true",
        help="resume even if SAVE_FOLDER/last.pt was trained "
        "on categories with other names than the dataset's (only the count must match)",
    )
    g.add_argument("--debug", action="store_true", help="show Python tracebacks for user errors too")


def evaluation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-every", type=flags.non_negative, default=1, help="COCO evaluation every N epochs (0: never)")
    g.add_argument(
        "--eval-batches",
        type=flags.positive,
        default=None,
        help="evaluate on at most this many val batches (quick checks)",
    )
    flags.add_policy_flags(
        g, DETECTION_POLICY, nms_help="NMS IoU threshold for the per-epoch evaluation (the same default as eval.py)"
    )


def logging_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("logging")
    g.add_argument("--log-path", default=None, help="TensorBoard folder (default: SAVE_FOLDER/tensorboard)")
    g.add_argument(
        "--log-every", type=flags.positive, default=10, help="iterations between loss checks/logs (each is a host sync)"
    )


def main(argv=None, stop_request: StopRequest | None = None) -> int:
    """Train as the command line `argv` says -> an exit code (ssdfast/machinery/exit_codes.py).
    stop_request: the signal flag run() installs before anything (a signal while loading is a stop too)."""
    from ssdfast.machinery.outputs import check_outputs, run_inputs
    from ssdfast.training.config import TrainConfig
    from ssdfast.training.run import TrainingRun

    config = TrainConfig.from_flags(vars(get_args(argv)))  # flags that need no work fail here, before any
    data, model = config.data, config.model
    check_outputs(
        folders=[("save folder", config.save_folder), ("TensorBoard folder", config.logging.log_path)],
        only_own=False,
        **run_inputs(
            weights=[model.weights, model.backbone_weights],
            data_path=data.data_path,
            annotations=[data.train_ann, data.val_ann],
            image_folders=[data.train_images, data.val_images],
        ),
    )
    return TrainingRun.build(config, stop_request).train()


def is_collective_failure(error: BaseException) -> bool:
    """A collective that failed because a peer died or timed out (gloo/NCCL report it as these)."""
    import torch.distributed as dist

    text = str(error)
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError)
        and any(
            key in text for key in ("Connection closed by peer", "Timed out", "timed out", "Connection reset", "gloo")
        )
    )


def run(argv=None) -> int:
    """main() with user errors as one `error:` line (a traceback only with --debug, or for bugs) and the
    exit codes of ssdfast/machinery/exit_codes.py."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    rank = os.environ.get("RANK", "0")
    get_args(argv)  # --help and usage errors before PyTorch is imported
    from ssdfast.machinery.checkpoint import CheckpointError
    from ssdfast.machinery.preemption import StopRequest

    try:
        with StopRequest() as stop_request:  # from the first line on: a signal while loading is a stop too
            return main(argv, stop_request)
    except KeyboardInterrupt:  # Ctrl-C where Python could not take it as a stop request
        print(
            "aborted: last.pt is the one written before (at the last checkpoint); run the same command to "
            "resume from it",
            file=sys.stderr,
        )
        return EXIT_ABORTED
    except (CheckpointError, FileNotFoundError, ValueError, NotADirectoryError, PermissionError) as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:
        if not is_collective_failure(error) or debug:
            raise
        print(
            f"error: rank {rank}: a collective operation failed: another rank died or did not answer within "
            f"--dist-timeout ({str(error).splitlines()[0][:200]}). last.pt is intact: run the same command "
            f"(torchrun --max-restarts does it by itself)",
            file=sys.stderr,
        )
        return EXIT_PEER_LOST


if __name__ == "__main__":
    sys.exit(run())
