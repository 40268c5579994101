"""Exported files a user hands us (issue 24, items 1, 9, 10): a crafted .pt2 runs no code, a corrupted or
edited .onnx is refused with a named error, and the export self-check tells tie-breaking from real
differences.

One small model serves all: SSDLite whose class heads output constants (weights 0, random biases), so
every location of a feature map gets exactly the same scores: the exact ties of a young model, on which
ONNX Runtime and PyTorch keep different boxes.
"""

import contextlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from test_tools import tool

from ssdfast.defaults import DETECTION_POLICY
from ssdfast.deploy.deployed import Deployed
from ssdfast.deploy.export import check_against_pytorch, export
from ssdfast.models import build_model
from ssdfast.postprocess import postprocess

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
META = {
    "model_name": "ssdlite300_mobilenetv2",
    "num_classes": 3,
    "category_names": ["a", "b", "c"],
    "category_ids": [1, 2, 3],
}


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """(folder with m.onnx and m.pt2, the model, the metadata) for the tied-score SSDLite."""
    folder = tmp_path_factory.mktemp("tied")
    torch.manual_seed(0)
    model = build_model("ssdlite", num_classes=3).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for head in model.conf:
            head[-1].weight.zero_()
            head[-1].bias.copy_(torch.randn(head[-1].bias.shape, generator=generator))
    for fmt, suffix in (("onnx", ".onnx"), ("torch-export", ".pt2")):
        info = export(
            model,
            META,
            fmt,
            folder / f"m{suffix}",
            batch=None,
            with_nms=True,
            policy=DETECTION_POLICY,  # score 0.05, NMS 0.45, K 200
        )
    return folder, model, info


class Marker:
    """Unpickling it creates the file `path`: what a crafted model file would do (or worse)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def rewrite_zip(src: Path, dst: Path, change) -> None:
    """Copy the zip `src` to `dst` with each entry's bytes replaced by change(name inside the root, bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, change(name.split("/", 1)[1], zin.read(name)))


def with_opaque_constant(genuine: bytes, marker: Path) -> bytes:
    """`genuine` (a .pt2) with one more constant, an "opaque" one: torch.export.load pickle.loads it."""
    from test_trust_models import rezip

    def change(name, data):
        if name == "data/constants/model_constants_config.json":
            config = json.loads(data)
            config["config"]["hidden"] = {
                "path_name": "opaque_obj_0",
                "is_param": False,
                "use_pickle": True,
                "tensor_meta": None,
            }
            return json.dumps(config).encode()
        return data

    payload = pickle.dumps(Marker(marker), protocol=2)
    return rezip(genuine, change, add=[("data/constants/opaque_obj_0", payload)])


def crafted_pt2(genuine: Path, dst: Path, how: str, marker: Path) -> Path:
    if how == "two_directories":  # zipfile reads the genuine archive, torch's reader the one with the payload
        from test_trust_models import two_directories

        dst.write_bytes(two_directories(genuine.read_bytes(), with_opaque_constant(genuine.read_bytes(), marker)))
        return dst
    payload = pickle.dumps(Marker(marker), protocol=2)
    with zipfile.ZipFile(genuine) as archive:
        root = archive.namelist()[0].split("/")[0]
        config = json.loads(archive.read(f"{root}/data/weights/model_weights_config.json"))
    first = next(iter(config["config"].values()))

    def change(name, data):
        if how == "sample_inputs" and name == "data/sample_inputs/model.pt":
            return payload  # torch.export.load: weights_only=True fails, then falls back to a full pickle
        if how == "pickled_weight" and name == "data/weights/model_weights_config.json":
            first["use_pickle"] = True  # torch.export.load: torch.load(weights_only=False) on the weight
            return json.dumps(config).encode()
        if how == "pickled_weight" and name == f"data/weights/{first['path_name']}":
            return payload
        if how == "file_op" and name == "models/model.json":
            return data.replace(b'"torch.ops.aten.softmax.int"', b'"torch.ops.aten.from_file.default"')
        return data

    rewrite_zip(genuine, dst, change)
    return dst


