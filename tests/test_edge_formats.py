"""The export formats beyond ONNX and .pt2 (issue 32): INT8 held to COCO AP; OpenVINO and ExecuTorch files as
first-class as .onnx (load, eval, detect, integrity, metadata, containment); TensorRT's parser takes the
exported graph; a missing runtime is one line naming its extra.

The AP check needs a model with real AP, which a test cannot train on 2 CPU cores. So the oracle is the
float model itself: the validation split's ground truth is the float model's own confident detections
(``pseudo_labelled``), on which the float model scores a high AP (pycocotools); a file that detects
otherwise loses it. Calibration on blank images (every activation range collapses) must be refused with
both APs in the error line. openvino, nncf and executorch are optional extras: their tests skip without them.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_export
from conftest import ROOT, shared_once, tool
from PIL import Image

from ssdfast.deploy import stamped_digest
from ssdfast.deploy.formats import FORMATS, format_of, missing
from ssdfast.deploy.onnx_digest import ExportIntegrityError
from ssdfast.machinery.checkpoint import CheckpointError

TRT_OPERATORS = ROOT / "tests" / "tensorrt_onnx_operators.txt"
NEW_FORMATS = ["openvino", "executorch"]
float_exports = test_export.lite  # the fixture: test_export.py's float .onnx and .pt2 of SSDLite, built once


def installed(name: str):
    """Skip (with the line a user would see) when the exporter or runtime of the format `name` is missing."""
    absent = missing(FORMATS[name], f"exporting to {name}", exporting=True)
    if absent:
        pytest.skip(absent)


# ---- the content hash of .xml + .bin and .pte ----------------------------------------------------


def stamped_pair(folder: Path, xml: bytes = b"<net><rt value='%s'/></net>") -> list[Path]:
    main, companion = folder / "m.xml", folder / "m.bin"
    main.write_bytes(xml.replace(b"%s", stamped_digest.PLACEHOLDER.encode()))
    companion.write_bytes(bytes(range(256)) * 4)
    stamped_digest.stamp([main, companion])
    return [main, companion]


def test_the_stamp_verifies_the_files_as_written_and_refuses_any_changed_byte(tmp_path):
    files = stamped_pair(tmp_path)
    blobs = [f.read_bytes() for f in files]
    stamped_digest.verify(files[0], blobs)
    assert stamped_digest.PLACEHOLDER.encode() not in blobs[0]
    for which in (0, 1):
        for at in range(0, len(blobs[which]), 61):  # bytes all over each file, the stamp's own included
            changed = [bytearray(b) for b in blobs]
            changed[which][at] ^= 0x01
            with pytest.raises(ExportIntegrityError):
                stamped_digest.verify(files[0], [bytes(b) for b in changed])


def test_the_stamp_refuses_a_companion_of_another_export_and_a_missing_or_second_stamp(tmp_path):
    files = stamped_pair(tmp_path)
    blobs = [f.read_bytes() for f in files]
    with pytest.raises(ExportIntegrityError, match="not the file that was exported"):
        stamped_digest.verify(files[0], [blobs[0], blobs[1][::-1]])
    with pytest.raises(ExportIntegrityError, match="no content hash"):
        stamped_digest.verify(files[0], [blobs[0].replace(stamped_digest.MARK, b"ssdfast.sha999:"), blobs[1]])
    with pytest.raises(ExportIntegrityError, match="2 content hash"):
        stamped_digest.verify(files[0], [blobs[0] + blobs[0], blobs[1]])


# ---- what the metadata may say, per format ----------------------------------------------------------


def metadata_of(name: str, **changes) -> str:
    from ssdfast.defaults import DETECTION_POLICY
    from ssdfast.deploy.metadata import describe

    meta = {"model_name": "ssdlite300_mobilenetv2", "num_classes": 2, "category_names": ["a", "b"]}
    with_nms = FORMATS[name].nms_inside
    return json.dumps({**describe(meta, name, batch=None, with_nms=with_nms, policy=DETECTION_POLICY), **changes})


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_validates_its_precision_and_nms_key_by_key(name):
    from ssdfast.deploy.metadata import ExportMetadataError, validate

    path = Path(f"m{FORMATS[name].suffix}")
    assert validate(path, metadata_of(name))["precision"] == "float32"
    if FORMATS[name].int8:
        assert validate(path, metadata_of(name, precision="int8"))["precision"] == "int8"
    else:
        with pytest.raises(ExportMetadataError, match="'precision' must be"):
            validate(path, metadata_of(name, precision="int8"))
    with pytest.raises(ExportMetadataError, match="'precision' must be"):
        validate(path, metadata_of(name, precision="int4"))
    if not FORMATS[name].nms_inside:  # an ExecuTorch file says it holds NMS: ssdfast would skip its own
        with pytest.raises(ExportMetadataError, match="'with_nms' must be"):
            validate(path, metadata_of(name, with_nms=True, outputs=["boxes", "scores", "labels", "counts"]))
    other = next(f for f in FORMATS.values() if f.name != name)
    with pytest.raises(ExportMetadataError, match="'format' must be"):
        validate(Path(f"m{other.suffix}"), metadata_of(name))


# ---- a missing runtime is one line; flags that cannot work ------------------------------------------


@pytest.mark.parametrize("name", [name for name, f in FORMATS.items() if f.runtime])
def test_a_missing_runtime_is_one_line_naming_the_extra(name, tmp_path, monkeypatch):
    from ssdfast.deploy.deployed import Deployed

    fmt = FORMATS[name]
    path = tmp_path / f"m{fmt.suffix}"
    for file in fmt.files(path):
        file.write_bytes(b"not read: the runtime check comes first")
    monkeypatch.setitem(sys.modules, fmt.runtime[-1], None)  # import fails, find_spec says missing
    with pytest.raises(CheckpointError) as error:
        Deployed(path)
    message = str(error.value)
    assert "\n" not in message and f"pip install -e .[{fmt.extra}] --no-build-isolation" in message
    assert fmt.runtime[-1] in message and str(path) in message


@pytest.mark.parametrize("name", [name for name, f in FORMATS.items() if f.runtime])
def test_export_names_the_extra_of_a_missing_exporter_before_any_work(name, tmp_path, monkeypatch, capsys):
    import export as export_tool  # tools/export.py

    fmt = FORMATS[name]
    monkeypatch.setitem(sys.modules, fmt.runtime[0], None)
    out = tmp_path / f"m{fmt.suffix}"
    code = export_tool.main(["--weights", str(tmp_path / "absent.pt"), "--format", name, "--output", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert f"pip install -e .[{fmt.extra}] --no-build-isolation" in lines[0] and fmt.runtime[0] in lines[0]
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["detect", "eval"])
def test_the_tools_name_the_extra_of_a_missing_runtime(name, synthetic_coco, tmp_path):
    """openvino hidden from the tool's own process (sys.modules[...] = None: import and find_spec fail)."""
    (tmp_path / "m.xml").write_bytes(b"x")
    (tmp_path / "m.bin").write_bytes(b"x")
    image = sorted((synthetic_coco / "val2017").glob("*.jpg"))[0]
    args = {
        "detect": ["--weights", tmp_path / "m.xml", "--input", image, "--output", tmp_path / "o.jpg"],
        "eval": ["--weights", tmp_path / "m.xml", "--data-path", synthetic_coco, "--output", tmp_path / "d.json"],
    }[name]
    code = (
        "import runpy, sys; sys.modules['openvino'] = None; "
        f"sys.argv = [{str(ROOT / 'tools' / name) + '.py'!r}] + sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(lines) == 1 and "pip install -e .[openvino] --no-build-isolation" in lines[0], result.stderr[-2000:]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--format", "torch-export", "--output", "m.pt2", "--int8", "--data-path", "d"], "no INT8 variant"),
        (["--format", "onnx", "--output", "m.onnx", "--int8"], "--int8 needs --data-path"),
        (["--format", "executorch", "--output", "m.pte", "--batch", "32"], "at most 16"),
        (["--format", "openvino", "--output", "m.onnx"], "writes a .xml file"),
    ],
)
def test_export_flags_that_cannot_work_are_refused_before_any_work(flags, message, tmp_path, monkeypatch):
    import export as export_tool

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        export_tool.check_args(export_tool.get_args(["--weights", "w.pt", *flags]))


