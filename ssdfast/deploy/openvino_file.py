"""The OpenVINO IR format: ``NAME.xml`` (the graph) + ``NAME.bin`` (the weights), run by OpenVINO's CPU plugin.

Written by OpenVINO's own converter (``openvino.convert_model``) from the ONNX graph (NMS as
NonMaxSuppression, which OpenVINO runs natively), weights kept in float32 (``compress_to_fp16=False``:
the export check compares with PyTorch). INT8: NNCF's post-training quantization (``nncf.quantize``) of
the network only: the ops converted from the nodes ``ssdfast.deploy.onnx_int8.network_nodes`` names may be
quantized (every convolution: int8 weights and inputs), the decode, softmax, top-k and NMS ops are NNCF's
ignored scope and stay float32.
The metadata and the content hash live in the .xml's rt_info (``ssdfast/metadata``, ``ssdfast/sha256``);
the hash covers both files (``ssdfast.deploy.stamped_digest``). Loading reads both files once, the .bin
only as the regular file beside the .xml (``ssdfast.deploy.deployed.companion_bytes``), refuses an .xml
that is not an IR (another frontend's model, or XML with a DOCTYPE), and gives OpenVINO the bytes it
checked: nothing else is opened by name.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ssdfast.deploy import stamped_digest
from ssdfast.machinery.checkpoint import CheckpointError

RT_INFO = "ssdfast"  # rt_info section: metadata (JSON text) and sha256 (stamped_digest's stamp)
_IR_START = re.compile(rb"\s*(<\?xml [^>]*\?>\s*)?<net[ >]")  # an IR's root element, nothing before it


def write(
    detector: nn.Module, example: Tensor, dynamic, info: dict, with_nms: bool, path: Path, calibration=None
) -> None:
    """The ExportedDetector `detector` (plain ops) as OpenVINO IR at `path` (the .xml; the .bin beside it
    with its stem), with its metadata `info` and content hash; calibration: None (float32) or normalised
    image batches for NNCF's INT8 quantization."""
    import onnx
    import openvino as ov

    from ssdfast.deploy.export import trace_onnx
    from ssdfast.deploy.onnx_int8 import network_nodes

    onnx_path = path.with_suffix(".onnx")  # a temporary's name: a killed run's is cleared as the file's
    try:
        trace_onnx(detector, example, dynamic, with_nms, onnx_path)
        model = ov.convert_model(str(onnx_path))
        if calibration is not None:
            model = quantize(model, calibration, set(network_nodes(onnx.load(str(onnx_path)))))
    finally:
        onnx_path.unlink(missing_ok=True)
    model.set_rt_info(json.dumps(info), [RT_INFO, "metadata"])
    model.set_rt_info(stamped_digest.PLACEHOLDER, [RT_INFO, "sha256"])
    ov.save_model(model, str(path), compress_to_fp16=False)  # writes the .bin beside it
    stamped_digest.stamp([path, path.with_suffix(".bin")])


def onnx_node_of(op_name: str) -> str:
    """The ONNX node an OpenVINO op came from: the converter names each op after its node and the ops it
    splits a node into NODE/PART (a convolution with a bias becomes NODE/WithoutBiases and the Add NODE)."""
    return op_name.split("/", 1)[0]


def quantize(model, calibration: list[Tensor], network: set[str]):
    """NNCF's INT8 post-training quantization of `model`'s ops that came from the ONNX nodes `network`;
    every other op is ignored (stays float32)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    names = {op.get_friendly_name() for op in model.get_ordered_ops()}
    ignored = sorted(name for name in names if onnx_node_of(name) not in network)
    nncf.set_log_level(logging.ERROR)  # its per-node notes and progress bars would bury the tool's lines
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return nncf.quantize(
            model,
            nncf.Dataset(calibration, lambda batch: batch.float().cpu().numpy()),
            subset_size=len(calibration),  # items of the Dataset: batches
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
            # 7-bit weights in every layer (NNCF's default: the first only): without VNNI, x86 sums u8 x s8
            # pairs in 16 bits, which saturate (as onnx_int8's reduce_range; AP measured, docs/deploy.md)
            advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
        )


def _weights_classes(model) -> int | None:
    """The class count of the IR's class heads, from its convolution weights (the converter names them
    after the ONNX initializers, model.conf.0...weight, and folds the biases into other nodes: a weight's
    output channels stand for its bias's size)."""
    from ssdfast.deploy.deployed import weights_classes

    sizes = {}
    for op in model.get_ordered_ops():
        name, shape = op.get_friendly_name(), list(op.get_output_shape(0)) if op.get_type_name() == "Constant" else []
        if len(shape) == 4 and name.endswith(".weight"):
            sizes[name.removesuffix("weight") + "bias"] = int(shape[0])
    return weights_classes(sizes)


def open_file(path: Path, device: torch.device):
    """(run, metadata text, class count of its weights) of the IR `path` (+ its .bin) on OpenVINO's CPU
    plugin, once the content hash of both files matches. Outputs are moved to `device`."""
    import openvino as ov

    from ssdfast.deploy.deployed import companion_bytes

    xml = path.read_bytes()
    weights = companion_bytes(path, ".bin")
    stamped_digest.verify(path, [xml, weights])
    if not _IR_START.match(xml) or b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        raise CheckpointError(f"{path} is not an OpenVINO IR as ssdfast writes it (its root must be <net>, no DOCTYPE)")
    core = ov.Core()
    try:
        model = core.read_model(model=xml, weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
        key = [RT_INFO, "metadata"]
        text = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None
        classes = _weights_classes(model)
        compiled = core.compile_model(model, "CPU")
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        raise CheckpointError(f"cannot read the OpenVINO model {path}: {reason}") from error
    request = compiled.create_infer_request()

    def run(images: Tensor) -> list[Tensor]:
        results = request.infer({0: images.detach().float().cpu().contiguous().numpy()})
        return [torch.from_numpy(np.array(results[output])).to(device) for output in compiled.outputs]

    return run, text, classes