@pytest.mark.parametrize("how", ["sample_inputs", "pickled_weight", "file_op", "two_directories"])
def test_a_crafted_pt2_is_refused_and_runs_nothing(tied, tmp_path, how):
    import ssdfast
    from ssdfast.deploy.pt2_guard import UnsafePT2Error

    marker = tmp_path / "MARKER"
    bad = crafted_pt2(tied[0] / "m.pt2", tmp_path / "bad.pt2", how, marker)
    for load in (Deployed, ssdfast.load):
        with pytest.raises(UnsafePT2Error, match="is refused"):
            load(bad)
    assert not marker.exists()


def test_the_two_directory_pt2_really_runs_its_payload_in_torch_alone(tied, tmp_path):
    """The oracle for the test above: zipfile sees the genuine archive, torch's reader the payload, and
    torch.export.load unguarded runs it (here: creates a file)."""
    marker = tmp_path / "MARKER"
    bad = crafted_pt2(tied[0] / "m.pt2", tmp_path / "bad.pt2", "two_directories", marker)
    assert zipfile.ZipFile(bad).testzip() is None
    assert not any("opaque" in name for name in zipfile.ZipFile(bad).namelist())
    assert "data/constants/opaque_obj_0" in torch._C.PyTorchFileReader(str(bad)).get_all_records()
    with contextlib.suppress(Exception):  # it fails after the payload ran: a file object is no constant
        torch.export.load(str(bad))
    assert marker.exists()


def test_a_pt2_read_two_ways_under_the_same_names_loads_what_was_checked(tied, tmp_path):
    """Both readings list the same entries; torch's holds the anchors as a pickle that writes the marker.
    torch.export.load alone runs it; ssdfast loads the archive it checked, which detects as the genuine file."""
    from test_trust_models import rezip, two_directories

    marker = tmp_path / "MARKER"

    def pickled_anchors(name, data):
        if name == "data/constants/model_constants_config.json":
            config = json.loads(data)
            config["config"]["model.anchors"]["use_pickle"] = True
            return json.dumps(config).encode()
        return pickle.dumps(Marker(marker), protocol=2) + data if name == "data/constants/tensor_0" else data

    genuine = (tied[0] / "m.pt2").read_bytes()
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(two_directories(genuine, rezip(genuine, pickled_anchors)))
    names = [name.split("/", 1)[1] for name in zipfile.ZipFile(bad).namelist()]
    assert torch._C.PyTorchFileReader(str(bad)).get_all_records() == names
    images = torch.randn(2, 3, 300, 300, generator=torch.Generator().manual_seed(3))
    got, expected = Deployed(bad)(images), Deployed(tied[0] / "m.pt2")(images)
    assert not marker.exists()
    for want, have in zip(expected, got):
        assert torch.equal(want, have)
    with contextlib.suppress(Exception):  # the oracle: torch alone reads the other archive and runs it
        torch.export.load(str(bad))
    assert marker.exists()


def test_a_valid_pt2_that_torch_lists_otherwise_is_refused(tied, tmp_path):
    from test_trust_models import with_odd_name

    from ssdfast.deploy.pt2_guard import UnsafePT2Error

    odd = tmp_path / "odd.pt2"
    odd.write_bytes(with_odd_name((tied[0] / "m.pt2").read_bytes()))
    assert zipfile.ZipFile(odd).testzip() is None
    with pytest.raises(UnsafePT2Error, match="Python's zip reader .* read different archives"):
        Deployed(odd)