def test_an_openvino_export_never_replaces_a_bin_ssdfast_did_not_write(tmp_path, monkeypatch):
    """The .bin is an output like the .xml: a user's file of that name is refused (check_outputs)."""
    import export as export_tool

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.bin").write_bytes(b"a user's weights")
    with pytest.raises(ValueError, match=r"m\.bin exists and was not written by ssdfast"):
        export_tool.check_args(export_tool.get_args(["--weights", "w.pt", "--format", "openvino", "--output", "m.xml"]))
    (tmp_path / "w.bin").write_bytes(b"the weights' own .bin")  # and eval's outputs never replace an input's
    from ssdfast.machinery.outputs import check_outputs, run_inputs

    (tmp_path / "w.xml").write_bytes(b"x")
    with pytest.raises(ValueError, match="would overwrite the weights"):
        check_outputs([("detections file", tmp_path / "w.bin")], **run_inputs(weights=[tmp_path / "w.xml"]))


def test_the_files_of_one_model_are_claimed_and_replaced_together(tmp_path):
    """atomic_outputs: both files in ssdfast's ledger (a rerun may replace them), none left by a failure."""
    from ssdfast.machinery.outputs import atomic_outputs, check_outputs, is_own

    paths = [tmp_path / "m.xml", tmp_path / "m.bin"]
    with atomic_outputs(paths, "exported model") as partial:
        assert partial[1] == partial[0].with_suffix(".bin") and partial[0].suffix == ".xml"
        partial[0].write_text("graph")
        partial[1].write_text("weights")
    assert [p.read_text() for p in paths] == ["graph", "weights"] and all(is_own(p) for p in paths)
    check_outputs([("output file", p) for p in paths])  # a rerun may replace them
    with pytest.raises(RuntimeError, match="check failed"), atomic_outputs(paths, "exported model") as partial:
        partial[0].write_text("new graph")
        partial[1].write_text("new weights")
        raise RuntimeError("check failed")
    assert [p.read_text() for p in paths] == ["graph", "weights"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ssdfast-outputs.jsonl", "m.bin", "m.xml"]


# ---- hostile OpenVINO files: containment, not an IR (no export needed) -------------------------------


def test_an_openvino_bin_must_be_the_regular_file_beside_it(tmp_path):
    pytest.importorskip("openvino")
    from ssdfast.deploy.deployed import Deployed

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"not the model's")
    folder = tmp_path / "model"
    folder.mkdir()
    stamped_pair(folder)
    (folder / "m.bin").unlink()
    with pytest.raises(CheckpointError, match=r"needs m\.bin beside it, a regular file \(not a link\)") as error:
        Deployed(folder / "m.xml")
    assert "\n" not in str(error.value)
    (folder / "m.bin").symlink_to(outside / "secret.bin")
    with pytest.raises(CheckpointError, match=r"needs m\.bin beside it, a regular file \(not a link\)"):
        Deployed(folder / "m.xml")


