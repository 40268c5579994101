"""Detect objects in an image, a folder of images, a glob, or a video, and draw them.

    python tools/detect.py --weights trained_models/best.pt --input street.jpg --output out.jpg
    python tools/detect.py --weights best.pt --input photos/ --output annotated/
    python tools/detect.py --weights best.pt --input "photos/*.png" --output annotated/
    python tools/detect.py --weights best.pt --input clip.mp4 --output clip_detections.mp4
    python tools/detect.py --weights ssdlite.onnx --input photos/ --output annotated/    # exported (tools/export.py)
    python tools/detect.py --weights best.pt --input 0 --output webcam.mp4               # camera 0; Ctrl-C stops
    python tools/detect.py --weights best.pt --input rtsp://camera/stream --output stream.mp4 --classes person

Writes the annotated image(s) or video and a JSON file of the detections (pixel xyxy boxes,
scores, class names): OUTPUT.json beside one drawn image or a video, OUTPUT/detections.json in a folder.
No output may be an input, lie in the input folder, or replace a file ssdfast did not write (that
sidecar included): such a run is refused before any work.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

# Only modules without PyTorch up here: --help answers at once; main() and the detection loops import the
# rest. OpenCV stays (a tenth of a second): the drawing and video helpers below use it throughout.
from ssdfast import flag_types as flags
from ssdfast.data.image_files import add_image_limit_args
from ssdfast.defaults import DISPLAY_POLICY, IMAGE_SUFFIXES
from ssdfast.machinery.exit_codes import EXIT_DONE, EXIT_ERROR
from ssdfast.machinery.outputs import (
    OutputError,
    atomic_output,
    check_outputs,
    run_inputs,
    writable_file,
    writable_folder,
    write_json_atomic,
)
from ssdfast.machinery.user_errors import shown
from ssdfast.visualize import draw_detections

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
VIDEO_CODECS = {".webm": "VP80"}  # the others take MPEG-4 part 2 (mp4v), except:
H264_CONTAINERS = {".mp4", ".m4v", ".mov"}  # H.264 (avc1) where this OpenCV has an encoder
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://", "file://")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=flags.HelpFormatter)
    p.add_argument(
        "--weights",
        required=True,
        help="checkpoint: ssdfast, the older implementation's, or NVIDIA's; an exported model.onnx / model.pt2 "
        "(tools/export.py); or " + flags.pretrained_help("detector"),
    )
    p.add_argument(
        "--input",
        required=True,
        help="an image, a folder of images, a glob pattern, a video file, a "
        "camera index (0) or a stream URL (rtsp://, http://, ...)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="output image (one input image), folder (several images, or a "
        "name ending in '/'), or video; drawings keep the input file names",
    )
    flags.add_policy_flags(
        p,
        DISPLAY_POLICY,
        score_help="draw detections above this score",
        max_det_help="at most this many detections per image (the best by score; the model gives at most its own)",
    )
    p.add_argument("--batch-size", type=flags.batch_size, default=8, help="images (or video frames) per forward pass")
    p.add_argument("--classes", nargs="+", default=None, metavar="NAME", help="keep only these class names")
    flags.add_device_flags(p)  # --device, --no-cudnn-benchmark
    add_image_limit_args(p, outside_paths=False)
    return p.parse_args(argv)


def is_listing(spec: str) -> bool:
    """Whether --input names several images: a folder, or a glob."""
    return Path(spec).is_dir() or any(ch in spec for ch in "*?[")


def list_images(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if is_listing(spec):
        return sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    return [path]


def image_targets(paths: list[Path], output: Path, single: bool) -> dict[Path, Path]:
    """Where each input image is drawn: OUTPUT itself for one image given as a file name, else
    OUTPUT/<input name>, numbered when names repeat (a.jpg from two folders), so no drawing
    overwrites another (check_outputs keeps them off the inputs)."""
    if single:
        return {paths[0]: output}
    targets, used = {}, set()
    for path in paths:
        name, n = path.name, 0
        while name.lower() in used:
            n += 1
            name = f"{path.stem}_{n}{path.suffix}"
        used.add(name.lower())
        targets[path] = output / name
    return targets


def sidecar(output: Path, single_file: bool) -> Path:
    """The detections JSON: OUTPUT with the suffix .json for one drawn image or a video, else
    OUTPUT/detections.json."""
    return output.with_suffix(".json") if single_file else output / "detections.json"


MAX_CAMERA = 99  # OpenCV reads an index of 100 or more as a capture backend (CAP_*, multiples of 100) plus one


def video_source(spec: str) -> int | str | None:
    """A camera index ("0") or a stream URL, as cv2.VideoCapture opens them; None for anything else."""
    if spec.isascii() and spec.isdigit():  # not "²", which Python's isdigit() also takes
        if int(spec) > MAX_CAMERA:
            raise ValueError(f"--input {spec[:30]}: a camera index is at most {MAX_CAMERA}")
        return int(spec)
    return spec if spec.lower().startswith(STREAM_SCHEMES) else None


def class_filter(names: list[str], wanted: list[str] | None) -> np.ndarray | None:
    """The labels (1..C) of --classes, checked against the model's names; None: every class."""
    if not wanted:
        return None
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise ValueError(f"--classes: {', '.join(unknown)} not among the model's classes: {', '.join(names)}")
    return np.array([names.index(name) + 1 for name in wanted])


