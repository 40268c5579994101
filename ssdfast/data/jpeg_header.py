"""What a JPEG's header says, read without decoding: size, colour components, EXIF orientation.

The GPU data path's workers use it to send only plain colour JPEGs to the batched decoder (nvJPEG on
CUDA) and everything else (grayscale, CMYK, arithmetic coding, PNG, truncated files) to the CPU decoder;
and to turn a decoded image the way OpenCV does (EXIF orientation), which nvJPEG does not. Reads the
segments up to the first scan: a few hundred bytes, microseconds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Start-of-frame markers of Huffman-coded JPEGs: baseline, extended sequential, progressive.
HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2)
OTHER_FRAMES = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)  # lossless, arithmetic, ...
ORIENTATION_TAG = 0x0112
TRANSPOSED = frozenset({5, 6, 7, 8})  # the EXIF orientations that swap width and height


@dataclass(frozen=True)
class JpegHeader:
    height: int
    width: int
    components: int  # 1 grayscale, 3 colour (YCbCr), 4 CMYK / YCCK
    huffman: bool  # baseline or progressive Huffman coding (what every decoder handles)
    orientation: int  # EXIF orientation 1..8 (1: as stored)

    @property
    def displayed_size(self) -> tuple[int, int]:
        """(height, width) of the image as displayed (after its EXIF orientation, as OpenCV decodes it)."""
        return (self.width, self.height) if self.orientation in TRANSPOSED else (self.height, self.width)


def read_jpeg_header(raw: bytes) -> JpegHeader | None:
    """The header of a JPEG file's bytes, or None when they are not a JPEG or its header is cut."""
    if raw[:2] != b"\xff\xd8":
        return None
    position, orientation = 2, 1
    try:
        while True:
            while raw[position] == 0xFF and raw[position + 1] == 0xFF:  # fill bytes before a marker
                position += 1
            if raw[position] != 0xFF:
                return None
            marker = raw[position + 1]
            (length,) = struct.unpack(">H", raw[position + 2 : position + 4])
            segment = raw[position + 4 : position + 2 + length]
            if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
                orientation = exif_orientation(segment[6:]) or orientation
            elif marker in HUFFMAN_FRAMES or marker in OTHER_FRAMES:
                height, width, components = struct.unpack(">HHB", segment[1:6])
                return JpegHeader(height, width, components, marker in HUFFMAN_FRAMES, orientation)
            elif marker == 0xDA:  # a scan before any frame header: not a usable JPEG
                return None
            position += 2 + length
    except (IndexError, struct.error):
        return None


def exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag (1..8) of IFD0 of an EXIF block (TIFF layout), or None if absent or invalid."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return None
    try:
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, _, _, value = struct.unpack(order + "HHIH", tiff[entry : entry + 10])
            if tag == ORIENTATION_TAG:
                return value if 1 <= value <= 8 else None
    except struct.error:  # a cut EXIF block: no orientation, as OpenCV reads it
        pass
    return None
