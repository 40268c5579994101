"""DetectionPolicy (issue 23): one checked value for the post-processing's four settings, built from the
tools' flags in one place and read back from an exported file's metadata under the keys files always had."""

import importlib
import json
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

from ssdfast import flag_types as flags
from ssdfast.defaults import DETECTION_POLICY, DISPLAY_POLICY, DetectionPolicy
from ssdfast.deploy.metadata import ExportMetadataError, describe, exported_policy, validate

META = {"model_name": "ssdlite300_mobilenetv2", "num_classes": 2, "category_names": ["a", "b"]}


def test_the_defaults_are_ssds_and_display_differs_only_in_score():
    assert DETECTION_POLICY == DetectionPolicy(
        score_threshold=0.05, nms_threshold=0.45, topk_per_class=200, max_detections=200
    )
    assert DISPLAY_POLICY == replace(DETECTION_POLICY, score_threshold=0.3)
    with pytest.raises(FrozenInstanceError):
        DETECTION_POLICY.score_threshold = 0.5


@pytest.mark.parametrize(
    "field,value",
    [
        ("score_threshold", 1.0),  # would drop every detection
        ("score_threshold", -0.1),  # ONNX's NMS masks scores with -1: it must stay below the threshold
        ("score_threshold", float("nan")),
        ("score_threshold", "0.3"),
        ("nms_threshold", 0.0),  # would keep one box per class
        ("nms_threshold", 1.01),
        ("topk_per_class", 0),
        ("max_detections", 0),
        ("max_detections", 2.5),
        ("max_detections", True),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(field, value):
    with pytest.raises(ValueError, match=f"^DetectionPolicy: {field} must be ") as error:
        DetectionPolicy(**{field: value})
    assert "\n" not in str(error.value) and repr(value) in str(error.value)
    with pytest.raises(ValueError, match=f"^DetectionPolicy: {field} must be "):
        replace(DETECTION_POLICY, **{field: value})  # replace checks too: no way around the ranges


def test_the_ends_of_the_ranges_are_as_documented():
    DetectionPolicy(score_threshold=0.0, nms_threshold=1.0, topk_per_class=1, max_detections=1)
    DetectionPolicy(score_threshold=0.999, nms_threshold=1e-6)


def parse(tool: str, *argv: str):
    """tools/<tool>.py's parsed command line (tools/ is on pytest's path: pyproject.toml)."""
    return importlib.import_module(tool).get_args(list(argv))


def test_each_tool_builds_its_policy_from_the_flags_it_has():
    weights = ("--weights", "w.pt")
    evaluation = parse("eval", "--data-path", "d", *weights, "--score-threshold", "0.2", "--nms-threshold", "0.5")
    assert flags.detection_policy(evaluation) == DetectionPolicy(score_threshold=0.2, nms_threshold=0.5)
    assert flags.detection_policy(parse("eval", "--data-path", "d", *weights)) == DETECTION_POLICY
    export = parse("export", *weights, "--format", "onnx", "--output", "m.onnx", "--max-det", "50")
    assert flags.detection_policy(export) == replace(DETECTION_POLICY, max_detections=50)
    train = parse("train", "--data-path", "d", "--nms-threshold", "0.6")
    assert flags.detection_policy(train) == replace(DETECTION_POLICY, nms_threshold=0.6)
    # detect's --max-det is cut after --classes: the post-processing keeps its K
    detect = parse("detect", *weights, "--input", "a.jpg", "--output", "b.jpg", "--max-det", "5")
    assert flags.detection_policy(detect, DISPLAY_POLICY, max_det_flag=False) == DISPLAY_POLICY


def test_exported_metadata_keeps_its_keys_and_reads_back_as_the_policy():
    policy = DetectionPolicy(score_threshold=0.25, nms_threshold=0.5, topk_per_class=100, max_detections=50)
    info = describe(META, "onnx", batch=None, with_nms=True, policy=policy)
    assert (info["score_threshold"], info["nms_threshold"], info["max_det"]) == (0.25, 0.5, 50)
    assert exported_policy(validate(Path("m.onnx"), json.dumps(info))) == policy


def test_a_file_exported_before_topk_was_stored_reads_with_ssds_topk():
    info = describe(META, "onnx", batch=None, with_nms=True, policy=DISPLAY_POLICY)
    del info["topk_per_class"]
    policy = exported_policy(validate(Path("old.onnx"), json.dumps(info)))
    assert policy == DISPLAY_POLICY and policy.topk_per_class == DETECTION_POLICY.topk_per_class


def test_a_stored_setting_out_of_range_is_a_named_metadata_error():
    info = describe(META, "onnx", batch=None, with_nms=True, policy=DETECTION_POLICY)
    with pytest.raises(ExportMetadataError, match=r"'topk_per_class' must be an integer in \[1, 100000\]"):
        validate(Path("m.onnx"), json.dumps({**info, "topk_per_class": 0}))
    with pytest.raises(ExportMetadataError, match=r"'nms_threshold' must be a number in \(0, 1\]"):
        validate(Path("m.onnx"), json.dumps({**info, "nms_threshold": 0}))
