"""Checks on an image file before anything decodes it: its size on disk, then how many pixels its header claims.

Every image reader (train, eval, detect, the API: ssdfast.data.coco.read_image) reads through image_bytes:
  * the file's size first (fstat, nothing read): a 5 GB sparse `.jpg` costs nothing to hold on disk and
    6 GB to read whole; the cap, --max-image-bytes, defaults to what an 8-bit RGB image at the default
    pixel cap takes uncompressed (3 x 50 MP = 150 MB), more than any real photo at that size needs;
  * then the header, from a bounded read (Pillow parses it alone, nothing is decoded): a 631-byte JPEG
    may claim 65500 x 65500 pixels (OpenCV raises on it; at 8000 x 8000 it decodes, and one sample
    costs gigabytes in the augmentation);
  * only then the rest of the file. Where it lies (inside its folder) is ssdfast.data.dataset_files' rule.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from ssdfast.data.dataset_files import UnusableFile, open_regular, read_bounded
from ssdfast.flag_types import integer

DEFAULT_MAX_PIXELS = 50_000_000  # width x height; COCO's images have at most 0.4 MP, a 48 MP photo passes
# Pillow refuses to parse headers above 2 x Image.MAX_IMAGE_PIXELS (179 MP) on its own, so no cap can
# be higher; OpenCV's own limit (2^30 pixels) is above it.
PILLOW_LIMIT = 2 * Image.MAX_IMAGE_PIXELS
DEFAULT_MAX_IMAGE_BYTES = 3 * DEFAULT_MAX_PIXELS  # 150 MB: 8-bit RGB at the pixel cap, uncompressed
MAX_IMAGE_BYTES_LIMIT = 2**40  # the highest --max-image-bytes: a terabyte
OVER_PIXEL_CAP = "over the pixel cap"
NOT_AN_IMAGE = "not an image Pillow can parse"


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


def image_bytes(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
) -> bytes:
    """The bytes of an image file once its size (at most max_bytes) and its header (at most max_pixels,
    width x height) are known to be fine; FileNotFoundError, or UnusableFile naming the file and the limit
    it breaks (its `problem` is what a drop is counted under)."""
    with open_regular(path, max_bytes, "--max-image-bytes") as file:
        pixels = header_pixels(file)  # Pillow reads the header alone from the open file
        if pixels is None:
            raise UnusableFile(path, NOT_AN_IMAGE)
        if pixels > max_pixels:
            raise UnusableFile(path, OVER_PIXEL_CAP, f"its header claims {pixels} pixels, --max-pixels is {max_pixels}")
        file.seek(0)
        return read_bounded(file, path, max_bytes, "--max-image-bytes")


def add_image_limit_args(parser: argparse.ArgumentParser, outside_paths: bool = True) -> None:
    """--max-pixels, --max-image-bytes (and --allow-outside-paths, for tools that read a dataset) on a tool's parser."""
    parser.add_argument(
        "--max-pixels",
        type=integer(1, PILLOW_LIMIT),
        default=DEFAULT_MAX_PIXELS,
        help=f"skip (and count) images whose header claims more pixels, width x height, before "
        f"decoding them (default {DEFAULT_MAX_PIXELS}; at most {PILLOW_LIMIT})",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=integer(1, MAX_IMAGE_BYTES_LIMIT),
        default=DEFAULT_MAX_IMAGE_BYTES,
        help=f"skip (and count) image files larger than this, before reading a byte of them (default "
        f"{DEFAULT_MAX_IMAGE_BYTES}: an 8-bit RGB image at the default --max-pixels, uncompressed)",
    )
    if outside_paths:
        parser.add_argument(
            "--allow-outside-paths",
            action="store_true",
            help="read dataset files (images, labels, XMLs, list files) that lie outside their folder "
            "(absolute or ../ names, symlinks out of it); by default they are left out and counted",
        )
