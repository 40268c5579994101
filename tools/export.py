"""Export a trained detector with its post-processing (ONNX, torch.export, OpenVINO, ExecuTorch), checked.

    python tools/export.py --weights trained_models/best.pt --format onnx --output ssdlite.onnx
    python tools/export.py --weights best.pt --format torch-export --batch 8 --output ssdlite_b8.pt2
    python tools/export.py --weights best.pt --format onnx --no-nms --output ssdlite_raw.onnx
    python tools/export.py --weights best.pt --format openvino --output ssdlite.xml      # + ssdlite.bin
    python tools/export.py --weights best.pt --format onnx --int8 --data-path /coco --output ssdlite_int8.onnx

Input: images float32 [B, 3, 300, 300], RGB resized to 300x300, (x / 255 - ImageNet mean) / std.
Output with NMS (default): boxes [B, K, 4] normalised xyxy, scores [B, K], labels [B, K] (1..C),
counts [B]; K = --max-det, rows padded with 0. Without NMS: boxes [B, A, 4], scores [B, A, C].
The file is written under a temporary name and run on random images at two batch sizes; only a file
whose detections are a correct post-processing of the PyTorch model's boxes and scores (tied scores
may be broken either way: ssdfast.deploy.nms_check) is put at --output. An --int8 file is held to COCO
AP instead: on --val-images of the val split, at most --max-ap-drop AP points below the float model.
tools/eval.py and tools/detect.py take the result as --weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Only modules without PyTorch up here: --help answers at once; main() imports the rest.
from ssdfast import flag_types as flags
from ssdfast.defaults import DATA_FORMATS, DETECTION_POLICY
from ssdfast.deploy.formats import CALIBRATION_IMAGES, FORMATS, MAX_AP_DROP, VALIDATION_IMAGES, missing
from ssdfast.machinery.exit_codes import EXIT_DONE, EXIT_ERROR
from ssdfast.machinery.outputs import OutputError, atomic_outputs, check_outputs, run_inputs, writable_file

INT8_FORMATS = [name for name, entry in FORMATS.items() if entry.int8]


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
        choices=sorted(FORMATS),
        help="onnx (.onnx, NMS as ONNX's NonMaxSuppression), torch-export (.pt2 ExportedProgram, needs the "
        "ssdfast._C extension), openvino (.xml + .bin beside it), executorch (.pte for XNNPACK, no NMS inside: "
        "ssdfast runs it after the file)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="file to write: NAME" + ", NAME".join(entry.suffix for entry in FORMATS.values()) + "; not the "
        "weights, and an existing file only if ssdfast wrote it",
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
    int8 = p.add_argument_group(f"INT8 post-training quantization (formats {', '.join(INT8_FORMATS)})")
    int8.add_argument(
        "--int8",
        action="store_true",
        help="quantize the backbone and heads to INT8 (decode and NMS stay float32), calibrated on --data-path's "
        "train split and refused if its COCO AP on the val split drops more than --max-ap-drop",
    )
    int8.add_argument("--data-path", default=None, help="dataset (COCO, VOC or YOLO layout) of --int8")
    int8.add_argument(
        "--data-format", choices=DATA_FORMATS, default=None, help="layout of --data-path (default: detected)"
    )
    int8.add_argument(
        "--calib-images",
        type=flags.integer(1, 2000),
        default=CALIBRATION_IMAGES,
        help="training images to calibrate with, spread over the split",
    )
    int8.add_argument(
        "--val-images",
        type=flags.integer(1, 100_000),
        default=VALIDATION_IMAGES,
        help="validation images of the AP check, spread over the split (disjoint from the calibration images)",
    )
    int8.add_argument(
        "--max-ap-drop",
        type=flags.real(0.0, 100.0),
        default=MAX_AP_DROP,
        help="largest AP drop accepted, in AP points (0-100 scale)",
    )
    return p.parse_args(argv)


def check_args(args) -> list[Path]:
    """The files to write (--output, then the files that belong to it): the format's suffix, flags the
    format takes, not the weights, not a file ssdfast did not write (check_outputs). ValueError otherwise."""
    fmt = FORMATS[args.format]
    output = Path(args.output)
    if output.suffix.lower() != fmt.suffix:
        raise ValueError(f"--format {args.format} writes a {fmt.suffix} file, got --output {output}")
    if args.int8 and not fmt.int8:
        raise ValueError(
            f"--int8: the {args.format} format has no INT8 variant (formats with one: {', '.join(INT8_FORMATS)})"
        )
    if args.int8 and args.data_path is None:
        raise ValueError("--int8 needs --data-path: its train split calibrates, its val split checks the AP")
    if args.batch is not None and args.batch > fmt.max_batch:
        raise ValueError(f"--batch {args.batch}: the {args.format} format runs batches of at most {fmt.max_batch}")
    files = fmt.files(output)
    check_outputs(
        [("output file", file) for file in files],
        **run_inputs(weights=[args.weights], data_path=args.data_path if args.int8 else None),
    )
    return [writable_file(file, "output file") for file in files]


def main(argv=None) -> int:
    args = get_args(argv)  # --help and usage errors before PyTorch is imported
    from ssdfast.deploy.export import check_against_pytorch, export
    from ssdfast.inference import load_detector
    from ssdfast.machinery.checkpoint import CheckpointError
    from ssdfast.machinery.user_errors import error_line

    fmt = FORMATS[args.format]
    try:
        files = check_args(args)
        absent = missing(fmt, f"exporting to {fmt.name}", exporting=True)
        if absent:
            raise ValueError(absent)
        model, meta = load_detector(args.weights, "cpu")
        int8 = int8_data(args) if args.int8 else None
    except (CheckpointError, OSError, ValueError) as error:
        print(f"error: {error_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    policy = flags.detection_policy(args)
    # Written under temporary names beside the output; put in place only once the file has passed the check.
    start = time.perf_counter()
    try:
        with atomic_outputs(files, "exported model") as partial:
            info = export(
                model,
                meta,
                args.format,
                partial[0],
                batch=args.batch,
                with_nms=args.with_nms,
                policy=policy,
                calibration=int8.calibration if int8 else None,
            )
            exported_in = time.perf_counter() - start
            if int8:
                report = ap_report(partial[0], model, policy, int8, args.max_ap_drop)
            else:
                batches = [1, 3] if args.batch is None else [args.batch, args.batch]
                report = check_against_pytorch(partial[0], model, info, batches)
                if not report["ok"]:
                    raise CheckFailed(f"the exported model does not detect what PyTorch detects: {report['problem']}")
    except (CheckFailed, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    size = sum(file.stat().st_size for file in files) / 1e6
    print(
        f"{meta['model_name']} ({meta['num_classes']} classes) -> {' + '.join(map(str, files))} ({args.format}, "
        f"{info['precision']}, batch {info['batch']}, {'NMS inside' if info['with_nms'] else 'no NMS'}; "
        f"{size:.1f} MB, exported in {exported_in:.0f} s)"
    )
    if args.with_nms and not info["with_nms"]:
        print(f"the {args.format} format holds no NMS: ssdfast runs it after the file (ssdfast.postprocess.select)")
    if int8:
        print(
            f"checked on {report['images']} validation images: COCO AP {report['ap_int8']:.4f} (INT8) against "
            f"{report['ap_float']:.4f} (float PyTorch model), a drop of {report['drop']:.2f} AP points "
            f"(at most {args.max_ap_drop}); calibrated on {report['calibration_images']} training images"
        )
    else:
        print(
            f"checked against PyTorch on {report['images']} random images (batches {report['batches']}): its "
            f"{report['detections']} detections are a correct NMS of PyTorch's boxes and scores, max |box diff| "
            f"{report['max_box_diff']:.2e}, max |score diff| {report['max_score_diff']:.2e}; {report['tie_choices']} "
            "of them differ from PyTorch's own choice among tied scores"
        )
    print(f"outputs: {', '.join(info['outputs'])}; input: {info['input']}")
    return EXIT_DONE


def int8_data(args):
    """The calibration batches and validation loader of --int8 (ssdfast.deploy.int8)."""
    from ssdfast.deploy.int8 import int8_data as load

    return load(args.data_path, args.data_format, args.calib_images, args.val_images)


def ap_report(path, model, policy, int8, max_drop: float) -> dict:
    """The AP check of an INT8 file: CheckFailed with both APs when it drops more than max_drop points."""
    from ssdfast.deploy.deployed import Deployed
    from ssdfast.deploy.int8 import coco_ap

    ap_float = coco_ap(model, int8.validation, policy)
    ap_int8 = coco_ap(Deployed(path), int8.validation, policy)
    drop = 100 * (ap_float - ap_int8)
    images = len(int8.validation.loader.sampler)
    if drop > max_drop:
        raise CheckFailed(
            f"the INT8 model's COCO AP is {ap_int8:.4f} against the float model's {ap_float:.4f} on {images} "
            f"validation images: a drop of {drop:.2f} AP points, more than --max-ap-drop {max_drop} "
            "(calibrate on more or more typical images: --calib-images, --data-path)"
        )
    calibration = sum(len(batch) for batch in int8.calibration)
    return {"ap_float": ap_float, "ap_int8": ap_int8, "drop": drop, "images": images, "calibration_images": calibration}


if __name__ == "__main__":
    sys.exit(main())
