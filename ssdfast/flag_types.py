"""The tools' flags, defined once: range-checked argparse types for the numeric flags, the groups of
flags several tools share with one meaning (add_data_flags, add_device_flags), and the DetectionPolicy
a tool's parsed flags make (detection_policy). Without PyTorch.

A bad numeric value is one usage error naming the flag and its range, before any work (not a traceback,
a silent AP of 0, or a loss of 0 after an epoch). NaN and infinity are refused everywhere: every
comparison with NaN is false, so a NaN passes any check written as `if x < low: refuse`.

    p.add_argument("--max-boxes", type=integer(1, MAX_BOXES), default=128)
    p.add_argument("--nms-threshold", type=real(0, 1, low_open=True), default=0.5)
    add_device_flags(p)    # --device, --no-cudnn-benchmark
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import replace

from ssdfast.defaults import DATA_BACKENDS, DATA_FORMATS, DETECTION_POLICY, POLICY_NAMES, DetectionPolicy
from ssdfast.models.pretrained import known_names

MAX_BATCH = 4096  # images per forward pass: more than any accelerator holds at 300x300
MAX_WORKERS = 256  # data loading processes (or DALI threads)
MAX_BOXES = 10_000  # boxes per image (COCO has at most 93; the matching costs boxes x 8732 anchors)
MAX_SEED = 2**32 - 1  # NumPy's and DALI's seeds are unsigned 32-bit
MAX_DIST_TIMEOUT = 7 * 24 * 3600  # seconds a collective may wait (far above it, timedelta overflows)
MAX_DETECTIONS = 100_000  # detections per image kept by an exported model


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The tools' --help: the module docstring as written (its example commands) and each flag's one default.

    argparse's ArgumentDefaultsHelpFormatter appends "(default: X)" to every flag, which says the wrong
    thing in four places: a flag whose help already states its default ("(default: detected)") gets a
    second one; a flag without a default gets "(default: None)"; a switch shows its action's own value,
    so the pair --with-nms/--no-nms both claim "(default: True)"; a required flag has no default at all.
    Here the default is shown only for a flag that takes a value, has one, is not required, and whose
    help does not state it already. A switch is off unless its help says "(default)", as the
    --X/--no-X pairs do for the one that is on."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = (
            action.nargs != 0  # switches (store_true/false/const) take no value
            and not action.required
            and action.default not in (None, argparse.SUPPRESS)
            and "(default" not in text
            and "%(default)" not in text
        )
        return f"{text} (default: %(default)s)" if shown else text


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (no upper bound: high None)."""
    shown = f"in [{low}, {high}]" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {shown}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {shown}, got {text}")
        return value

    parse.__name__ = f"integer {shown}"
    return parse


def real(
    low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """A finite number between low and high (each end included unless low_open / high_open)."""
    if math.isinf(high):
        shown = f"{'>' if low_open else '>='} {low:g}"
    else:
        shown = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {shown}, got {text!r}") from None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):  # NaN fails every comparison: refused here too
            raise argparse.ArgumentTypeError(f"must be a finite number {shown}, got {text}")
        return value

    parse.__name__ = f"number {shown}"
    return parse


# The flags several tools share, with one meaning and one range each.
positive = integer(1)
non_negative = integer(0)
batch_size = integer(1, MAX_BATCH)
workers = integer(0, MAX_WORKERS)
score_threshold = real(0, 1, high_open=True)  # 1 would drop every detection: AP 0, silently
nms_threshold = real(0, 1, low_open=True)  # IoU above which the lower-scored of two boxes is dropped
max_detections = integer(1, MAX_DETECTIONS)


def argument(name: str, value, parse: Callable[[str], float]):
    """An argument of the Python API held to the range of the flag it matches (`parse`: one of the types
    above), so ssdfast.load(score_threshold=...) and --score-threshold refuse the same values. TypeError
    naming `name` for a value that is not a number (True, "0.3"), ValueError naming it for one out of range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: must be a number, got {type(value).__name__} {str(value)[:50]!r}")
    try:
        return parse(str(value))
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"{name}: {error}") from None


def pretrained_help(kind: str) -> str:
    """--weights' ("detector") or --backbone-weights' ("backbone") words for the pretrained names."""
    return (
        f"a pretrained name: {known_names(kind)} (a file in $TORCH_HOME/ssdfast or ~/.cache/ssdfast, downloaded "
        "once and sha256-checked where a sha256 is published; README: Pretrained starting points)"
    )


def default_workers() -> int:
    """--num-workers' default: min(4, the CPU cores this process may run on). More workers than cores
    only adds switching (and PyTorch warns on every run); beyond 4, decoding rarely limits one process."""
    try:
        cores = len(os.sched_getaffinity(0))  # what this process may use (taskset, cgroups' cpusets)
    except AttributeError:  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    return min(4, cores)


# The flag groups several tools share (each tool adds its own flags around them).
def add_data_flags(p: argparse.ArgumentParser) -> None:
    """How a dataset is read (tools/train.py, eval.py): --data-format, --data-backend and its alias --dali."""
    p.add_argument(
        "--data-format", choices=DATA_FORMATS, default=None, help="layout of --data-path (default: detected)"
    )
    p.add_argument(
        "--data-backend",
        choices=DATA_BACKENDS,
        default="pytorch",
        help="data path: pytorch (CPU workers), "
        "gpu (JPEG decode and augmentation on the device; on CPU without one), dali (NVIDIA DALI)",
    )
    p.add_argument("--dali", dest="data_backend", action="store_const", const="dali", help="= --data-backend dali")


def add_device_flags(p: argparse.ArgumentParser, cudnn: bool = True) -> None:
    """Where a tool computes (tools/train.py, eval.py, detect.py; demo.py without cuDNN's flag): --device
    and --no-cudnn-benchmark. The device is checked against the machine by ssdfast.machinery.runtime
    (check_device), which needs PyTorch: after parsing, before any work."""
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    if not cudnn:
        return
    p.add_argument(
        "--no-cudnn-benchmark",
        action="store_true",
        help="do not let cuDNN autotune its convolutions (on by default on CUDA)",
    )


def add_policy_flags(
    p: argparse.ArgumentParser,
    base: DetectionPolicy,
    *,
    score_help: str | None = None,
    max_det_help: str | None = None,
    nms_help: str = "NMS IoU threshold",
) -> None:
    """The detection policy's flags of a tool, defaulting to `base` (read back by detection_policy):
    --score-threshold and --max-det when their help is given, --nms-threshold always."""
    if score_help:
        p.add_argument("--score-threshold", type=score_threshold, default=base.score_threshold, help=score_help)
    p.add_argument("--nms-threshold", type=nms_threshold, default=base.nms_threshold, help=nms_help)
    if max_det_help:
        p.add_argument("--max-det", type=max_detections, default=base.max_detections, help=max_det_help)


def detection_policy(
    args: argparse.Namespace, base: DetectionPolicy = DETECTION_POLICY, *, max_det_flag: bool = True
) -> DetectionPolicy:
    """The DetectionPolicy of a tool's parsed flags: `base` with the policy flags the tool has
    (defaults.POLICY_NAMES: argparse dest -> field).
    max_det_flag False: the tool's --max-det is not the policy's K but a cut made later (tools/detect.py
    cuts after --classes, so the post-processing must keep its full K)."""
    flags = {dest: field for dest, field in POLICY_NAMES.items() if max_det_flag or dest != "max_det"}
    return replace(base, **{field: getattr(args, dest) for dest, field in flags.items() if hasattr(args, dest)})
