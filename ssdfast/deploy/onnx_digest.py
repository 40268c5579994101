"""A content hash inside an ``.onnx``: written at export, checked before the file is run.

ONNX has no checksum: a flipped bit inside an initializer still parses and runs, and gives other
detections without a word. The export stores the sha256 of the model (graph, initializers, opsets,
everything but its metadata_props) followed by ssdfast's metadata text, under the metadata_props key
``ssdfast.sha256``; loading recomputes it from the bytes it then hands to ONNX Runtime (read once).
This detects corruption and careless edits, not a forger (who can recompute the hash).
Cost at load: one parse and one serialisation of the model (about a second for SSD300's 90 MB).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ssdfast.deploy.metadata import ONNX_METADATA
from ssdfast.machinery.checkpoint import CheckpointError
from ssdfast.machinery.user_errors import shown

DIGEST_KEY = "ssdfast.sha256"


class ExportIntegrityError(CheckpointError):
    """An exported file whose content is not what was exported (corrupted or edited)."""


def _digest(model) -> str:
    """sha256 hex of `model` (onnx.ModelProto) without metadata_props, then ssdfast's metadata text."""
    import onnx

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.metadata_props[:]
    digest = hashlib.sha256(bare.SerializeToString(deterministic=True))
    digest.update(_props(model).get(ONNX_METADATA, "").encode())
    return digest.hexdigest()


def _props(model) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def stamp(path: Path) -> None:
    """Add the content hash to the .onnx at `path` (written by the exporter, metadata included)."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**_props(model), DIGEST_KEY: _digest(model)})
    onnx.save(model, str(path))


def verified_metadata(path: Path, data: bytes) -> str | None:
    """ssdfast's metadata text of the .onnx whose bytes are `data`, once its content hash matches.
    Raises ExportIntegrityError (no hash, or another content) or CheckpointError (not ONNX)."""
    return _props(verified_model(path, data)).get(ONNX_METADATA)


def verified_model(path: Path, data: bytes):
    """The onnx.ModelProto of the .onnx whose bytes are `data`, once its content hash matches (see
    verified_metadata)."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as error:
        raise CheckpointError(
            f"cannot read the ONNX model {path}: {str(error).splitlines()[0] if str(error) else error.__class__.__name__} "
            "(truncated or corrupted file?)"
        ) from error
    props = _props(model)
    if DIGEST_KEY not in props:
        raise ExportIntegrityError(
            f"{path} carries no content hash ({DIGEST_KEY}): export it again with tools/export.py"
        )
    if props[DIGEST_KEY] != _digest(model):
        raise ExportIntegrityError(
            f"{path} is not the file that was exported: its content does not match the "
            f"sha256 recorded at export (corrupted or edited); export it again"
        )
    external = next(_external_tensors(model.graph), None)
    if external is not None:  # ONNX Runtime would open it by name, from the working folder
        raise CheckpointError(
            f"{path} is refused: its tensor {shown(external.name)} is stored in an external file "
            f"({shown(next((e.value for e in external.external_data if e.key == 'location'), '?'))}); the .onnx "
            "files ssdfast writes hold every weight, and a model file is never read beside itself"
        )
    return model


def _external_tensors(graph):
    """The tensors of `graph` (an onnx.GraphProto: initializers, node attributes, subgraphs) whose data lives
    in an external file."""
    import onnx

    tensors = [*graph.initializer, *(s.values for s in graph.sparse_initializer)]
    for node in graph.node:
        for attribute in node.attribute:
            tensors += [attribute.t, *attribute.tensors]
            for subgraph in [attribute.g, *attribute.graphs]:
                yield from _external_tensors(subgraph)
    yield from (t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL)
