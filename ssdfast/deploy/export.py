"""Export a trained detector (model + post-processing) to a file of one of the export formats
(``ssdfast.deploy.formats``: ONNX, a torch.export ``.pt2``, OpenVINO IR, ExecuTorch), and check it.

What is exported, ``ExportedDetector``: images float32 [B, 3, 300, 300], RGB resized to 300x300 and
normalised as ``ssdfast.data.transforms.to_tensor`` does ((x / 255 - ImageNet mean) / std), ->
  with NMS:    boxes [B, K, 4] (normalised xyxy), scores [B, K], labels [B, K] (int64, 1..C), counts [B]
               (int64): the fixed-size layout of ``ssdfast.postprocess`` (K = max_detections, padding 0);
  without NMS: boxes [B, A, 4] (decoded, normalised xyxy), scores [B, A, C] (softmax, background
               dropped): the input of an NMS stage of one's own (e.g. TensorRT's EfficientNMS).
ONNX runs NMS as the standard NonMaxSuppression operator (``ssdfast.deploy.onnx_nms``); the ``.pt2`` holds the
ssdfast ops themselves (their fake kernels trace them), so loading it needs the extension ssdfast._C.
OpenVINO IR is converted from that ONNX graph; an ExecuTorch file holds no NMS (XNNPACK has none).
Boxes are decoded with the model's own box coding (``model.anchor_spec.variances``), detections kept by a
``DetectionPolicy``. The artifact carries its metadata (``ssdfast.deploy.metadata``): model, categories,
the policy, the precision; and a digest of its content checked at load (``ssdfast.deploy.onnx_digest``,
``ssdfast.deploy.stamped_digest``). INT8 (``calibration``): the network only, quantized by the format's
own tool; decode and NMS stay float32 (``ssdfast.deploy.onnx_int8``).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from ssdfast import ops, reference
from ssdfast.defaults import DETECTION_POLICY, DetectionPolicy
from ssdfast.deploy import onnx_digest
from ssdfast.deploy.formats import FORMATS, function
from ssdfast.deploy.metadata import ONNX_METADATA, PT2_METADATA, describe, exported_policy, output_names
from ssdfast.deploy.nms_check import match_candidates, nms_problem
from ssdfast.deploy.onnx_nms import _onnx_translation, postprocess_onnx
from ssdfast.postprocess import Detections, decode_scores, postprocess, select

ONNX_OPSET = 18  # the dynamo exporter's own opset (NonMaxSuppression exists since 10); onnx_nms uses opset18


class ExportedDetector(nn.Module):
    """model + post-processing as one module; see the module docstring for inputs and outputs.
    for_onnx: decode with plain tensor ops and NMS as ONNX's operator; else the ssdfast ops."""

    def __init__(
        self,
        model: nn.Module,
        *,
        for_onnx: bool,
        with_nms: bool,
        policy: DetectionPolicy,
    ):
        super().__init__()
        self.model, self.for_onnx, self.with_nms, self.policy = model, for_onnx, with_nms, policy

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        locs, confs = self.model(images)
        anchors, variances = self.model.anchors, self.model.anchor_spec.variances
        if not self.with_nms:
            decode = reference.box_decode if self.for_onnx else ops.box_decode
            return decode(locs, anchors, *variances), confs.float().softmax(dim=-1)[..., 1:]
        post = postprocess_onnx if self.for_onnx else postprocess
        return tuple(post(locs, confs, anchors, variances, self.policy))


def export(
    model: nn.Module,
    meta: dict,
    fmt: str,
    path: str | Path,
    *,
    batch: int | None,
    with_nms: bool,
    policy: DetectionPolicy = DETECTION_POLICY,
    calibration: list[Tensor] | None = None,
) -> dict:
    """Write `model` (eval mode, CPU) with its post-processing (`policy`) to `path` as `fmt` (a name in
    ssdfast.deploy.formats; its companion files beside it); batch None: dynamic batch axis; calibration:
    None (float32) or normalised image batches [b, 3, 300, 300] to quantize the network to INT8 with.
    A format without NMS inside is written without. Returns the metadata stored in the file."""
    spec = FORMATS[fmt]
    if calibration is not None and not spec.int8:
        raise ValueError(f"the {fmt} format has no INT8 variant")
    with_nms = with_nms and spec.nms_inside
    detector = ExportedDetector(model.eval(), for_onnx=spec.for_onnx, with_nms=with_nms, policy=policy).eval()
    # A dynamic axis is traced at 2: torch.export specialises sizes 0 and 1.
    example = torch.randn(batch or 2, 3, 300, 300)
    dynamic = {"images": {0: torch.export.Dim("batch", min=1, max=spec.max_batch)}} if batch is None else None
    precision = "float32" if calibration is None else "int8"
    info = describe(meta, fmt, batch=batch, with_nms=with_nms, policy=policy, precision=precision)
    with torch.no_grad():
        function(spec.writer)(detector, example, dynamic, info, with_nms, Path(path), calibration)
    return info


