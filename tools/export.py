"""Export a trained detector with its post-processing to ONNX or torch.export, checked against PyTorch.

    python tools/export.py --weights trained_models/best.pt --format onnx --output ssdlite.onnx
    python tools/export.py --weights best.pt --format torch-export --batch 8 --output ssdlite_b8.pt2
    python tools/export.py --weights best.pt --format onnx --no-nms --output ssdlite_raw.onnx

Input: images float32 [B, 3, 300, 300], RGB resized to 300x300, (x / 255 - ImageNet mean) / std.
Output with NMS (default): boxes [B, K, 4] normalised xyxy, scores [B, K], labels [B, K] (1..C),
counts [B]; K = --max-det, rows padded with 0. Without NMS: boxes [B, A, 4], scores [B, A, C].
The file is written under a temporary name and run on random images at two batch sizes; only a file
whose detections are a correct post-processing of the PyTorch model's boxes and scores (tied scores
may be broken either way: ssdfast.deploy.nms_check) is put at --output.
tools/eval.py and tools/detect.py take the result as --weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Only modules without PyTorch up here: --help answers at once; main() imports the rest.
from ssdfast import flag_types as flags
from ssdfast.defaults import DETECTION_POLICY, EXPORT_FORMATS
from ssdfast.machinery.exit_codes import EXIT_DONE, EXIT_ERROR
from ssdfast.machinery.outputs import OutputError, atomic_output, check_outputs, writable_file


class CheckFailed(Exception):
    """The exported file does not detect what the PyTorch model detects (it is not kept)."""


def batch_size(text: str) -> int | None:
    """'dynamic' (None), or a fixed batch size in flag_types' range."""
    if text == "dynamic":
        return None
    try:
        return flags.batch_size(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error} (or 'dynamic')") from None


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=flags.HelpFormatter)
    p.add_argument(
        "--weights",
        required=True,
        help="checkpoint: ssdfast (last.pt/best.pt), the older implementation's, or NVIDIA's; or "
        + flags.pretrained_help("detector"),
    )
    p.add_argument(
        "--format",
        required=True,
        choices=sorted(EXPORT_FORMATS),
        help="onnx (.onnx, NMS as ONNX's "
        "NonMaxSuppression) or torch-export (.pt2 ExportedProgram, needs the ssdfast._C extension)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="file to write: NAME.onnx or NAME.pt2; not the weights, and an existing file only if ssdfast wrote it",
    )
    p.add_argument("--batch", type=batch_size, default=None, help="fixed batch size, or 'dynamic' (default)")
    p.add_argument(
        "--with-nms",
        dest="with_nms",
        action="store_true",
        default=True,
        help="include the post-processing with NMS (default)",
    )
    p.add_argument(
        "--no-nms",
        dest="with_nms",
        action="store_false",
        help="output decoded boxes [B, A, 4] and class scores [B, A, C] instead (NMS left to the runtime)",
    )
    flags.add_policy_flags(
        p,
        DETECTION_POLICY,
        score_help="drop detections at or below this score (inside the graph)",
        max_det_help="K: detections per image",
    )
    return p.parse_args(argv)


def check_args(args) -> Path:
    """The output: the format's suffix, not the weights, not a file ssdfast did not write (check_outputs)."""
    output = Path(args.output)
    if output.suffix.lower() != EXPORT_FORMATS[args.format]:
        raise ValueError(f"--format {args.format} writes a {EXPORT_FORMATS[args.format]} file, got --output {output}")
    check_outputs([("output file", output)], inputs=[("weights", args.weights)])
    return writable_file(output, "output file")


def main(argv=None) -> int:
    args = get_args(argv)  # --help and usage errors before PyTorch is imported
    from ssdfast.deploy.export import check_against_pytorch, export
    from ssdfast.inference import load_detector
    from ssdfast.machinery.checkpoint import CheckpointError

    try:
        output = check_args(args)
        model, meta = load_detector(args.weights, "cpu")
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    if args.format == "onnx":
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401  (the exporter and the check need them)
        except ImportError as error:
            print(
                f"error: exporting to ONNX needs onnx, onnxscript and onnxruntime ({error}): make install EXTRAS=export",
                file=sys.stderr,
            )
            return EXIT_ERROR
    # Written under a temporary name beside the output; renamed only once it has passed the check.
    start = time.perf_counter()
    try:
        with atomic_output(output, "exported model", keep_suffix=True, claim=True) as partial:
            info = export(
                model,
                meta,
                args.format,
                partial,
                batch=args.batch,
                with_nms=args.with_nms,
                policy=flags.detection_policy(args),
            )
            exported_in = time.perf_counter() - start
            batches = [1, 3] if args.batch is None else [args.batch, args.batch]
            report = check_against_pytorch(partial, model, info, batches)
            if not report["ok"]:
                raise CheckFailed(f"the exported model does not detect what PyTorch detects: {report['problem']}")
    except (CheckFailed, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(
        f"{meta['model_name']} ({meta['num_classes']} classes) -> {output} ({args.format}, batch {info['batch']}, "
        f"{'NMS inside' if args.with_nms else 'no NMS'}; {output.stat().st_size / 1e6:.1f} MB, exported in {exported_in:.0f} s)"
    )
    print(
        f"checked against PyTorch on {report['images']} random images (batches {report['batches']}): its "
        f"{report['detections']} detections are a correct NMS of PyTorch's boxes and scores, max |box diff| "
        f"{report['max_box_diff']:.2e}, max |score diff| {report['max_score_diff']:.2e}; {report['tie_choices']} "
        "of them differ from PyTorch's own choice among tied scores"
    )
    print(f"outputs: {', '.join(info['outputs'])}; input: {info['input']}")
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