@pytest.mark.parametrize(
    "entry,old,new,says",
    [  # a payload in an entry there is not; a tensor larger than its bytes (torch's own error)
        ("model_weights_config.json", b'"path_name": "weight_0"', b'"path_name": "weight_9999"', "weight_9999"),
        ("model_weights_config.json", b'{"as_int": 32}', b'{"as_int": 320000}', "setStorage"),
        ("models/model.json", b'"graph_module"', b'"graph_modul"', "graph_module"),
        ("models/model.json", b"{", b"[", "is not valid JSON"),
    ],
)
def test_a_corrupted_pt2_config_is_one_error_with_no_traceback(tied, tmp_path, capfd, entry, old, new, says):
    from ssdfast.machinery.checkpoint import CheckpointError

    bad = tmp_path / "bad.pt2"
    rewrite_zip(tied[0] / "m.pt2", bad, lambda name, data: data.replace(old, new, 1) if name.endswith(entry) else data)
    capfd.readouterr()
    with pytest.raises(CheckpointError, match=f"{bad}: .*{says}") as error:
        Deployed(bad)
    assert "\n" not in str(error.value)
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out and "deserializing" not in printed.err, printed.err[-2000:]


@pytest.mark.parametrize("how", ["sample_inputs", pytest.param("two_directories", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ["eval", "detect"])
def test_the_tools_refuse_a_crafted_pt2(tied, synthetic_coco, tmp_path, name, how):
    marker = tmp_path / "MARKER"
    bad = crafted_pt2(tied[0] / "m.pt2", tmp_path / "bad.pt2", how, marker)
    image = min((synthetic_coco / "val2017").glob("*.jpg"))
    args = {
        "eval": ["--data-path", synthetic_coco, "--num-workers", 0, "--output", tmp_path / "d.json"],
        "detect": ["--input", image, "--output", tmp_path / "o.jpg"],
    }[name]
    run = tool(name, "--weights", bad, *args, check=False)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 1 and len(errors) == 1 and "is refused" in errors[0], run.stderr[-2000:]
    assert not marker.exists() and not (tmp_path / "o.jpg").exists() and not (tmp_path / "d.json").exists()


def test_a_genuine_pt2_detects_as_the_unguarded_torch_export_load(tied):
    images = torch.randn(3, 3, 300, 300, generator=torch.Generator().manual_seed(2))
    expected = torch.export.load(str(tied[0] / "m.pt2")).module()(images)  # the oracle: torch's own loader
    got = Deployed(tied[0] / "m.pt2")(images)
    assert int(got.counts.sum()) > 0
    for want, have in zip(expected, got):
        assert torch.equal(want, have)


def test_torch_load_cannot_fall_back_to_a_full_pickle_during_the_load(tmp_path):
    from ssdfast.deploy.pt2_guard import _weights_only_everywhere

    marker = tmp_path / "MARKER"
    with _weights_only_everywhere(), pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(pickle.dumps(Marker(marker), protocol=2)), weights_only=False)
    assert not marker.exists() and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def flip_a_byte_inside_the_largest_initializer(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    largest = max(onnx.load(str(src)).graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    at = data.find(largest) + len(largest) // 2
    assert len(largest) > 1000 and at > len(largest) // 2
    data[at] ^= 0x10
    dst.write_bytes(bytes(data))


def test_a_bit_flipped_onnx_is_refused(tied, tmp_path):
    from ssdfast.deploy.onnx_digest import ExportIntegrityError

    flip_a_byte_inside_the_largest_initializer(tied[0] / "m.onnx", tmp_path / "flipped.onnx")
    onnx.checker.check_model(str(tmp_path / "flipped.onnx"))  # still a well-formed ONNX file
    with pytest.raises(ExportIntegrityError, match="not the file that was exported"):
        Deployed(tmp_path / "flipped.onnx")


def edit_onnx_metadata(src: Path, dst: Path, edit, restamp: bool) -> None:
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    info = json.loads(props["ssdfast"])
    edit(info)
    onnx.helper.set_model_props(model, {**props, "ssdfast": json.dumps(info)})
    onnx.save(model, str(dst))
    if restamp:  # the hash recomputed: the metadata check itself is what is tested
        from ssdfast.deploy.onnx_digest import stamp

        stamp(dst)


@pytest.mark.parametrize(
    "key,value",
    [
        ("with_nms", None),
        ("score_threshold", 2.0),
        ("num_classes", "3"),
        ("category_names", ["a"]),
        ("max_det", 0),
        ("num_classes", 10**12),
        ("num_classes", {"num_classes": 2, "category_names": ["a", "b"], "category_ids": [1, 2]}),  # weights: 3
        ("category_ids", [1, 1, 2]),
        ("format", []),
        ("max_det", 10**12),
        ("topk_per_class", 10**12),
        ("model_name", {}),
    ],
)
def test_edited_metadata_gives_a_named_error(tied, tmp_path, key, value):
    from ssdfast.deploy.metadata import ExportMetadataError

    def edit(info):
        if isinstance(value, dict) and key in value:  # several keys, consistent with each other
            info.update(value)
        else:
            info.pop(key) if value is None else info.__setitem__(key, value)

    edit_onnx_metadata(tied[0] / "m.onnx", tmp_path / "m.onnx", edit, restamp=True)
    with pytest.raises(ExportMetadataError, match=f"'{key}' must be"):
        Deployed(tmp_path / "m.onnx")

    def edited(data):
        info = json.loads(data)
        edit(info)
        return json.dumps(info).encode()

    rewrite_zip(
        tied[0] / "m.pt2", tmp_path / "m.pt2", lambda name, data: edited(data) if name == "extra/ssdfast.json" else data
    )
    with pytest.raises(ExportMetadataError, match=f"'{key}' must be"):
        Deployed(tmp_path / "m.pt2")


def test_onnx_metadata_edited_without_a_new_hash_is_refused(tied, tmp_path):
    from ssdfast.deploy.onnx_digest import ExportIntegrityError

    edit_onnx_metadata(
        tied[0] / "m.onnx", tmp_path / "m.onnx", lambda info: info.update(score_threshold=0.5), restamp=False
    )
    with pytest.raises(ExportIntegrityError):
        Deployed(tmp_path / "m.onnx")
    model = onnx.load(str(tied[0] / "m.onnx"))
    onnx.helper.set_model_props(model, {p.key: p.value for p in model.metadata_props if p.key != "ssdfast.sha256"})
    onnx.save(model, str(tmp_path / "unhashed.onnx"))
    with pytest.raises(ExportIntegrityError, match="carries no content hash"):
        Deployed(tmp_path / "unhashed.onnx")


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_the_self_check_passes_a_model_with_tied_scores(tied, suffix):
    folder, model, info = tied
    report = check_against_pytorch(folder / f"m{suffix}", model, info, [1, 3])
    assert report["ok"], report["problem"]
    assert report["images"] == 4 and report["detections"] > 0


def test_ties_really_make_onnx_and_pytorch_choose_differently(tied):
    """Without this, the test above would not be about ties."""
    folder, model, _ = tied
    images = torch.randn(4, 3, 300, 300, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = postprocess(*model(images), model.anchors, model.anchor_spec.variances)
    got = Deployed(folder / "m.onnx")(images)
    assert not torch.equal(expected.counts, got.counts) or not torch.allclose(expected.boxes, got.boxes, atol=1e-4)


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
@pytest.mark.parametrize("change", ["boxes", "nms_threshold", "max_det"])
def test_the_self_check_still_fails_a_real_difference(tied, suffix, change):
    folder, model, info = tied
    if change == "boxes":
        model = build_model("ssdlite", num_classes=3).eval()
        model.load_state_dict(tied[1].state_dict())
        with torch.no_grad():
            for head in model.loc:
                head[-1].bias.add_(0.5)  # another model than the one exported: every box moves
    else:
        info = {**info, change: {"nms_threshold": 0.3, "max_det": 100}[change]}  # not what the file does
    report = check_against_pytorch(folder / f"m{suffix}", model, info, [1])
    assert not report["ok"] and report["problem"].startswith("image ")


def boxes_and_scores(*rows):
    """(boxes [A, 4], scores [A, 1]) from (x1, score) rows: unit-height boxes [x1, 0, x1 + 1, 1]."""
    boxes = torch.tensor([[x, 0.0, x + 1.0, 1.0] for x, _ in rows])
    return boxes, torch.tensor([[s] for _, s in rows])


def problem_keeping(boxes, scores, kept):
    """ssdfast.deploy.nms_check's verdict on keeping the rows `kept` (label 1) of boxes_and_scores' candidates,
    under SSD's policy (score 0.05, NMS 0.45, top 200, K 200)."""
    from ssdfast.deploy.nms_check import nms_problem

    index = torch.tensor(kept, dtype=torch.long)
    labels = torch.ones(len(kept), dtype=torch.long)
    return nms_problem(boxes, scores, boxes[index], scores[index, 0], labels, policy=DETECTION_POLICY)


@pytest.mark.parametrize(
    "kept,valid",
    [
        ([0, 2], True),  # greedy: A keeps, suppresses B; C overlaps only B (dropped), so C stays
        ([1], False),  # B kept but A, stronger, neither kept nor suppressed
        ([0], False),  # C missing: the only box overlapping it enough (B) was dropped
        ([0, 1, 2], False),  # A and B overlap above the threshold
    ],
)
def test_nms_check_on_a_hand_computed_chain(kept, valid):
    """x ranges A = [0, 1], B = [0.25, 1.25], C = [0.55, 1.55] (unit height), scores 0.9, 0.8, 0.7:
    IoU(A, B) = 0.75 / 1.25 = 0.6, IoU(B, C) = 0.7 / 1.3 = 0.54, IoU(A, C) = 0.45 / 1.55 = 0.29; threshold 0.45."""
    problem = problem_keeping(*boxes_and_scores((0.0, 0.9), (0.25, 0.8), (0.55, 0.7)), kept)
    assert (problem is None) == valid, problem


@pytest.mark.parametrize("kept,valid", [([0], True), ([1], True), ([0, 1], False), ([], False)])
def test_nms_check_lets_either_of_two_tied_boxes_win(kept, valid):
    problem = problem_keeping(*boxes_and_scores((0.0, 0.6), (0.1, 0.6)), kept)  # IoU 0.82, the same score
    assert (problem is None) == valid, problem


def test_an_onnx_with_external_data_is_refused_even_with_a_valid_hash(tied, tmp_path, monkeypatch):
    """A weight moved to an external file named relative to nothing: ONNX Runtime, given the bytes, opens it
    from the working folder (the oracle below). ssdfast refuses any external tensor, whatever the hash says."""
    import onnx
    import onnxruntime as ort

    from ssdfast.deploy import onnx_digest
    from ssdfast.machinery.checkpoint import CheckpointError

    model = onnx.load(str(tied[0] / "m.onnx"))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    (tmp_path / "secret.bin").write_bytes(weight.raw_data)
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="secret.bin")
    path = tmp_path / "m.onnx"  # a forger recomputes the hash (as onnx_digest.stamp, external data left out)
    props = {prop.key: prop.value for prop in model.metadata_props}
    onnx.helper.set_model_props(model, {**props, onnx_digest.DIGEST_KEY: onnx_digest._digest(model)})
    onnx.save(model, str(path))
    monkeypatch.chdir(tmp_path)
    ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])  # the oracle: it reads secret.bin
    (tmp_path / "secret.bin").unlink()
    with pytest.raises(Exception, match="secret.bin"):
        ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    with pytest.raises(CheckpointError, match=f"{path} is refused: its tensor .* is stored in an external file"):
        Deployed(path)