def select(dets: list[dict], labels: np.ndarray | None, max_det: int, cut) -> list[dict]:
    """Each image's detections of the wanted classes above the score threshold (`cut`, a ScoreCut, which
    remembers what it drops), the best max_det by score (they come sorted)."""
    out = []
    for det in dets:
        keep = np.ones(len(det["labels"]), bool) if labels is None else np.isin(det["labels"], labels)
        shown = cut({key: value[keep] for key, value in det.items()})
        out.append({key: value[:max_det] for key, value in shown.items()})
    return out


def run_images(detector, names, targets: dict[Path, Path], args, single: bool) -> dict:
    from ssdfast.data.coco import decode_image
    from ssdfast.inference import run_detector, to_records

    def read(path: Path) -> np.ndarray | None:
        try:
            return decode_image(path, args.max_pixels, args.max_image_bytes)
        except ValueError as error:  # names the file and why: missing, truncated, over a limit, ...
            print(f"warning: cannot read image {error}: skipped", file=sys.stderr)
            return None

    paths, report = list(targets), {}
    for start in tqdm(range(0, len(paths), args.batch_size), desc="detect", disable=single):
        chunk = paths[start : start + args.batch_size]
        images = [read(p) for p in chunk]
        readable = [(p, img) for p, img in zip(chunk, images) if img is not None]
        if not readable:
            continue
        dets = run_detector(detector, [img for _, img in readable])
        for (path, img), det in zip(readable, select(dets, args.labels, args.max_det, args.cut)):
            drawn = draw_detections(
                cv2.cvtColor(img, cv2.COLOR_RGB2BGR), det["boxes"], det["scores"], det["labels"], names
            )
            target = targets[path]
            with atomic_output(target, "drawing", keep_suffix=True, claim=True) as tmp:
                if not cv2.imwrite(str(tmp), drawn):
                    raise ValueError(f"cannot write the image {target} (unknown image suffix, or no space left?)")
            report[str(path)] = to_records(det, names)
    return report


def check_video_output(source: Path | int | str, output: Path) -> None:
    """A video input needs a video output (known before any frame is processed)."""
    if output.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(
            f"the input {source} is a video: --output must be a video file "
            f"({', '.join(sorted(VIDEO_SUFFIXES))}), got {output}"
        )


