"""What an exported file says about itself: written by ``ssdfast.deploy.export``, checked by ``ssdfast.deploy.deployed``.

The metadata is one JSON object (the ``.pt2`` extra file ``ssdfast.json``, the ``.onnx`` metadata_props
key ``ssdfast``, an OpenVINO ``.xml``'s rt_info ``ssdfast/metadata``, a ``.pte``'s constant method
``ssdfast_metadata``). Loading validates every key that is used (type and range; the model's keys by
``ssdfast.machinery.model_metadata.MODEL_RULES``, as a checkpoint's), so an edited or foreign file fails
with one ExportMetadataError naming the key, not a KeyError deep inside a tool. The
post-processing is stored under the keys files have always had (score_threshold, nms_threshold, max_det;
topk_per_class since it could differ from SSD's), read back as a DetectionPolicy by ``exported_policy``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ssdfast.defaults import DETECTION_POLICY, EXPORT_FORMATS, POLICY_NAMES, POLICY_RANGES, DetectionPolicy
from ssdfast.deploy.formats import FORMATS
from ssdfast.flag_types import MAX_DETECTIONS
from ssdfast.machinery.checkpoint import CheckpointError
from ssdfast.machinery.model_metadata import MODEL_RULES, found
from ssdfast.machinery.user_errors import parse_json

PT2_METADATA = "ssdfast.json"  # the extra file inside a .pt2 (torch.export.save(extra_files=...))
ONNX_METADATA = "ssdfast"  # the metadata_props key of an .onnx
# The post-processing's metadata keys are defaults.POLICY_NAMES; topk_per_class may be missing (files
# written before it was stored).
OPTIONAL_POLICY_KEYS = {"topk_per_class"}
PRECISIONS = ("float32", "int8")  # the network's ("precision"; missing in files written before INT8: float32)


class ExportMetadataError(CheckpointError):
    """An exported file whose ssdfast metadata is missing or invalid."""


def output_names(with_nms: bool) -> list[str]:
    return ["boxes", "scores", "labels", "counts"] if with_nms else ["boxes", "scores"]


def describe(
    meta: dict,
    fmt: str,
    *,
    batch: int | None,
    with_nms: bool,
    policy: DetectionPolicy,
    precision: str = "float32",
) -> dict:
    """The metadata stored in a file exported as `fmt` with `policy` from a model with checkpoint metadata
    `meta`; precision: the network's, "float32" or "int8" (the post-processing is float32 in both)."""
    return {
        "format": fmt,
        "precision": precision,
        "model_name": meta["model_name"],
        "num_classes": meta["num_classes"],
        "category_names": meta["category_names"],
        "category_ids": meta.get("category_ids"),
        "with_nms": with_nms,
        **{key: getattr(policy, field) for key, field in POLICY_NAMES.items()},
        "batch": batch or "dynamic",
        "outputs": output_names(with_nms),
        "input": "images float32 [B, 3, 300, 300]: RGB resized to 300x300, (x / 255 - mean) / std with "
        "ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)",
    }


def exported_policy(info: dict) -> DetectionPolicy:
    """The DetectionPolicy a file was exported with, from its validated metadata `info`."""
    return replace(DETECTION_POLICY, **{field: info[key] for key, field in POLICY_NAMES.items() if key in info})


def _is_int(value, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _model_checks(info: dict, head_classes: int | None) -> dict:
    """{key: (ok, what it must be)} for the model's keys (MODEL_RULES), num_classes also against the
    class count of the file's weights when it is known."""
    checks = {key: (ok(info.get(key), info), must) for key, (ok, must) in MODEL_RULES.items()}
    if head_classes is not None and checks["num_classes"][0] and info["num_classes"] != head_classes:
        checks["num_classes"] = (False, f"the class count of its weights' class heads ({head_classes})")
    return checks


def _policy_checks(info: dict) -> dict:
    """{key: (ok, what it must be)} for the post-processing keys, with DetectionPolicy's own ranges; the counts
    also at most the tools' cap (the post-processing allocates [B, K] rows: 10**12 would be tried)."""
    checks = {}
    for key, field in POLICY_NAMES.items():
        ok, must = POLICY_RANGES[field]
        value = info.get(key)
        valid = ok(value)
        if field in ("topk_per_class", "max_detections"):
            valid, must = valid and value <= MAX_DETECTIONS, f"an integer in [1, {MAX_DETECTIONS}]"
        checks[key] = (valid or (key in OPTIONAL_POLICY_KEYS and key not in info), must)
    return checks


def _problems(info: dict, suffix: str, head_classes: int | None):
    """(key, what it must be) for each invalid key of `info`, in a fixed order."""
    fmt = next((f for f in FORMATS.values() if f.name == info.get("format")), None)
    checks = {
        "format": (
            isinstance(info.get("format"), str)
            and info["format"] in EXPORT_FORMATS
            and EXPORT_FORMATS[info["format"]] == suffix,
            f"the format of a {suffix} file",
        ),
        "precision": (
            info.get("precision", "float32") in PRECISIONS
            and (info.get("precision") != "int8" or (fmt is not None and fmt.int8)),
            f"one of {', '.join(PRECISIONS)} (int8 only for a format with INT8)",
        ),
        **_model_checks(info, head_classes),
        "with_nms": (
            isinstance(info.get("with_nms"), bool) and (not info["with_nms"] or fmt is None or fmt.nms_inside),
            "true or false (false for a format without NMS inside)",
        ),
        **_policy_checks(info),
        "batch": (info.get("batch") == "dynamic" or _is_int(info.get("batch")), "'dynamic' or an integer >= 1"),
        "outputs": (info.get("outputs") == output_names(info.get("with_nms") is True), "the outputs with_nms implies"),
    }
    return [(key, must) for key, (ok, must) in checks.items() if not ok]


def validate(path: Path, text: str | None, head_classes: int | None = None) -> dict:
    """The metadata of the exported file `path` from its JSON `text` (None: absent), checked; head_classes:
    the class count of the file's weights (None: not known for this file)."""
    if not text:
        raise ExportMetadataError(f"{path} carries no ssdfast metadata: export it with tools/export.py")
    try:
        info = parse_json(text)
    except ValueError as error:
        raise ExportMetadataError(f"{path}: its ssdfast metadata is not valid JSON ({error})") from error
    if not isinstance(info, dict):
        raise ExportMetadataError(f"{path}: its ssdfast metadata is a {type(info).__name__}, not a JSON object")
    problems = _problems(info, path.suffix.lower(), head_classes)
    if problems:
        key, must = problems[0]
        raise ExportMetadataError(
            f"{path}: its ssdfast metadata key {key!r} must be {must} (found: {found(info, key)}); "
            "export it again with tools/export.py"
        )
    return info