@pytest.mark.parametrize(
    "xml",
    [
        b'<?xml version="1.0"?><!DOCTYPE net [<!ENTITY e SYSTEM "file:///etc/passwd">]><net>&e;%s</net>',
        b"\x08\x07\x12\x04onnx: another frontend's model, not an IR %s",
    ],
    ids=["doctype", "not-xml"],
)
def test_an_xml_that_is_not_an_ir_is_refused_even_with_a_valid_hash(xml, tmp_path):
    pytest.importorskip("openvino")
    from ssdfast.deploy.deployed import Deployed

    files = stamped_pair(tmp_path, xml)
    with pytest.raises(CheckpointError, match="is not an OpenVINO IR as ssdfast writes it"):
        Deployed(files[0])


# ---- INT8: the AP check (ONNX Runtime runs in CI; OpenVINO and ExecuTorch where installed) ------------


def pseudo_labelled(folder: Path, weights: Path, source: Path, blank_train: bool) -> Path:
    """A COCO-layout set at `folder`: the train split of `source` (its images blanked if blank_train),
    and its val images labelled with the detections of `weights` scoring above 0.2 (at most 5 per image),
    as tools/eval.py computes them: the path the export's AP check takes, so that the float model's AP on
    its own labels is near 1 whatever the young model detects."""
    for split in ("train", "val"):
        (folder / f"{split}2017").mkdir(parents=True)
        for image in sorted((source / f"{split}2017").glob("*.jpg")):
            target = folder / f"{split}2017" / image.name
            if blank_train and split == "train":
                Image.new("RGB", Image.open(image).size, (0, 0, 0)).save(target)
            else:
                target.write_bytes(image.read_bytes())
    (folder / "annotations").mkdir()
    train = (source / "annotations/instances_train2017.json").read_text()
    (folder / "annotations/instances_train2017.json").write_text(train)
    detections = folder.parent / "float_detections.json"
    tool("eval", "--weights", weights, "--data-path", source, "--output", detections, "--num-workers", 0)
    kept = {}
    for det in sorted(json.loads(detections.read_text()), key=lambda det: -det["score"]):
        if det["score"] > 0.2 and len(kept.setdefault(det["image_id"], [])) < 5:
            kept[det["image_id"]].append(det)
    val = json.loads((source / "annotations/instances_val2017.json").read_text())
    annotations = [
        {
            "id": n,
            "image_id": det["image_id"],
            "category_id": det["category_id"],
            "bbox": det["bbox"],
            "area": det["bbox"][2] * det["bbox"][3],
            "iscrowd": 0,
        }
        for n, det in enumerate((det for dets in kept.values() for det in dets), 1)
    ]
    assert len(kept) == len(val["images"]), "the float model must detect something on every image"
    (folder / "annotations/instances_val2017.json").write_text(json.dumps({**val, "annotations": annotations}))
    return folder