def trace_onnx(detector: nn.Module, example: Tensor, dynamic, with_nms: bool, path: Path) -> None:
    """The detector (plain ops) as ONNX at `path`, without ssdfast's metadata or hash."""
    program = torch.onnx.export(
        detector,
        (example,),
        dynamo=True,
        opset_version=ONNX_OPSET,
        external_data=False,
        custom_translation_table=_onnx_translation(),
        input_names=["images"],
        output_names=output_names(with_nms),
        dynamic_shapes=dynamic,
        verbose=False,
    )
    program.save(str(path))


def write_onnx(
    detector: nn.Module, example: Tensor, dynamic, info: dict, with_nms: bool, path: Path, calibration=None
) -> None:
    """The detector as an .onnx file carrying `info` and its content hash (onnx_digest); calibration: the
    batches of ONNX Runtime's static INT8 quantization of the network (onnx_int8), or None."""
    import onnx

    if calibration is None:
        trace_onnx(detector, example, dynamic, with_nms, path)
    else:
        from ssdfast.deploy.onnx_int8 import quantize

        float_path = path.with_suffix(".float")  # a temporary's name: a killed run's is cleared as the file's
        try:
            trace_onnx(detector, example, dynamic, with_nms, float_path)
            quantize(float_path, path, calibration)
        finally:
            float_path.unlink(missing_ok=True)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {ONNX_METADATA: json.dumps(info)})
    onnx.save(model, str(path))
    onnx_digest.stamp(path)


def write_pt2(
    detector: nn.Module, example: Tensor, dynamic, info: dict, with_nms: bool, path: Path, calibration=None
) -> None:
    """The detector as a torch.export .pt2 file carrying `info` (PT2_METADATA); no INT8 variant."""
    program = torch.export.export(detector, (example,), dynamic_shapes=dynamic)
    # Serialised in memory (the file's size), written by Python: torch's zip writer, given a path, turns
    # a full disk into a C++ exception its destructor throws again, which aborts the process.
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={PT2_METADATA: json.dumps(info)})
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def compare_detections(expected: Detections, got: Detections, atol: float = 1e-4, tie: float = 1e-4) -> dict:
    """The tests' comparison, per image: the same count, and every detection of one side has a partner
    on the other with the same label, score and box within atol (matched as sets, so equal scores may
    come in another order). Ties in score aside: two runtimes compute scores up to a few 1e-5 apart, so
    of two candidates whose scores are within `tie`, either may be the one kept (by NMS, or as the
    max_det-th); a detection without partner is such a near tie if the other side has one without
    partner whose score is within `tie`. -> {"ok", "images", "detections", "near_ties", "max_box_diff",
    "max_score_diff", "problem"} (problem: the first difference found, or None)."""
    out = {
        "ok": True,
        "images": len(expected.counts),
        "detections": int(expected.counts.sum()),
        "near_ties": 0,
        "max_box_diff": 0.0,
        "max_score_diff": 0.0,
        "problem": None,
    }
    for i, (n, m) in enumerate(zip(expected.counts.tolist(), got.counts.tolist())):
        if n != m:
            return {**out, "ok": False, "problem": f"image {i}: {m} detections instead of {n}"}
        if n == 0:
            continue
        eb, es, el = (
            expected.boxes[i, :n].float().cpu(),
            expected.scores[i, :n].float().cpu(),
            expected.labels[i, :n].cpu(),
        )
        gb, gs, gl = got.boxes[i, :n].float().cpu(), got.scores[i, :n].float().cpu(), got.labels[i, :n].cpu()
        score_diff = (es[:, None] - gs[None, :]).abs()  # [n, n]: PyTorch's detection x the exported one's
        box_diff = (eb[:, None, :] - gb[None, :, :]).abs().amax(dim=-1)
        partner = (el[:, None] == gl[None, :]) & (score_diff <= atol) & (box_diff <= atol)
        lone_e, lone_g = ~partner.any(dim=1), ~partner.any(dim=0)
        swapped = (score_diff <= tie) & lone_e[:, None] & lone_g[None, :]
        bad = torch.cat([lone_e & ~swapped.any(dim=1), lone_g & ~swapped.any(dim=0)])
        if bad.any():
            k = int(bad.nonzero()[0])
            side, labels, scores = ("PyTorch", el, es) if k < n else ("exported", gl, gs)
            return {
                **out,
                "ok": False,
                "problem": f"image {i}: the {side} detection {k % n} (label {int(labels[k % n])}, "
                f"score {float(scores[k % n]):.5f}) has no partner with the same label, score and box within {atol}",
            }
        out["near_ties"] += int(lone_e.sum())
        inf = torch.full_like(box_diff, float("inf"))
        matched = ~lone_e
        out["max_box_diff"] = max(
            out["max_box_diff"], float(torch.where(partner, box_diff, inf).amin(1)[matched].max())
        )
        out["max_score_diff"] = max(
            out["max_score_diff"], float(torch.where(partner, score_diff, inf).amin(1)[matched].max())
        )
    return out