def quiet_h264_writer(tmp: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    """An H.264 writer, or a closed one: OpenCV's and FFmpeg's logs are silenced while it probes the
    encoders (a build without one prints a screenful of errors otherwise)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's AV_LOG_QUIET, read when FFmpeg starts
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"avc1"), fps, size)
    finally:
        cv2.utils.logging.setLogLevel(level)


def open_video_writer(tmp: Path, output: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    """cv2.VideoWriter for `output`'s container (written to `tmp`); OpenCV fails silently, so it is checked.
    MP4/MOV: H.264 (avc1, which browsers play) where this OpenCV has an encoder, else MPEG-4 part 2 (mp4v)."""
    suffix = output.suffix.lower()
    writer = None
    if suffix in H264_CONTAINERS:
        writer = quiet_h264_writer(tmp, fps, size)
        if not writer.isOpened():
            print(
                f"note: this OpenCV has no H.264 encoder: {output} is MPEG-4 part 2 (mp4v), which some browsers "
                "do not play",
                file=sys.stderr,
            )
    if writer is None or not writer.isOpened():
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*VIDEO_CODECS.get(suffix, "mp4v")), fps, size)
    if not writer.isOpened():
        raise ValueError(
            f"cannot write the video {output}: OpenCV has no encoder for {output.suffix} "
            f"here (try --output NAME.mp4 or NAME.avi)"
        )
    return writer


def run_video(detector, names, path: Path | int | str, output: Path, args) -> dict:
    """A video file, a camera or a stream, frame by frame into `output`; {frame index: detections}."""
    capture = cv2.VideoCapture(path if isinstance(path, int) else str(path))
    if not capture.isOpened():
        raise ValueError(f"cannot open video {'source ' if not isinstance(path, Path) else ''}{path}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    announced = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)  # from the header: -1 or 0 if unknown
    with atomic_output(output, "output video", keep_suffix=True, claim=True) as tmp:
        writer = open_video_writer(tmp, output, fps, (width, height))
        try:
            report = draw_video(detector, names, capture, writer, args, announced)
        finally:
            capture.release()
            writer.release()
        if not report:  # raised inside: an earlier video at OUTPUT stays
            raise ValueError(f"no frames could be read from {path}")
    if len(report) < announced:
        print(
            f"warning: {path}: {len(report)} of {announced} frames read (the file is truncated or damaged); "
            f"{output} holds those {len(report)}",
            file=sys.stderr,
        )
    return report


def draw_video(detector, names, capture, writer, args, announced: int) -> dict:
    """Detect on every frame `capture` yields, draw into `writer`; {frame index: detections}."""
    from ssdfast.inference import run_detector, to_records

    report, done = {}, False
    with tqdm(total=announced or None, desc="video", unit="frame") as bar:
        while not done:
            frames = []
            try:
                while len(frames) < args.batch_size:
                    ok, frame = capture.read()
                    if not ok:
                        done = True
                        break
                    frames.append(frame)
            except KeyboardInterrupt:  # a camera or a stream never ends: Ctrl-C finishes the video so far
                print(f"\nstopped (Ctrl-C): {len(report) + len(frames)} frames", file=sys.stderr)
                done = True
            if not frames:
                break
            dets = run_detector(detector, [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames])
            for frame, det in zip(frames, select(dets, args.labels, args.max_det, args.cut)):
                writer.write(draw_detections(frame, det["boxes"], det["scores"], det["labels"], names))
                report[str(len(report))] = to_records(det, names)
            bar.update(len(frames))
    return report


def image_plan(spec: str, source: Path, output_spec: str) -> tuple[dict[Path, Path], bool]:
    """The input images and where each is drawn (image_targets) -> (targets, single): single when one
    image given as a file goes to a file name; otherwise OUTPUT is a folder (also for one image and an
    existing folder, a trailing '/', or a name without suffix)."""
    paths, output = list_images(spec), Path(output_spec)
    if is_listing(spec):  # names that are no regular file are left out of a listing
        others = [p for p in paths if not p.is_file()]  # a FIFO would block the reader, a device never ends
        if others:
            print(
                f"warning: {len(others)} listed name(s) are not regular files and are left out, e.g. "
                f"{shown(str(others[0]))}",
                file=sys.stderr,
            )
        paths = [p for p in paths if p.is_file()]
    if not paths or not all(p.is_file() for p in paths):
        raise FileNotFoundError(
            f"no input images found at {spec} (an image, a folder of images, a glob such as 'dir/*.jpg', "
            "or a video file)"
        )
    single = (
        len(paths) == 1
        and source.is_file()
        and output.suffix.lower() in IMAGE_SUFFIXES
        and not output.is_dir()
        and not output_spec.endswith(("/", "\\"))
    )
    return image_targets(paths, output, single), single


def main(argv=None) -> int:
    args = get_args(argv)  # --help and usage errors before PyTorch is imported
    from ssdfast.inference import ScoreCut, as_detector, keeping_weaker, load_detector
    from ssdfast.machinery.checkpoint import CheckpointError
    from ssdfast.machinery.runtime import configure_cudnn, pick_device
    from ssdfast.machinery.user_errors import error_line
    from ssdfast.models.pretrained import weights_file

    source, output = Path(args.input), Path(args.output)
    try:
        device = pick_device(args.device)
        configure_cudnn(device, not args.no_cudnn_benchmark)  # every frame is resized to the same input size
        stream = video_source(args.input)
        video = stream is not None or (source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES)
        source = source if stream is None else stream
        if video:
            check_video_output(source, output)
        weights = weights_file(args.weights)  # a missing file or name is found before the images are listed
        if video:
            json_path, single = sidecar(output, True), True
            drawn = [("output video", output)]
        else:
            targets, single = image_plan(args.input, source, args.output)
            json_path = sidecar(output, single)
            drawn = [("drawing", target) for target in targets.values()]
        check_outputs(
            [*drawn, ("detections file", json_path)],
            [] if single else [("output folder", output)],
            inputs=run_inputs(weights=[weights])["inputs"]
            + ([("input video", source)] if isinstance(source, Path) else [])
            + ([] if video else [("input image", p) for p in targets]),
            input_folders=[("input folder", source)] if not video and source.is_dir() else [],
        )
        if single:
            writable_file(output, "output video" if video else "output image")
        else:
            writable_folder(output, "output folder")
        # --max-det cuts each image's detections after --classes (select): the post-processing keeps its K.
        args.policy = flags.detection_policy(args, DISPLAY_POLICY, max_det_flag=False)
        model, meta = load_detector(weights, device, policy=args.policy)
        # The detector keeps weaker detections too, and args.cut drops them: a run that draws nothing
        # can then say what the best one scored.
        detector = keeping_weaker(as_detector(model, policy=args.policy))
        args.cut = ScoreCut(args.policy.score_threshold)
        names = meta["category_names"]
        args.labels = class_filter(names, args.classes)
        if video:
            report = run_video(detector, names, source, output, args)
        else:
            report = run_images(detector, names, targets, args, single)
            if not report:
                raise ValueError(f"none of the {len(targets)} input image(s) could be read")
        write_json_atomic(json_path, report, "detections file", indent=1, claim=True)
    except (CheckpointError, OSError, ValueError, OutputError) as error:
        print(f"error: {error_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    count = sum(len(v) for v in report.values())
    if args.cut.note():
        print(f"note: {args.cut.note()}: a lower --score-threshold draws them", file=sys.stderr)
    print(
        f"{count} detections in {len(report)} {'frame' if video else 'image'}(s); "
        f"drawn to {output}, listed in {json_path}"
    )
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