@pytest.fixture(scope="module")
def int8_sets(trained_run, synthetic_coco, tmp_path_factory):
    """(weights, the pseudo-labelled set, the same with blank training images)."""
    weights = trained_run[0] / "last.pt"
    sets = [
        shared_once(
            tmp_path_factory, f"int8_{kind}", lambda f, b=blank: pseudo_labelled(f / "d", weights, synthetic_coco, b)
        )
        for kind, blank in (("good", False), ("blank", True))
    ]
    return weights, sets[0] / "d", sets[1] / "d"


@pytest.fixture(scope="module")
def int8_exported(int8_sets, tmp_path_factory):
    """int8_exported(name): (the INT8 file tools/export.py wrote from the good set, its stdout), built once."""
    weights, good, _ = int8_sets

    def build(folder, name):
        out = folder / f"m{FORMATS[name].suffix}"
        result = tool(
            "export", "--weights", weights, "--format", name, "--int8", "--data-path", good, "--output", out,
            "--max-ap-drop", 100, "--calib-images", 8,
        )  # fmt: skip
        (folder / "stdout.txt").write_text(result.stdout)

    def get(name):
        installed(name)
        folder = shared_once(tmp_path_factory, f"int8_{name}", lambda f: build(f, name))
        return folder / f"m{FORMATS[name].suffix}", (folder / "stdout.txt").read_text()

    return get


