"""Model shapes, parameter counts, memory formats, autocast, compile, gradient into the backbone."""

import pytest
import torch

from ssdfast.models import build_model, canonical_name


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"ssd": build_model("ssd").eval(), "ssdlite": build_model("ssdlite").eval()}


def test_parameter_counts(models):
    assert sum(p.numel() for p in models["ssd"].parameters()) == 22_894_902  # the older implementation's count
    assert (
        sum(p.numel() for p in models["ssdlite"].parameters()) == 4_451_764
    )  # the older implementation's minus its unused head


@pytest.mark.parametrize("name,anchors", [("ssd", 8732), ("ssdlite", 3000)])
@pytest.mark.parametrize("batch", [1, 4])
def test_forward_shapes_and_channels_last(models, name, anchors, batch):
    model = models[name]
    x = torch.randn(batch, 3, 300, 300)
    with torch.no_grad():
        locs, confs = model(x)
        assert locs.shape == (batch, anchors, 4) and confs.shape == (batch, anchors, 81)
        cl_locs, cl_confs = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(cl_locs, locs, rtol=1e-3, atol=1e-3)  # other conv algorithms: other summation order
    torch.testing.assert_close(cl_confs, confs, rtol=1e-3, atol=1e-3)


def test_any_number_of_classes_and_autocast():
    model = build_model("ssdlite300_mobilenetv2", num_classes=3).eval()
    x = torch.randn(2, 3, 300, 300)
    with torch.no_grad():
        locs, confs = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf_locs, bf_confs = model(x)
    assert confs.shape == (2, 3000, 4) and bf_confs.dtype == torch.bfloat16
    torch.testing.assert_close(bf_confs.float(), confs, rtol=0.1, atol=0.15)


def test_torch_compile(models):
    model = build_model("ssdlite", num_classes=5).eval()
    x = torch.randn(2, 3, 300, 300)
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        for got, want in zip(compiled(x), model(x)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_ssdlite_19x19_head_passes_gradient_into_backbone():
    model = build_model("ssdlite", num_classes=2)
    locs, confs = model(torch.randn(2, 3, 300, 300))  # batch 2: BatchNorm on the 1x1 map needs > 1 value
    (confs[:, : 19 * 19 * 6].sum() + locs[:, : 19 * 19 * 6].sum()).backward()  # only the first head's anchors
    early = model.feature_extractor.feature_extractor[10]  # a block before the 19x19 tap
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in early.parameters())


def test_names_and_backbone_weight_errors(tmp_path, monkeypatch):
    assert canonical_name("ssd") == "ssd300_resnet50" and canonical_name("ssdlite") == "ssdlite300_mobilenetv2"
    with pytest.raises(ValueError, match="unknown model 'yolo'"):
        build_model("yolo")
    with pytest.raises(FileNotFoundError, match="backbone weights file not found"):
        build_model("ssdlite", backbone_weights=str(tmp_path / "missing.pth"))
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    path = tmp_path / "mnv2.pth"
    reference = mobilenet_v2(weights=None)
    torch.save(reference.state_dict(), path)
    model = build_model("ssdlite", backbone_weights=str(path))
    torch.testing.assert_close(
        model.feature_extractor.feature_extractor[3].conv[0][0].weight, reference.features[3].conv[0][0].weight
    )

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(type(MobileNet_V2_Weights.IMAGENET1K_V1), "get_state_dict", no_network)
    with pytest.raises(RuntimeError, match="--backbone-weights none"):
        build_model("ssdlite", backbone_weights="imagenet")
