"""Export (tools/export.py, ssdfast.deploy.export): the ONNX and .pt2 files detect what PyTorch detects.

Both models are trained a few steps on the synthetic set (an untrained SSD gives near-equal scores
everywhere: ties, not a test). SSDLite (conftest's trained_run) goes through the tools end to end
(export, eval's COCO AP of the .pt, .onnx and .pt2); SSD300-ResNet50 is exported in-process and
compared on the same images.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, shared_once, tool
from export import main as export_main  # tools/export.py (pyproject.toml puts tools/ on pytest's path)

from ssdfast.data import build_loader
from ssdfast.data.coco import read_image
from ssdfast.data.synthetic import write_synthetic_coco
from ssdfast.defaults import DETECTION_POLICY, DetectionPolicy
from ssdfast.deploy.deployed import Deployed
from ssdfast.deploy.export import check_against_pytorch, compare_detections, export
from ssdfast.inference import detect, load_detector, to_records
from ssdfast.machinery.checkpoint import save_checkpoint
from ssdfast.models import build_model
from ssdfast.postprocess import postprocess
from ssdfast.training.step import TrainStep

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """24 train and 16 val images (synthetic_coco's 24 and 8, and 8 more): the comparisons run on 16 real images."""
    return shared_once(
        tmp_path_factory, "export_coco", lambda folder: write_synthetic_coco(folder, num_train=24, num_val=16, seed=1)
    )


@pytest.fixture(scope="module")
def val_images(data):
    loader = build_loader(data, "val", train=False, batch_size=16, num_workers=0)
    return next(iter(loader)).to("cpu").images  # [16, 3, 300, 300], normalised


EXPORTS = (("onnx", ".onnx"), ("torch-export", ".pt2"))


@pytest.fixture(scope="session")
def lite(trained_run, tmp_path_factory):
    """SSDLite trained 2 epochs (12 steps) by tools/train.py (conftest's trained_run), exported by
    tools/export.py to .onnx and .pt2: (folder, {format: the export tool's CompletedProcess})."""

    def build(folder):
        (folder / "last.pt").write_bytes((trained_run[0] / "last.pt").read_bytes())
        for fmt, suffix in EXPORTS:
            result = tool("export", "--weights", folder / "last.pt", "--format", fmt, "--output", folder / f"m{suffix}")
            (folder / f"export_{fmt}.stdout").write_text(result.stdout)

    folder = shared_once(tmp_path_factory, "export_lite", build)
    return folder, {
        fmt: subprocess.CompletedProcess([], 0, (folder / f"export_{fmt}.stdout").read_text(), "") for fmt, _ in EXPORTS
    }


@pytest.fixture(scope="session")
def resnet(data, tmp_path_factory):
    """SSD300-ResNet50 trained 2 steps in-process, its BatchNorm statistics then re-estimated in train
    mode (after 2 steps the running statistics are still nearly the initial ones: eval outputs explode)."""
    return shared_once(tmp_path_factory, "export_resnet", lambda folder: train_and_export_resnet(data, folder))


def train_and_export_resnet(data, folder):
    torch.manual_seed(0)
    model = build_model("ssd", num_classes=3)
    loader = build_loader(
        data, "train", train=False, batch_size=4, num_workers=0
    )  # unaugmented: the same weights whatever the augmentation
    step = TrainStep(model.train(), torch.optim.SGD(model.parameters(), lr=5e-4, momentum=0.9))
    batches = [batch.to("cpu") for _, batch in zip(range(2), loader)]  # images normalised
    for batch in batches:
        step(batch.images, batch.boxes, batch.labels)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches below
    with torch.no_grad():
        for batch in batches:
            model(batch.images)
    info = loader.info
    save_checkpoint(
        folder / "last.pt",
        {
            "model": model.state_dict(),
            "model_name": "ssd300_resnet50",
            "num_classes": 3,
            "category_ids": info.category_ids,
            "category_names": info.category_names,
            "epoch": 0,
        },
    )
    model, meta = load_detector(folder / "last.pt")
    for fmt, suffix in EXPORTS:
        export(
            model,
            meta,
            fmt,
            folder / f"m{suffix}",
            batch=None,
            with_nms=True,
            policy=DETECTION_POLICY,  # score 0.05, NMS 0.45, K 200
        )


def pytorch_detections(weights, images):
    model, _ = load_detector(weights)
    with torch.no_grad():
        return postprocess(*model(images), model.anchors, model.anchor_spec.variances)


def files(request, name):
    if name == "ssdlite":
        return request.getfixturevalue("lite")[0]
    return request.getfixturevalue("resnet")


@pytest.mark.parametrize("name", ["ssdlite", "ssd300_resnet50"])
@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_exported_detections_equal_pytorch_on_16_images(request, val_images, name, suffix):
    folder = files(request, name)
    expected = pytorch_detections(folder / "last.pt", val_images)
    assert (expected.counts > 0).sum() >= 14, expected.counts  # real detections on (nearly) every image
    deployed = Deployed(folder / f"m{suffix}")
    assert deployed.meta["model_name"] == name.replace("ssdlite", "ssdlite300_mobilenetv2")
    got = deployed(val_images[:8]), deployed(val_images[8:])
    got = type(expected)(*map(torch.cat, zip(*got)))
    report = compare_detections(expected, got, atol=1e-4, tie=1e-4)
    assert report["ok"], report["problem"]
    assert torch.equal(expected.counts, got.counts)
    assert report["near_ties"] <= 0.01 * report["detections"], report  # ties in score aside: rare


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_one_file_runs_at_batch_1_and_7(lite, val_images, suffix):
    deployed = Deployed(lite[0] / f"m{suffix}")
    assert deployed.meta["batch"] == "dynamic"
    for size in (1, 7):
        outputs = deployed.raw(val_images[:size])
        assert [tuple(o.shape) for o in outputs] == [(size, 200, 4), (size, 200), (size, 200), (size,)]


def test_onnx_graph_has_nms_as_the_standard_operator(lite):
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(lite[0] / "m.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert "NonMaxSuppression" in ops and not any(node.domain not in ("", "ai.onnx") for node in graph.node)
    assert [o.name for o in graph.output] == ["boxes", "scores", "labels", "counts"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis


def test_export_tool_reports_the_check(lite):
    for run in lite[1].values():
        assert "checked against PyTorch" in run.stdout and "max |box diff|" in run.stdout, run.stdout


def test_eval_gives_the_same_ap_for_pt_onnx_and_pt2(lite, data):
    folder, _ = lite
    metrics = {}
    for weights in ("last.pt", "m.onnx", "m.pt2"):
        out = folder / f"det_{weights.replace('.', '_')}.json"
        tool(
            "eval",
            "--data-path",
            data,
            "--weights",
            folder / weights,
            "--batch-size",
            8,
            "--num-workers",
            0,
            "--output",
            out,
        )
        metrics[weights] = json.loads(out.with_name(out.stem + ".metrics.json").read_text())
        metrics[weights]["detections"] = len(json.loads(out.read_text()))
    base = metrics["last.pt"]
    assert base["detections"] > 0 and base["images_evaluated"] == 16
    for weights in ("m.onnx", "m.pt2"):
        assert metrics[weights]["detections"] == base["detections"]
        for key in ("AP", "AP50", "AP75", "AR100"):
            assert abs(metrics[weights][key] - base[key]) <= 1e-4, (weights, key, metrics)


def test_detect_tool_takes_an_onnx_file(lite, data, tmp_path):
    folder, _ = lite
    image = sorted((data / "val2017").glob("*.jpg"))[0]
    tool(
        "detect",
        "--weights",
        folder / "m.onnx",
        "--input",
        image,
        "--output",
        tmp_path / "one.jpg",
        "--score-threshold",
        0.1,
    )
    onnx_dets = json.loads((tmp_path / "one.json").read_text())[str(image)]
    model, meta = load_detector(folder / "last.pt")
    pt_dets = to_records(
        detect(model, [read_image(image)], DetectionPolicy(score_threshold=0.1))[0], meta["category_names"]
    )
    assert len(onnx_dets) == len(pt_dets) > 0
    key = lambda d: (d["score"], d["label"], d["box"])  # noqa: E731
    assert sorted(onnx_dets, key=key) == sorted(pt_dets, key=key)
    lower = tool(
        "detect",
        "--weights",
        folder / "m.onnx",
        "--input",
        image,
        "--output",
        tmp_path / "x.jpg",
        "--score-threshold",
        0.01,
        check=False,
    )
    assert lower.returncode == 1 and "export it again with --score-threshold 0.01" in lower.stderr


def test_pt2_runs_with_only_the_extension(lite, val_images, tmp_path):
    """No ssdfast Python source: torch.ops.load_library of ssdfast/_C*.so, then torch.export.load."""
    folder, _ = lite
    library = next((ROOT / "ssdfast").glob("_C*.so"), None)
    if library is None:
        pytest.skip("ssdfast._C is not built")
    torch.save(val_images[:2], tmp_path / "x.pt")
    script = (
        "import sys, torch\n"
        f"torch.ops.load_library({str(library)!r})\n"
        f"boxes, scores, labels, counts = torch.export.load({str(folder / 'm.pt2')!r}).module()"
        f"(torch.load({str(tmp_path / 'x.pt')!r}))\n"
        "assert 'ssdfast' not in sys.modules\n"
        f"torch.save(counts, {str(tmp_path / 'counts.pt')!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.equal(
        torch.load(tmp_path / "counts.pt"), pytorch_detections(folder / "last.pt", val_images[:2]).counts
    )


def test_check_against_pytorch_catches_a_different_model(lite):
    folder, _ = lite
    model, _ = load_detector(folder / "last.pt")
    with torch.no_grad():
        for head in model.loc:
            head[-1].bias.add_(0.5)  # another model than the one exported: every box moves
    report = check_against_pytorch(folder / "m.onnx", model, Deployed(folder / "m.onnx").meta, [2])
    assert not report["ok"] and "image" in report["problem"]


def test_export_rejects_bad_inputs(lite, tmp_path, capsys):
    """In-process (tools/export.py's main): one `error:` line and exit status 1 for each user error."""
    folder, _ = lite

    def export_tool(*args):
        code = export_main([*map(str, args)])
        return code, capsys.readouterr().err

    (tmp_path / "bad.pt").write_bytes(b"garbage")
    code, err = export_tool("--weights", tmp_path / "bad.pt", "--format", "onnx", "--output", tmp_path / "o.onnx")
    assert code == 1 and "error: cannot read checkpoint" in err
    with pytest.raises(SystemExit) as unknown:
        export_tool("--weights", folder / "last.pt", "--format", "tflite", "--output", tmp_path / "o.tflite")
    assert unknown.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    code, err = export_tool(
        "--weights", folder / "last.pt", "--format", "onnx", "--output", tmp_path / "a_file" / "o.onnx"
    )
    assert code == 1 and "error: folder of the output file" in err and "is not a folder" in err
    code, err = export_tool("--weights", folder / "last.pt", "--format", "onnx", "--output", tmp_path / "o.pt2")
    assert code == 1 and "writes a .onnx file" in err
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(Exception, match="cannot read the ONNX model"):
        load_detector(tmp_path / "bad.onnx")
    (tmp_path / "bad.pt2").write_bytes(b"garbage")
    with pytest.raises(Exception, match="cannot read the torch.export program"):
        load_detector(tmp_path / "bad.pt2")
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary of an export left behind


def test_onnx_counts_below_max_det(lite, val_images, tmp_path):
    """A score threshold inside the graph that leaves about half of the 200 slots empty on some images."""
    folder, _ = lite
    model, meta = load_detector(folder / "last.pt")
    threshold = round(float(pytorch_detections(folder / "last.pt", val_images).scores[:, 100].median()), 3)
    policy = DetectionPolicy(score_threshold=threshold, nms_threshold=0.45, max_detections=200)
    export(model, meta, "onnx", tmp_path / "t.onnx", batch=None, with_nms=True, policy=policy)
    with torch.no_grad():
        expected = postprocess(*model(val_images), model.anchors, model.anchor_spec.variances, policy)
    assert int(expected.counts.min()) < 200 and int(expected.counts.max()) > 0, expected.counts
    got = Deployed(tmp_path / "t.onnx")(val_images)
    report = compare_detections(expected, got)
    assert report["ok"] and report["near_ties"] == 0, report
    assert bool((got.scores[got.scores > 0] > threshold).all()) and int((got.labels > 0).sum()) == int(got.counts.sum())


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torch-export", ".pt2")])
def test_a_file_without_nms_gives_the_same_detections_through_deployed(lite, val_images, tmp_path, fmt, suffix):
    """--no-nms: the file outputs decoded boxes [B, A, 4] and scores [B, A, C]; Deployed runs ssdfast's
    NMS after it, so the detections are PyTorch's."""
    model, meta = load_detector(lite[0] / "last.pt")
    path = tmp_path / f"raw{suffix}"
    export(model, meta, fmt, path, batch=None, with_nms=False, policy=DETECTION_POLICY)
    deployed = Deployed(path)
    expected = pytorch_detections(lite[0] / "last.pt", val_images[:8])
    got = deployed(val_images[:8])
    report = compare_detections(expected, got, atol=1e-4, tie=1e-4)
    assert report["ok"], report["problem"]
    assert torch.equal(expected.counts, got.counts) and int(got.counts.sum()) > 0


def test_the_nms_flags_parse():
    from export import get_args

    common = ["--weights", "w.pt", "--format", "onnx", "--output", "m.onnx"]
    assert get_args(common).with_nms and get_args([*common, "--with-nms"]).with_nms
    assert not get_args([*common, "--no-nms"]).with_nms  # the flag README and --help name


def test_every_list_of_export_formats_comes_from_the_registry():
    """--format's choices, the suffixes ssdfast.load/eval/detect run, the suffix each format writes, and the code
    that writes and opens each file are read from ssdfast/deploy/formats.py: one line per format."""
    import argparse

    import export as export_tool  # tools/export.py

    from ssdfast.defaults import EXPORT_FORMATS
    from ssdfast.deploy import deployed
    from ssdfast.deploy.formats import FORMATS, format_of, function

    assert EXPORT_FORMATS == {name: entry.suffix for name, entry in FORMATS.items()}
    assert set(deployed.SUFFIXES) == {entry.suffix for entry in FORMATS.values()}
    captured = {}
    original = argparse.ArgumentParser.parse_args

    def catch(self, *args, **kwargs):  # the parser the tool builds, however it builds it
        captured["parser"] = self
        return original(self, *args, **kwargs)

    argparse.ArgumentParser.parse_args = catch
    try:
        export_tool.get_args(["--weights", "w.pt", "--format", "onnx", "--output", "o.onnx"])
    finally:
        argparse.ArgumentParser.parse_args = original
    choices = next(a.choices for a in captured["parser"]._actions if a.dest == "format")
    assert sorted(choices) == sorted(FORMATS)
    for name, entry in FORMATS.items():
        assert format_of(f"model{entry.suffix.upper()}") is entry and deployed.is_deployed(f"m{entry.suffix}")
        assert callable(function(entry.writer)) and callable(function(entry.opener)), name
    assert format_of("best.pt") is None and not deployed.is_deployed("best.pt")