def check_against_pytorch(
    path: str | Path, model: nn.Module, info: dict, batches: list[int], seed: int = 0, tol: float = 1e-4
) -> dict:
    """Run the exported file (ssdfast.deploy.deployed) and the PyTorch model on the same random images (`batches`
    sizes). The file passes when, on every image, its detections are a correct post-processing of
    PyTorch's decoded boxes and scores for some order of tied scores (ssdfast.deploy.nms_check: a young model's
    exact ties may be broken otherwise), and a file without NMS outputs PyTorch's boxes and scores
    within `tol`. -> {"ok", "problem" (the first, or None), "images", "detections", "tie_choices"
    (detections PyTorch itself does not keep), "max_box_diff", "max_score_diff", "batches", "seconds"}."""
    from ssdfast.deploy.deployed import Deployed  # deployed imports this module's constants

    deployed, generator = Deployed(path), torch.Generator().manual_seed(seed)
    policy = exported_policy(info)
    out = {
        "ok": True,
        "problem": None,
        "images": 0,
        "detections": 0,
        "tie_choices": 0,
        "max_box_diff": 0.0,
        "max_score_diff": 0.0,
        "batches": batches,
        "seconds": 0.0,
    }
    for size in batches:
        images = torch.randn(size, 3, 300, 300, generator=generator)
        with torch.no_grad():
            boxes, scores = decode_scores(*model(images), model.anchors, model.anchor_spec.variances)
        start = time.perf_counter()
        got = deployed(images)
        out["seconds"] += time.perf_counter() - start
        theirs = select(boxes, scores, policy)
        problem = None if info["with_nms"] else _raw_problem(deployed.raw(images), boxes, scores, tol)
        for i in range(size):
            problem = problem or _image_problem(boxes[i], scores[i], got, theirs, i, policy, tol, out)
            if problem:
                return {**out, "ok": False, "problem": f"image {out['images'] + i}: {problem}"}
        out["images"] += size
    return out


def _raw_problem(raw: list[Tensor], boxes: Tensor, scores: Tensor, tol: float) -> str | None:
    """A file without NMS: its decoded boxes and class scores against PyTorch's."""
    diffs = [float((got.cpu() - want).abs().max()) for got, want in zip(raw, (boxes, scores))]
    if max(diffs) > tol:
        return f"the boxes differ from PyTorch's by {diffs[0]:.2e}, the scores by {diffs[1]:.2e} (more than {tol})"
    return None


def _image_problem(
    boxes: Tensor,
    scores: Tensor,
    got: Detections,
    theirs: Detections,
    i: int,
    policy: DetectionPolicy,
    tol: float,
    out: dict,
) -> str | None:
    """Image i: the file's detections `got` checked against PyTorch's boxes [A, 4] and scores [A, C]
    under `policy` (nms_check); adds its counts and differences to `out`."""
    n = int(got.counts[i])
    mine = got.boxes[i, :n].float().cpu(), got.scores[i, :n].float().cpu(), got.labels[i, :n].cpu()
    problem = nms_problem(boxes, scores, *mine, policy=policy, tol=tol)
    if problem or n == 0:
        return problem
    anchors = match_candidates(boxes, scores, *mine, tol)
    m = int(theirs.counts[i])
    pytorch = match_candidates(boxes, scores, theirs.boxes[i, :m], theirs.scores[i, :m], theirs.labels[i, :m], 0.0)
    out["detections"] += n
    classes = scores.shape[1]  # one number per candidate: anchor * classes + label
    chosen = torch.isin(anchors * classes + mine[2], pytorch * classes + theirs.labels[i, :m].cpu())
    out["tie_choices"] += int((~chosen).sum())
    out["max_box_diff"] = max(out["max_box_diff"], float((boxes[anchors] - mine[0]).abs().max()))
    out["max_score_diff"] = max(out["max_score_diff"], float((scores[anchors, mine[2] - 1] - mine[1]).abs().max()))
    return None
