"""INT8 of an ONNX graph: ONNX Runtime's static QDQ quantization (``onnxruntime.quantization.quantize_static``)
of the network's nodes only, the backbone and the heads.

Which nodes: those the exporter scoped under a submodule of the ExportedDetector's ``model`` attribute
(``NETWORK_SCOPE``: backbone, extra blocks, heads; OpenVINO's NNCF quantization takes the same list,
``ssdfast.deploy.openvino_file``). The heads' outputs stay float32 from there on: the reshapes and
concatenations of the SSD's own forward, box decoding, softmax, top-k and NMS: the concatenated class
logits would share one per-tensor range across all heads, 8 bits on a box offset move a box by up to
1/256 of its size (AP75), and these steps are a small part of the time. Weights are quantized per output channel (int8 values in 7 bits: ``reduce_range``), activations
per tensor (uint8, MinMax over the calibration images).
"""

from __future__ import annotations

import ast
import logging
from contextlib import contextmanager
from pathlib import Path

from torch import Tensor

NETWORK_SCOPE = "model"  # ExportedDetector's attribute holding the network: its nodes are the ones quantized
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # the exporter's per-node record of the module path


def network_nodes(model) -> list[str]:
    """Names of the nodes of `model` (onnx.ModelProto) inside the network's submodules (backbone, extra
    blocks, heads): scopes ['', 'model', 'model.<submodule>', ...]."""
    names = []
    for node in model.graph.node:
        scopes = {prop.key: prop.value for prop in node.metadata_props}.get(_NAME_SCOPES)
        scopes = ast.literal_eval(scopes) if scopes else []
        if scopes[1:2] == [NETWORK_SCOPE] and scopes[2:3] and scopes[2].startswith(NETWORK_SCOPE + "."):
            names.append(node.name)
    return names


def quantize(float_path: Path, path: Path, calibration: list[Tensor]) -> None:
    """The ONNX graph at `float_path`, its network nodes quantized (QDQ) on the normalised image batches
    `calibration`, written to `path`."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch.float().cpu().contiguous().numpy()}

    nodes = network_nodes(onnx.load(str(float_path)))
    if not nodes:
        raise ValueError(f"{float_path}: no node of the network found to quantize (exporter's name scopes)")
    with _quiet_root_logger():
        quantize_static(
            str(float_path),
            str(path),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,  # 7-bit weights: without VNNI, x86 sums u8 x s8 pairs in 16 bits, which saturate (docs/deploy.md)
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes,
        )


@contextmanager
def _quiet_root_logger():
    """quantize_static logs (root logger) a generic advice to run its pre-processing (shape inference,
    graph optimisation) first: the nodes quantized here are convolutions of known shapes, and the advice
    would be two stray lines beside tools/export.py's own."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)
