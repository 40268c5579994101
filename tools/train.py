"""Train SSD300-ResNet50 or SSDLite-MobileNetV2 on a dataset in the COCO, Pascal VOC or YOLO layout.

    python tools/train.py --data-path /coco --model ssd --amp                        # one GPU (or CPU)
    torchrun --nproc_per_node=8 tools/train.py --data-path /coco --model ssd --amp --dali
    python tools/train.py --data-path demo_data --model ssdlite --backbone-weights none --epochs 2
    python tools/train.py --data-path VOCdevkit/VOC2007 --model ssdlite   # or a YOLO data.yaml (detected)

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

if TYPE_CHECKING:
    from ssdfast.machinery.preemption import StopRequest


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=flags.HelpFormatter)
    p.add_argument(
        "--data-path",
        default=None,
        help="dataset: COCO layout root (annotations/, train2017/, val2017/), "
        "VOCdevkit year folder (Annotations/, JPEGImages/, ImageSets/Main/), or YOLO data.yaml (or its folder)",
    )
    flags.add_data_flags(p)  # --data-format, --data-backend, --dali
    p.add_argument(
        "--train-ann", default=None, help="a COCO annotation file for training, anywhere (with --train-images)"
    )
    p.add_argument("--train-images", default=None, help="the image folder of --train-ann")
    p.add_argument(
        "--val-ann", default=None, help="a COCO annotation file for evaluation, anywhere (with --val-images)"
    )
    p.add_argument("--val-images", default=None, help="the image folder of --val-ann")
    p.add_argument(
        "--save-folder", default="trained_models", help="checkpoints (last.pt, best.pt) and log.jsonl go here"
    )
    p.add_argument("--log-path", default=None, help="TensorBoard folder (default: SAVE_FOLDER/tensorboard)")
    p.add_argument("--model", default="ssd", choices=MODEL_CHOICES, help=MODEL_HELP)
    p.add_argument("--epochs", type=flags.positive, default=65, help="number of epochs")
    p.add_argument("--batch-size", type=flags.batch_size, default=32, help="images per GPU (per process)")
    p.add_argument(
        "--multistep", type=flags.non_negative, nargs="*", default=[43, 54], help="epochs where lr is multiplied by 0.1"
    )
    p.add_argument(
        "--lr",
        type=flags.real(0, low_open=True),
        default=2.6e-3,
        help="lr for a global batch of 32; scaled linearly by global batch / 32",
    )
    p.add_argument("--momentum", type=flags.real(0, 1, high_open=True), default=0.9, help="SGD momentum")
    p.add_argument(
        "--no-nesterov",
        action="store_true",
        help="plain momentum instead of the older implementation's Nesterov momentum",
    )
    p.add_argument("--weight-decay", type=flags.real(0), default=5e-4, help="SGD weight decay")
    p.add_argument(
        "--no-bn-weight-decay",
        action="store_true",
        help="no weight decay on BatchNorm and bias parameters (NVIDIA's tweak)",
    )
    p.add_argument(
        "--warmup",
        type=flags.non_negative,
        default=0,
        help="linear lr warmup over this many iterations (NVIDIA uses 300)",
    )
    flags.add_policy_flags(
        p, DETECTION_POLICY, nms_help="NMS IoU threshold for the per-epoch evaluation (the same default as eval.py)"
    )
    p.add_argument(
        "--num-workers", type=flags.workers, default=4, help="data loading workers per process (DALI: threads)"
    )
    p.add_argument("--amp", action="store_true", help="mixed precision (autocast; GradScaler with fp16)")
    p.add_argument(
        "--amp-dtype",
        choices=["fp16", "bf16"],
        default=None,
        help="autocast dtype (default: fp16 on CUDA; bf16 with --cuda-graphs and on CPU)",
    )
    p.add_argument(
        "--channels-last",
        dest="channels_last",
        action="store_true",
        default=None,
        help="channels_last memory format (default on CUDA)",
    )
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW")
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="capture the whole training step in a CUDA graph (one CUDA GPU; not with torchrun)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the step's targets, forward and loss (and so their backward; the optimizer step "
        "stays eager): the first step compiles (SSDLite on a 2-core CPU: about 2 minutes), later ones run "
        "fused kernels. Not with --cuda-graphs (--compile-mode reduce-overhead is the compiled way to CUDA graphs)",
    )
    p.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default="default",
        help="with --compile: default (fused kernels, the shortest compile), reduce-overhead (also replays the "
        "compiled forward and backward from CUDA graphs: fewer launches, more memory; on CPU as default), "
        "max-autotune (also times kernel variants of each matmul/convolution, with CUDA graphs: the longest compile)",
    )
    p.add_argument(
        "--compile-backend",
        choices=COMPILE_BACKENDS,
        default="inductor",
        help="with --compile: inductor (generated kernels) or aot_eager (the same graphs run by eager kernels: "
        "compiles in seconds, no speed-up; tells a compiler bug from a tracing one)",
    )
    flags.add_device_flags(p)  # --device, --no-cudnn-benchmark
    p.add_argument("--eval-every", type=flags.non_negative, default=1, help="COCO evaluation every N epochs (0: never)")
    p.add_argument(
        "--eval-batches",
        type=flags.positive,
        default=None,
        help="evaluate on at most this many val batches (quick checks)",
    )
    p.add_argument(
        "--iters-per-epoch",
        type=flags.positive,
        default=None,
        help="stop each epoch after this many iterations (smoke tests)",
    )
    p.add_argument(
        "--seed", type=flags.integer(0, flags.MAX_SEED), default=0, help="seed of the data order, augmentation and init"
    )
    p.add_argument(
        "--weights",
        default=None,
        help="fine-tune: start from this detector checkpoint (ssdfast's, the "
        "older implementation's or NVIDIA's) trained on other categories, or "
        + flags.pretrained_help("detector")
        + "; backbone and box heads are kept, the class heads keep the rows of categories with the same names",
    )
    p.add_argument(
        "--backbone-weights",
        default="imagenet",
        help="none (random init), a path to a torchvision state dict, or " + flags.pretrained_help("backbone"),
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start from scratch even if SAVE_FOLDER/last.pt exists (the previous run's files are moved "
        "into SAVE_FOLDER/previous_run_<time>/)",
    )
    p.add_argument(
        "--checkpoint-every",
        default="10m",
        help="also write last.pt inside an epoch: every N iterations "
        "(e.g. 500) or wall time (e.g. 10m, 90s, 1h); 0: at epoch ends only",
    )
    p.add_argument(
        "--keep-checkpoints",
        type=flags.non_negative,
        default=0,
        metavar="K",
        help="keep the last K epoch checkpoints as epoch_NNN.pt besides last.pt and best.pt (0: none)",
    )
    p.add_argument(
        "--dist-timeout",
        type=flags.real(0, flags.MAX_DIST_TIMEOUT, low_open=True),
        default=600,
        help="seconds a collective may wait for another rank "
        "before the job stops with exit code 3 (a rank died or hangs outside torchrun's watch)",
    )
    p.add_argument(
        "--max-boxes",
        type=flags.integer(1, flags.MAX_BOXES),
        default=DEFAULT_MAX_BOXES,
        help="ground-truth boxes per image after padding (G)",
    )
    p.add_argument(
        "--log-every", type=flags.positive, default=10, help="iterations between loss checks/logs (each is a host sync)"
    )
    p.add_argument(
        "--ignore-category-names",
        action="store_true",
        help="resume even if SAVE_FOLDER/last.pt was trained "
        "on categories with other names than the dataset's (only the count must match)",
    )
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for user errors too")
    add_image_limit_args(p)
    args = p.parse_args(argv)
    if args.data_path is None and not (args.train_ann and args.train_images):
        p.error("no dataset given: --data-path, or --train-ann and --train-images (and --val-ann, --val-images)")
    if not args.compile and (args.compile_mode != "default" or args.compile_backend != "inductor"):
        p.error("--compile-mode and --compile-backend need --compile")
    if args.momentum == 0 and not args.no_nesterov:
        p.error("argument --momentum: Nesterov momentum needs a momentum > 0 (or pass --no-nesterov)")
    return args


def main(argv=None, stop_request: StopRequest | None = None) -> int:
    """Train as the command line `argv` says -> an exit code (ssdfast/machinery/exit_codes.py).
    stop_request: the signal flag run() installs before anything (a signal while loading is a stop too)."""
    from ssdfast.machinery.outputs import check_outputs, run_inputs
    from ssdfast.models import canonical_name
    from ssdfast.training.run import TrainingRun

    args = get_args(argv)
    args.model = canonical_name(args.model)
    check_outputs(
        folders=[("save folder", args.save_folder), ("TensorBoard folder", args.log_path)],
        only_own=False,
        **run_inputs(
            weights=[args.weights, args.backbone_weights],
            data_path=args.data_path,
            annotations=[args.train_ann, args.val_ann],
            image_folders=[args.train_images, args.val_images],
        ),
    )
    training = TrainingRun(args, stop_request)  # flags that need no work fail here, before any
    training.setup()
    training.resume()
    training.start()
    return training.train()


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
