"""Checks on an image file before anything decodes it: where it lies, and how many pixels its header claims.

A dataset is data from elsewhere: an annotation `file_name` may point anywhere (`/etc/hostname`,
`../../x.jpg`, a symlink out of the folder), and a 631-byte JPEG may claim 65500 x 65500 pixels
(OpenCV raises on it; at 8000 x 8000 it decodes, and one sample costs gigabytes in the augmentation).
"""

from __future__ import annotations

import argparse
import functools
import os
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from ssdfast.flag_types import integer

DEFAULT_MAX_PIXELS = 50_000_000  # width x height; COCO's images have at most 0.4 MP, a 48 MP photo passes
# Pillow refuses to parse headers above 2 x Image.MAX_IMAGE_PIXELS (179 MP) on its own, so no cap can
# be higher; OpenCV's own limit (2^30 pixels) is above it.
PILLOW_LIMIT = 2 * Image.MAX_IMAGE_PIXELS


def header_pixels(file: str | Path | BinaryIO) -> int | None:
    """width x height as the file's header states it (Pillow parses the header only, nothing is decoded);
    None when Pillow cannot parse it as an image (empty, not an image); above PILLOW_LIMIT: PILLOW_LIMIT + 1."""
    try:
        with warnings.catch_warnings():  # Pillow warns above MAX_IMAGE_PIXELS: the cap decides here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        return PILLOW_LIMIT + 1
    except Exception:  # whatever a hostile header trips in a parser: the image is skipped, not the run
        return None
    return width * height


def header_problem(file: str | Path | BinaryIO, max_pixels: int) -> str | None:
    """Why an image must not be decoded, as a dropped reason (None: fine to decode)."""
    pixels = header_pixels(file)
    if pixels is None:
        return "unreadable images"
    return "images over the pixel cap (--max-pixels)" if pixels > max_pixels else None


def resolves_inside(folder: Path, file_name: str) -> bool:
    """Does folder/file_name, symlinks followed, lie inside `folder` (itself resolved: it may be a link)?

    A plain name directly in the folder (COCO's case) costs one lstat: only the file itself can be a
    link. Anything else (a sub-folder, "..", an absolute name) costs a realpath: an lstat per component."""
    real_folder = _real_folder(folder)
    path = os.path.join(folder, file_name)
    plain = file_name not in ("", ".", "..") and os.path.basename(file_name) == file_name
    if plain and not os.path.islink(path):
        return True
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):  # a NUL byte in the name
        return False
    return real == real_folder or real.startswith(real_folder.rstrip(os.sep) + os.sep)


@functools.lru_cache(maxsize=16)
def _real_folder(folder: Path) -> str:
    return os.path.realpath(folder)


def add_image_limit_args(parser: argparse.ArgumentParser, outside_paths: bool = True) -> None:
    """--max-pixels (and --allow-outside-paths, for tools that read a dataset) on a tool's parser."""
    parser.add_argument(
        "--max-pixels",
        type=integer(1, PILLOW_LIMIT),
        default=DEFAULT_MAX_PIXELS,
        help=f"skip (and count) images whose header claims more pixels, width x height, before "
        f"decoding them (default {DEFAULT_MAX_PIXELS}; at most {PILLOW_LIMIT})",
    )
    if outside_paths:
        parser.add_argument(
            "--allow-outside-paths",
            action="store_true",
            help="read dataset images that lie outside the image folder (absolute or ../ file "
            "names, symlinks out of it); by default they are left out and counted",
        )
