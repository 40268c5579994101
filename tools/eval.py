"""COCO mAP of a checkpoint (ssdfast's, the older implementation's or NVIDIA's) or of an exported model (tools/export.py)
on a val set in the COCO, Pascal VOC or YOLO layout (on VOC also VOC07 and VOC12 mAP@0.5).

    python tools/eval.py --data-path /coco --weights trained_models/best.pt
    python tools/eval.py --data-path /coco --weights ssdlite.onnx       # ONNX Runtime (CPU, or CUDA on --device cuda)
    python tools/eval.py --data-path /coco --weights ssdlite.pt2        # torch.export program
    python tools/eval.py --data-path VOCdevkit/VOC2007 --split test --weights best.pt
    python tools/eval.py --ann my_val.json --images my_val_images/ --weights best.pt
    torchrun --nproc_per_node=8 tools/eval.py --data-path /coco --weights nvidia_ssd.pt --amp --dali

Prints the 12-number COCO table and writes the detections (COCO results JSON) to --output and the
metrics beside them. Refuses weights trained on other categories than the dataset's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

# Only modules without PyTorch up here: --help answers at once; main() imports the rest.
from ssdfast import flag_types as flags
from ssdfast.data.image_files import add_image_limit_args
from ssdfast.defaults import DETECTION_POLICY
from ssdfast.evaluation.voc_eval import voc_map
from ssdfast.machinery.exit_codes import EXIT_DONE, EXIT_ERROR
from ssdfast.machinery.outputs import (
    OutputError,
    check_outputs,
    distinct,
    run_inputs,
    writable_file,
    write_together,
)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=flags.HelpFormatter)
    p.add_argument(
        "--data-path",
        default=None,
        help="dataset: COCO layout root, VOCdevkit year folder, or YOLO data.yaml (or its folder)",
    )
    flags.add_data_flags(p)  # --data-format, --data-backend, --dali
    p.add_argument(
        "--ann", default=None, help="a COCO annotation file, anywhere (with --images; instead of --data-path)"
    )
    p.add_argument("--images", default=None, help="the image folder of --ann")
    p.add_argument(
        "--weights",
        required=True,
        help="checkpoint: ssdfast (last.pt/best.pt), the older implementation's, or NVIDIA's; "
        "an exported model.onnx / model.pt2 (tools/export.py); or " + flags.pretrained_help("detector"),
    )
    p.add_argument(
        "--split",
        default="val",
        help="which split: annotations/instances_{split}2017.json (VOC: "
        "ImageSets/Main/{split}.txt; YOLO: data.yaml's {split}:)",
    )
    p.add_argument("--batch-size", type=flags.batch_size, default=32, help="images per batch (per process)")
    p.add_argument(
        "--num-workers",
        type=flags.workers,
        default=flags.default_workers(),
        help="data loading workers (DALI: threads)",
    )
    p.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: fp16 autocast on CUDA, bf16 on CPU (ssdfast.machinery.runtime)",
    )
    flags.add_policy_flags(p, DETECTION_POLICY, score_help="drop detections at or below this score")
    p.add_argument(
        "--backend",
        choices=["pycocotools", "faster-coco-eval"],
        default="pycocotools",
        help="COCO evaluation implementation",
    )
    p.add_argument(
        "--output",
        default=None,
        help="detections JSON (default: next to the weights, detections_{split}.json); "
        "the metrics go beside it as NAME.metrics.json (metrics_{split}.json without --output). Neither may be an input "
        "or lie in the dataset folder, and an existing file there is replaced only if ssdfast wrote it: "
        "otherwise the run is refused before any work",
    )
    p.add_argument(
        "--ignore-category-names",
        action="store_true",
        help="evaluate even if the weights were trained on "
        "categories with other names than the dataset's (only the count must match)",
    )
    p.add_argument(
        "--max-batches", type=flags.positive, default=None, help="evaluate only this many batches (quick checks)"
    )
    flags.add_device_flags(p)  # --device, --no-cudnn-benchmark
    add_image_limit_args(p)
    args = p.parse_args(argv)
    if args.data_path is None and not (args.ann and args.images):
        p.error("no dataset given: --data-path, or --ann and --images")
    return args


def output_paths(args) -> dict[str, Path]:
    """Detections and metrics files: distinct, in writable folders, neither an input nor a file ssdfast
    did not write (ssdfast.machinery.outputs.check_outputs), checked before evaluating."""
    if args.output:
        detections = Path(args.output)
        metrics = detections.with_name(detections.stem + ".metrics.json")
    else:
        detections = Path(args.weights).with_name(f"detections_{args.split}.json")
        metrics = detections.with_name(f"metrics_{args.split}.json")
    outputs = distinct({"detections file": detections, "metrics file": metrics})
    check_outputs(
        outputs.items(),
        **run_inputs(
            weights=[args.weights], data_path=args.data_path, annotations=[args.ann], image_folders=[args.images]
        ),
    )
    return {what: writable_file(path, what) for what, path in outputs.items()}


def write_outputs(outputs: dict[str, Path], results: list, metrics: dict) -> None:
    """The detections and the metrics (with the detections' sha256) as one pair (write_together): a stop
    at any moment leaves the previous pair or the new one."""
    data = json.dumps(results).encode()
    metrics = {**metrics, "detections_sha256": hashlib.sha256(data).hexdigest()}
    write_together(
        [
            (outputs["detections file"], "detections file", data),
            (outputs["metrics file"], "metrics file", json.dumps(metrics, indent=1).encode()),
        ]
    )


def load_model_and_data(args, rank: int, world: int, device):
    """The detector (channels_last where it runs so) and the loader of the split, checked against each
    other -> (model, meta, loader, policy, channels_last). Raises CheckpointError, FileNotFoundError or
    ValueError naming the bad input."""
    import torch

    from ssdfast.data import build_loader
    from ssdfast.deploy.deployed import is_deployed
    from ssdfast.inference import load_detector
    from ssdfast.machinery.checkpoint import check_categories
    from ssdfast.machinery.runtime import use_channels_last

    deployed = is_deployed(args.weights)
    if deployed and args.amp:
        raise ValueError("--amp applies to checkpoints: an exported model runs in the precision it was exported in")
    policy = flags.detection_policy(args)
    model, meta = load_detector(args.weights, device, policy=policy)
    channels_last = use_channels_last(device) and not deployed
    loader = build_loader(
        args.data_path,
        args.split,
        train=False,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        rank=rank,
        world_size=world,
        backend=args.data_backend,
        device=device,
        channels_last=channels_last,
        data_format=args.data_format,
        ann_file=args.ann,
        image_dir=args.images,
        max_pixels=args.max_pixels,
        max_image_bytes=args.max_image_bytes,
        allow_outside_paths=args.allow_outside_paths,
    )
    check_categories(
        meta["category_names"],
        loader.info.category_names,
        args.weights,
        args.data_path or args.ann,
        compare_names=not args.ignore_category_names,
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, meta, loader, policy, channels_last


def report(args, meta: dict, loader, outputs: dict[str, Path], evaluation) -> int:
    """Rank 0 after the evaluation: write the detections and metrics files, print the table -> exit code."""
    stats, table, results, image_ids = evaluation
    voc = voc_map(loader.info.coco, results, image_ids) if loader.info.data_format == "voc" else None
    metrics = {
        "weights": str(args.weights),
        "data_path": str(args.data_path or args.ann),
        "split": args.split,
        "backend": args.backend,
        **(stats or {"note": table}),
        "images_evaluated": len(image_ids),
        "distinct_images_evaluated": len(set(image_ids)),
        **({"voc_map50": voc} if voc else {}),
    }
    try:
        write_outputs(outputs, results, metrics)
    except OutputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(
        f"{meta['model_name']} ({args.weights}) on {args.data_path or args.ann} {args.split}, backend {args.backend}:"
    )
    print(table)
    if stats:
        print(f"AP {stats['AP']:.4f}  AP50 {stats['AP50']:.4f}  AP75 {stats['AP75']:.4f}")
    if voc:
        print(f"VOC mAP@0.5: VOC07 (11-point) {voc['VOC07']:.4f}  VOC12 (all-point) {voc['VOC12']:.4f}")
    print(f"{len(results)} detections written to {outputs['detections file']}, metrics to {outputs['metrics file']}")
    return EXIT_DONE


def main(argv=None) -> int:
    args = get_args(argv)  # --help and usage errors before PyTorch is imported
    import torch.distributed as dist

    from ssdfast.evaluation.loop import evaluate
    from ssdfast.machinery.checkpoint import CheckpointError
    from ssdfast.machinery.runtime import autocast_dtype, configure_cudnn, setup_distributed
    from ssdfast.machinery.user_errors import error_line

    try:
        rank, world, device = setup_distributed(args.device)
        configure_cudnn(device, not args.no_cudnn_benchmark)
        outputs = output_paths(args) if rank == 0 else {}
        model, meta, loader, policy, channels_last = load_model_and_data(args, rank, world, device)
    except (CheckpointError, OSError, ValueError) as error:
        print(f"error: {error_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    evaluation = evaluate(
        model,
        loader,
        device,
        backend=args.backend,
        amp_dtype=autocast_dtype(device, args.amp),
        channels_last=channels_last,
        policy=policy,
        max_batches=args.max_batches,
        is_main=rank == 0,
    )
    code = report(args, meta, loader, outputs, evaluation) if rank == 0 else EXIT_DONE
    if world > 1:
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