@pytest.mark.slow
def test_onnx_int8_is_refused_when_its_calibration_is_blank(int8_sets, tmp_path):
    weights, _, blank = int8_sets
    out = tmp_path / "m.onnx"
    result = tool(
        "export", "--weights", weights, "--format", "onnx", "--int8", "--data-path", blank, "--output", out,
        "--calib-images", 8, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "more than --max-ap-drop 1.0" in lines[0], result.stderr
    ap_int8, ap_float = map(float, re.search(r"AP is ([0-9.]+) against the float model's ([0-9.]+)", lines[0]).groups())
    assert ap_float >= 0.3 and ap_float - ap_int8 > 0.01, lines  # the oracle works, and blank calibration breaks it
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing kept, no temporary left


@pytest.mark.slow
@pytest.mark.parametrize("name", ["onnx", "openvino", "executorch"])
def test_int8_exports_report_their_ap_and_eval_gives_the_same(int8_exported, int8_sets, name, tmp_path):
    from ssdfast.deploy.deployed import Deployed

    _, good, _ = int8_sets
    path, stdout = int8_exported(name)
    reported = re.search(r"COCO AP ([0-9.]+) \(INT8\) against ([0-9.]+) .* calibrated on 8 training images", stdout)
    assert reported, stdout
    ap_int8, ap_float = map(float, reported.groups())
    assert ap_float >= 0.3 and ap_int8 > 0.5 * ap_float, stdout  # quantized, not broken
    assert Deployed(path).meta["precision"] == "int8"
    tool("eval", "--data-path", good, "--weights", path, "--output", tmp_path / "d.json", "--num-workers", 0)
    metrics = json.loads((tmp_path / "d.metrics.json").read_text())
    assert abs(metrics["AP"] - ap_int8) <= 1e-4, (metrics["AP"], ap_int8)


@pytest.mark.slow
def test_int8_onnx_quantizes_the_network_and_leaves_decode_and_nms_float(int8_exported):
    onnx = pytest.importorskip("onnx")
    path, _ = int8_exported("onnx")
    graph = onnx.load(str(path)).graph
    producers = {output: node for node in graph.node for output in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(producers[n.input[0]].op_type == "DequantizeLinear" for n in convs)  # int8 inputs
    assert all(producers[n.input[1]].op_type == "DequantizeLinear" for n in convs)  # and int8 weights
    post = [n for n in graph.node if n.op_type in ("Exp", "Softmax", "NonMaxSuppression", "TopK")]
    assert {n.op_type for n in post} == {"Exp", "Softmax", "NonMaxSuppression", "TopK"}
    for node in post:  # decode, scores, NMS: computed in float32, their results never requantized
        assert not [c for out in node.output for c in consumers.get(out, []) if c.op_type == "QuantizeLinear"]
    assert all(producers[output.name].op_type != "DequantizeLinear" for output in graph.output)


@pytest.mark.slow
def test_int8_openvino_quantizes_every_convolution_and_leaves_decode_and_nms_float(int8_exported):
    """Read back with OpenVINO itself: NNCF's INT8 IR feeds every convolution a FakeQuantize'd input and
    weights stored as int8 constants; no post-processing op reads a FakeQuantize."""
    ov = pytest.importorskip("openvino")
    path, _ = int8_exported("openvino")
    ops = list(ov.Core().read_model(str(path)).get_ordered_ops())

    def producer(op, index):
        return op.input_value(index).get_node()

    def stored_as_int8(node, depth=4):  # weights: Constant(i8) -> Convert -> [Subtract] -> Multiply [-> Reshape]
        if node.get_type_name() == "Constant":
            return node.get_output_element_type(0) == ov.Type.i8
        inputs = [producer(node, i) for i in range(node.get_input_size())]
        return depth > 0 and any(stored_as_int8(n, depth - 1) for n in inputs)

    convs = [op for op in ops if op.get_type_name() in ("Convolution", "GroupConvolution")]
    assert len(convs) == 88, len(convs)  # SSDLite: backbone, extra blocks and both heads' 24 convolutions
    assert all(producer(op, 0).get_type_name() == "FakeQuantize" for op in convs)  # int8 inputs
    assert all(stored_as_int8(producer(op, 1)) for op in convs)  # and int8 weights
    post = [op for op in ops if op.get_type_name() in ("Exp", "Softmax", "NonMaxSuppression", "TopK")]
    assert {op.get_type_name() for op in post} == {"Exp", "Softmax", "NonMaxSuppression", "TopK"}
    for op in post:  # decode, scores, NMS: computed in float32 from float inputs
        assert all(producer(op, i).get_type_name() != "FakeQuantize" for i in range(op.get_input_size()))


# ---- OpenVINO and ExecuTorch files (float): export, load, eval, detect; hostile copies ----------------


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """exported(name): a folder with the trained SSDLite (last.pt) and its float export by tools/export.py
    to the format `name` (its stdout in stdout.txt), built once per format."""

    def build(folder, name):
        (folder / "last.pt").write_bytes((trained_run[0] / "last.pt").read_bytes())
        out = folder / f"m{FORMATS[name].suffix}"
        result = tool("export", "--weights", folder / "last.pt", "--format", name, "--output", out)
        (folder / "stdout.txt").write_text(result.stdout)

    def get(name):
        installed(name)
        return shared_once(tmp_path_factory, f"edge_{name}", lambda folder: build(folder, name))

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_FORMATS)
def test_each_format_exports_loads_evaluates_and_detects_as_its_checkpoint(exported, synthetic_coco, name, tmp_path):
    import ssdfast

    folder = exported(name)
    fmt = FORMATS[name]
    path = folder / f"m{fmt.suffix}"
    assert "checked against PyTorch" in (folder / "stdout.txt").read_text()
    assert all(f.is_file() for f in fmt.files(path))
    image = sorted((synthetic_coco / "val2017").glob("*.jpg"))[0]
    from_file = ssdfast.load(path, device="cpu", score_threshold=0.05).predict(image)[0]
    from_pt = ssdfast.load(folder / "last.pt", device="cpu", score_threshold=0.05).predict(image)[0]
    assert len(from_file.scores) == len(from_pt.scores) > 0
    assert np.allclose(np.sort(from_file.scores), np.sort(from_pt.scores), atol=1e-4)
    aps = {}
    for weights in (folder / "last.pt", path):
        out = tmp_path / f"{weights.suffix[1:]}.json"
        tool("eval", "--data-path", synthetic_coco, "--weights", weights, "--output", out, "--num-workers", 0)
        aps[weights.suffix] = json.loads(out.with_name(f"{out.stem}.metrics.json").read_text())
    assert all(abs(aps[".pt"][key] - aps[fmt.suffix][key]) <= 1e-4 for key in ("AP", "AP50")), aps
    runs = {}
    for weights in (folder / "last.pt", path):
        out = tmp_path / f"{weights.suffix[1:]}.jpg"
        tool("detect", "--weights", weights, "--input", image, "--output", out, "--score-threshold", 0.1)
        runs[weights.suffix] = json.loads(out.with_suffix(".json").read_text())[str(image)]
    mine, theirs = runs[fmt.suffix], runs[".pt"]
    assert [d["label"] for d in mine] == [d["label"] for d in theirs]
    assert np.allclose([d["box"] for d in mine], [d["box"] for d in theirs], atol=0.05) if mine else True


def copy_artifact(src: Path, dst: Path) -> Path:
    fmt = format_of(src)
    for a, b in zip(fmt.files(src), fmt.files(dst)):
        b.write_bytes(a.read_bytes())
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_FORMATS)
def test_a_changed_byte_in_any_file_of_each_format_is_refused(exported, name, tmp_path):
    from ssdfast.deploy.deployed import Deployed

    folder, fmt = exported(name), FORMATS[name]
    for k in range(len(fmt.files(folder / f"m{fmt.suffix}"))):  # the .xml and its .bin; the .pte
        path = copy_artifact(folder / f"m{fmt.suffix}", tmp_path / f"c{k}{fmt.suffix}")
        copy = fmt.files(path)[k]
        data = bytearray(copy.read_bytes())
        data[len(data) * 2 // 3] ^= 0x10
        copy.write_bytes(bytes(data))
        with pytest.raises(ExportIntegrityError, match="not the file that was exported"):
            Deployed(path)


def restamped(path: Path, edit) -> None:
    """Edit the metadata JSON of the file `path` in place (same length), then recompute its hash: the
    metadata check itself is what is tested (the hash detects corruption, not a forger)."""
    files = format_of(path).files(path)
    data = files[0].read_bytes()
    stamp = stamped_digest._STAMP.search(data)
    data = data[: stamp.start()] + stamped_digest.PLACEHOLDER.encode() + data[stamp.end() :]
    edited = edit(data)
    assert len(edited) == len(data) and edited != data
    files[0].write_bytes(edited)
    stamped_digest.stamp(files)


EDITS = {  # same-length edits of the JSON text as it appears in each file (the .xml escapes its quotes)
    "with_nms": ('"with_nms": false', '"with_nms": 12345'),
    "score_threshold": ('"score_threshold": 0.05', '"score_threshold": 2.00'),
    "num_classes": ('"num_classes": 3', '"num_classes": 4'),  # against the class heads of its weights
    "precision": ('"precision": "float32"', '"precision": "float64"'),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_FORMATS)
def test_edited_metadata_of_each_format_gives_a_named_error(exported, name, tmp_path):
    from ssdfast.deploy.deployed import Deployed
    from ssdfast.deploy.metadata import ExportMetadataError

    folder, fmt = exported(name), FORMATS[name]
    quote = "&quot;" if name == "openvino" else '"'
    for key, (before, after) in EDITS.items():
        if key == "with_nms" and fmt.nms_inside:  # exported with NMS
            before, after = '"with_nms": true', '"with_nms": 1234'
        path = copy_artifact(folder / f"m{fmt.suffix}", tmp_path / f"{key}{fmt.suffix}")

        def edit(data: bytes, old=before, new=after) -> bytes:
            old, new = (s.replace('"', quote).encode() for s in (old, new))
            assert data.count(old) == 1, (old, data.count(old))
            return data.replace(old, new)

        restamped(path, edit)
        with pytest.raises(ExportMetadataError, match=f"'{key}' must be"):
            Deployed(path)


# ---- TensorRT -------------------------------------------------------------------------------------


def tensorrt_operators() -> set[str]:
    lines = [line.split("\t")[0] for line in TRT_OPERATORS.read_text().splitlines() if line and line[0] != "#"]
    assert len(lines) > 100 and "Conv" in lines  # the parser's matrix, not a stub
    return set(lines)


def test_the_tensorrt_list_names_its_source_and_version():
    head = TRT_OPERATORS.read_text()
    assert "github.com/onnx/onnx-tensorrt/blob/" in head and "docs/operators.md" in head and "TensorRT 10" in head
    assert {"NonMaxSuppression", "QuantizeLinear", "DequantizeLinear"} <= tensorrt_operators()


@pytest.mark.slow
def test_the_exported_onnx_uses_only_operators_tensorrt_parses(float_exports):
    """The float .onnx with NMS inside (the one docs/deploy.md gives trtexec), as test_export.py exports it."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(float_exports[0] / "m.onnx"))
    used = {node.op_type for node in model.graph.node}
    assert {"Conv", "Exp", "Softmax", "TopK", "NonMaxSuppression"} <= used  # the network, decode and NMS
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert used - tensorrt_operators() == set()
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} <= set(range(9, 21))
