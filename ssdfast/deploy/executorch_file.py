"""The ExecuTorch format: a ``.pte`` program lowered to the XNNPACK delegate, for phones and embedded Linux.

Written from the torch.export program of the network in plain tensor ops, lowered with ExecuTorch's
``to_edge_transform_and_lower`` and the ``XnnpackPartitioner``. The file holds the network, the box
decoding and the softmax: boxes [B, A, 4] and scores [B, A, C], as an ``--no-nms`` export. NMS is not in
it: XNNPACK has no NMS and ExecuTorch's portable kernels neither, so ssdfast runs its post-processing
after the file (``ssdfast.postprocess.select``), as an app would run its own.
INT8: PyTorch 2 export quantization (torchao's ``prepare_pt2e``/``convert_pt2e``) with ExecuTorch's
``XNNPACKQuantizer`` (symmetric int8, weights per channel), applied to the network alone, so the decode
and softmax stay float32.
The metadata and the content hash are constant methods of the program (``ssdfast_metadata``,
``ssdfast_sha256``); the hash covers the whole file (``ssdfast.deploy.stamped_digest``). ExecuTorch's
loader verifies the flatbuffer's internal consistency before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ssdfast.deploy import stamped_digest
from ssdfast.machinery.checkpoint import CheckpointError
from ssdfast.machinery.user_errors import parse_json

METADATA_METHOD, DIGEST_METHOD = "ssdfast_metadata", "ssdfast_sha256"
# A dynamic .pte runs batches in chunks of this many images: ExecuTorch plans its memory for the largest
# batch the file allows (formats.py: max_batch 16; the bound it enforces is a little below).
DYNAMIC_CHUNK = 8


def _batch(text: str | None) -> int | None:
    """The fixed batch size in the metadata text, or None (dynamic, or unreadable: validated later)."""
    try:
        batch = parse_json(text)["batch"]
    except (TypeError, ValueError, KeyError):
        return None
    return batch if isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1 else None


class _QuantizedNetwork(nn.Module):
    """A quantized network graph in the place of the model: ExportedDetector reads the anchors and the
    box coding from it."""

    def __init__(self, network: nn.Module, model: nn.Module):
        super().__init__()
        self.network, self.anchors, self.anchor_spec = network, model.anchors, model.anchor_spec

    def forward(self, images: Tensor):
        return self.network(images)


def quantize(model: nn.Module, example: Tensor, dynamic: dict | None, calibration: list[Tensor]) -> nn.Module:
    """`model`'s network quantized to INT8 for XNNPACK, calibrated on `calibration` (normalised batches)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    shapes = tuple(dynamic.values()) if dynamic else None
    graph = torch.export.export(model, (example,), dynamic_shapes=shapes).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    for batch in calibration:
        prepared(batch.float())
    return _QuantizedNetwork(convert_pt2e(prepared), model)


def write(
    detector: nn.Module, example: Tensor, dynamic, info: dict, with_nms: bool, path: Path, calibration=None
) -> None:
    """The ExportedDetector `detector` (plain ops, without NMS) as a .pte at `path`, lowered to XNNPACK,
    with its metadata `info` and content hash; calibration: None (float32) or batches for INT8."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if calibration is not None:
        detector.model = quantize(detector.model, example, dynamic, calibration)
    program = torch.export.export(detector, (example,), dynamic_shapes=dynamic)
    lowered = to_edge_transform_and_lower(
        program,
        partitioner=[XnnpackPartitioner()],
        constant_methods={METADATA_METHOD: json.dumps(info), DIGEST_METHOD: stamped_digest.PLACEHOLDER},
    ).to_executorch()
    path.write_bytes(lowered.buffer)
    stamped_digest.stamp([path])


def open_file(path: Path, device: torch.device):
    """(run, metadata text, class count) of the .pte at `path` in ExecuTorch's runtime (CPU), once its
    content hash matches (the bytes checked are the bytes loaded). The class count is the last size of its
    scores output [B, A, C] (the program holds no weight names). Outputs are moved to `device`."""
    from executorch.runtime import Runtime

    data = path.read_bytes()
    stamped_digest.verify(path, [data])
    try:
        program = Runtime.get().load_program(data)
        text = program.load_method(METADATA_METHOD).execute([])[0] if METADATA_METHOD in program.method_names else None
        forward = program.load_method("forward")
        scores = forward.metadata.output_tensor_meta(1).sizes() if forward.metadata.num_outputs() == 2 else None
    except Exception as error:
        raise CheckpointError(
            f"cannot read the ExecuTorch program {path}: {str(error).splitlines()[0] if str(error) else error.__class__.__name__}"
        ) from error
    if text is not None and not isinstance(text, str):
        text = None  # not ssdfast's: metadata validation names it

    chunk = _batch(text) or DYNAMIC_CHUNK

    def run(images: Tensor, keep=(program, data)) -> list[Tensor]:
        # keep: the Method runs out of its Program's memory, which must outlive it (a freed Program crashes)
        images = images.detach().float().cpu().contiguous()
        parts = [forward.execute([part.contiguous()]) for part in images.split(chunk)]
        # torch.cat copies: the outputs live in the Method's planned memory, which the next call reuses
        return [torch.cat(outputs).to(device) for outputs in zip(*parts)]

    return run, text, (scores[-1] if scores else None)
