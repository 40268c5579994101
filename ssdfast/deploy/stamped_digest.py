"""A content hash stamped into a file in place: for formats whose container has no metadata slot that a
hash could leave out (OpenVINO's .xml + .bin, ExecuTorch's .pte).

The exporter writes the placeholder ``ssdfast.sha256:`` + 64 zeros into the main file (an rt_info value,
a constant string); ``stamp`` then computes the sha256 of every file of the artifact (each length-
prefixed, in order, the placeholder as written) and writes the hex digest over the zeros: the same
length, so the container stays valid. ``verify`` finds the one stamp, puts the zeros back and
recomputes the digest over the bytes it was given, which are the bytes then handed to the runtime.
A changed byte in any of the files, a swapped companion file or a missing stamp is refused. As for
``.onnx`` files (``ssdfast.deploy.onnx_digest``), this detects corruption and careless edits, not a
forger. Cost at load: one sha256 pass over the files (about 0.1 s for SSD300's 90 MB).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ssdfast.deploy.onnx_digest import ExportIntegrityError

MARK = b"ssdfast.sha256:"
PLACEHOLDER = (MARK + b"0" * 64).decode()
_STAMP = re.compile(re.escape(MARK) + rb"[0-9a-f]{64}")


def _digest(blobs: list[bytes]) -> str:
    digest = hashlib.sha256()
    for blob in blobs:
        digest.update(len(blob).to_bytes(8, "little"))
        digest.update(blob)
    return digest.hexdigest()


def _the_stamp(path: Path, data: bytes) -> re.Match:
    stamps = list(_STAMP.finditer(data))
    if len(stamps) != 1:
        raise ExportIntegrityError(
            f"{path} carries {'no' if not stamps else len(stamps)} content hash(es) ({MARK.decode()}...; one "
            "expected): export it again with tools/export.py"
        )
    return stamps[0]


def stamp(paths: list[Path]) -> None:
    """Replace the placeholder in paths[0] by the digest of all of `paths` (the artifact's files)."""
    blobs = [path.read_bytes() for path in paths]
    if blobs[0].count(PLACEHOLDER.encode()) != 1:
        raise ValueError(f"{paths[0]}: the exporter wrote no single hash placeholder")
    blobs[0] = blobs[0].replace(PLACEHOLDER.encode(), MARK + _digest(blobs).encode())
    paths[0].write_bytes(blobs[0])


def verify(path: Path, blobs: list[bytes]) -> None:
    """Raise ExportIntegrityError unless `blobs` (the bytes of the artifact `path`'s files, main first)
    are what was exported."""
    found = _the_stamp(path, blobs[0])
    zeroed = blobs[0][: found.start()] + PLACEHOLDER.encode() + blobs[0][found.end() :]
    if found.group()[len(MARK) :].decode() != _digest([zeroed, *blobs[1:]]):
        raise ExportIntegrityError(
            f"{path} is not the file that was exported: its content does not match the sha256 recorded at "
            "export (corrupted, edited, or a companion file from another export); export it again"
        )
