"""Detect objects in an image, a folder of images, a glob, or a video, and draw them.

    python tools/detect.py --weights trained_models/best.pt --input street.jpg --output out.jpg
    python tools/detect.py --weights best.pt --input photos/ --output annotated/
    python tools/detect.py --weights best.pt --input "photos/*.png" --output annotated/
    python tools/detect.py --weights best.pt --input clip.mp4 --output clip_detections.mp4
    python tools/detect.py --weights ssdlite.onnx --input photos/ --output annotated/    # exported (tools/export.py)

Writes the annotated image(s) or video and a JSON file of the detections (pixel xyxy boxes,
scores, class names) next to --output.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from ssdfast.anchors import SSD_DEFAULTS
from ssdfast.checkpoint import CheckpointError
from ssdfast.data.coco import read_image
from ssdfast.exit_codes import EXIT_DONE, EXIT_ERROR
from ssdfast.inference import detect, load_detector
from ssdfast.outputs import writable_file, writable_folder
from ssdfast.runtime import configure_cudnn, pick_device
from ssdfast.visualize import draw_detections

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint: ssdfast, the seed's, or NVIDIA's; "
                   "or an exported model.onnx / model.pt2 (tools/export.py)")
    p.add_argument("--input", required=True, help="an image, a folder of images, a glob pattern, or a video file")
    p.add_argument("--output", required=True, help="output image (one input image), folder (several images, or a "
                   "name ending in '/'), or video; drawings keep the input file names")
    p.add_argument("--score-threshold", type=float, default=0.3, help="draw detections above this score")
    p.add_argument("--nms-threshold", type=float, default=SSD_DEFAULTS.nms_threshold, help="NMS IoU threshold")
    p.add_argument("--batch-size", type=int, default=8, help="images (or video frames) per forward pass")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="do not let cuDNN autotune its convolutions (on by default on CUDA)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    return p.parse_args(argv)


def to_records(dets: dict, names: list[str]) -> list[dict]:
    return [{"box": [round(float(v), 1) for v in box], "score": round(float(s), 4), "label": int(l),
             "name": names[int(l) - 1]} for box, s, l in zip(dets["boxes"], dets["scores"], dets["labels"])]


def list_images(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if any(ch in spec for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    return [path]


def image_targets(paths: list[Path], output: Path, single: bool) -> dict[Path, Path]:
    """Where each input image is drawn: OUTPUT itself for one image given as a file name, else
    OUTPUT/<input name>, numbered when names repeat (a.jpg from two folders), so no drawing
    overwrites another or an input."""
    if single:
        targets = {paths[0]: output}
    else:
        targets, used = {}, set()
        for path in paths:
            name, n = path.name, 0
            while name.lower() in used:
                n += 1
                name = f"{path.stem}_{n}{path.suffix}"
            used.add(name.lower())
            targets[path] = output / name
    clobbered = [p for p, t in targets.items() if t.resolve() in {q.resolve() for q in paths}]
    if clobbered:
        raise ValueError(f"the output would overwrite the input image {clobbered[0]}: choose another --output")
    return targets


def run_images(model, names, paths, output: Path, args, single: bool) -> dict:
    targets = image_targets(paths, output, single)
    report = {}
    for start in tqdm(range(0, len(paths), args.batch_size), desc="detect", disable=single):
        chunk = paths[start:start + args.batch_size]
        images = [read_image(p) for p in chunk]
        for p, img in zip(chunk, images):
            if img is None:
                print(f"warning: cannot read image {p}: skipped", file=sys.stderr)
        readable = [(p, img) for p, img in zip(chunk, images) if img is not None]
        if not readable:
            continue
        dets = detect(model, [img for _, img in readable], args.score_threshold, args.nms_threshold)
        for (path, img), det in zip(readable, dets):
            drawn = draw_detections(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), det["boxes"], det["scores"], det["labels"],
                                    names)
            target = targets[path]
            if not cv2.imwrite(str(target), drawn):
                raise ValueError(f"cannot write the image {target} (unknown image suffix, or no space left?)")
            report[str(path)] = to_records(det, names)
    return report


def run_video(model, names, path: Path, output: Path, args) -> dict:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    output.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(output), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    report, frame_index, done = {}, 0, False
    with tqdm(total=total, desc="video", unit="frame") as bar:
        while not done:
            frames = []
            while len(frames) < args.batch_size:
                ok, frame = capture.read()
                if not ok:
                    done = True
                    break
                frames.append(frame)
            if not frames:
                break
            dets = detect(model, [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames], args.score_threshold,
                          args.nms_threshold)
            for frame, det in zip(frames, dets):
                writer.write(draw_detections(frame, det["boxes"], det["scores"], det["labels"], names))
                report[str(frame_index)] = to_records(det, names)
                frame_index += 1
            bar.update(len(frames))
    capture.release()
    writer.release()
    if frame_index == 0:
        raise ValueError(f"no frames could be read from {path}")
    return report


def main(argv=None) -> int:
    args = get_args(argv)
    device = pick_device(args.device)
    configure_cudnn(device, not args.no_cudnn_benchmark)  # every frame is resized to the same input size
    source, output = Path(args.input), Path(args.output)
    try:
        model, meta = load_detector(args.weights, device, score_threshold=args.score_threshold,
                                    nms_threshold=args.nms_threshold)
        names = meta["category_names"]
        if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
            if output.resolve() == source.resolve():
                raise ValueError(f"the output would overwrite the input video {source}: choose another --output")
            writable_file(output, "output video")
            report = run_video(model, names, source, output, args)
        else:
            paths = list_images(args.input)
            if not paths or not all(p.is_file() for p in paths):
                raise FileNotFoundError(f"no input images found at {args.input} (an image, a folder of images, "
                                        "a glob such as 'dir/*.jpg', or a video file)")
            # One image to a file name; otherwise OUTPUT is a folder (also for one image and an existing
            # folder, a trailing '/', or a name without suffix).
            single = (len(paths) == 1 and source.is_file() and output.suffix.lower() in IMAGE_SUFFIXES
                      and not output.is_dir() and not args.output.endswith(("/", "\\")))
            if single:
                writable_file(output, "output image")
            else:
                writable_folder(output, "output folder")
            report = run_images(model, names, paths, output, args, single)
            if not report:
                raise ValueError(f"none of the {len(paths)} input image(s) could be read")
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    json_path = output.with_suffix(".json") if output.is_file() else output / "detections.json"
    json_path.write_text(json.dumps(report, indent=1))
    count = sum(len(v) for v in report.values())
    print(f"{count} detections in {len(report)} {'frame' if source.suffix.lower() in VIDEO_SUFFIXES else 'image'}(s); "
          f"drawn to {output}, listed in {json_path}")
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
