"""Model shapes, parameter counts, memory formats, autocast, compile, gradient into the backbone."""

import pytest
import torch

from ssdfast.models import build_model, canonical_name, registry


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


def test_names_and_backbone_weight_errors(tmp_path):
    assert canonical_name("ssd") == "ssd300_resnet50" and canonical_name("ssdlite") == "ssdlite300_mobilenetv2"
    with pytest.raises(ValueError, match="unknown model 'yolo'"):
        build_model("yolo")
    with pytest.raises(FileNotFoundError, match="backbone weights file not found"):
        build_model("ssdlite", backbone_weights=str(tmp_path / "missing.pth"))
    from torchvision.models import mobilenet_v2

    path = tmp_path / "mnv2.pth"
    reference = mobilenet_v2(weights=None)
    torch.save(reference.state_dict(), path)
    model = build_model("ssdlite", backbone_weights=str(path))
    torch.testing.assert_close(
        model.feature_extractor.feature_extractor[3].conv[0][0].weight, reference.features[3].conv[0][0].weight
    )
    # 'imagenet' offline, the download and its checks: tests/test_pretrained.py


# ---------------------------------------------------------------- the registry (ssdfast/models/registry.py)
def test_every_list_of_models_comes_from_the_registry():
    import subprocess
    import sys
    from pathlib import Path

    from ssdfast import defaults
    from ssdfast.models import ALIASES, MODELS

    names = list(registry.MODELS)
    aliases = {alias: entry.name for entry in registry.MODELS.values() for alias in entry.aliases}
    assert MODELS is registry.MODELS and ALIASES == aliases
    assert defaults.MODEL_CHOICES == registry.MODEL_CHOICES == (*aliases, *names)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "tools/train.py", "--help"], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert "--model {" + ",".join(registry.MODEL_CHOICES) + "}" in done.stdout  # train's --model choices
    for choice in registry.MODEL_CHOICES:  # build_model takes exactly the choices
        assert canonical_name(choice) in names
    with pytest.raises(ValueError, match="choose one of: " + ", ".join(sorted(registry.MODEL_CHOICES))):
        canonical_name("ssd512")


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_each_model_is_built_with_its_registry_entry(name, tmp_path):
    """The class, the anchors (checked against the feature maps the network really makes), the signature that
    names the model in a checkpoint without its name, and the ImageNet backbone that fits it."""
    import torchvision

    from ssdfast import anchors
    from ssdfast.machinery.checkpoint import infer_model_name
    from ssdfast.models import model_class
    from ssdfast.models.pretrained import PRETRAINED

    entry = registry.MODELS[name]
    backbone = PRETRAINED[entry.imagenet]
    assert backbone.kind == "backbone"
    classifier = torchvision.models.get_model(backbone.architecture, weights=None)  # what the name's file holds
    torch.save(classifier.state_dict(), tmp_path / "backbone.pth")
    model = build_model(name, num_classes=2, backbone_weights=tmp_path / "backbone.pth").eval()
    first_conv = next(iter(classifier.state_dict().values()))
    assert torch.equal(next(iter(model.feature_extractor.state_dict().values())), first_conv)
    spec = getattr(anchors, entry.anchor_spec)
    assert type(model) is model_class(name) and type(model).__name__ == entry.model_class.split(":")[1]
    assert model.anchor_spec is spec and model.anchors.shape == (spec.num_anchors, 4)
    with torch.no_grad():  # (the forward's anchor count: test_forward_shapes_and_channels_last)
        maps = model.feature_maps(torch.zeros(1, 3, spec.fig_size, spec.fig_size))
    assert [m.shape[-1] for m in maps] == [m.shape[-2] for m in maps] == list(spec.feature_sizes)
    assert infer_model_name(model.state_dict()) == name
    with torch.device("meta"):  # parameter names only: no memory, no init
        others = [build_model(other, num_classes=2).state_dict() for other in registry.MODELS]
    assert sum(entry.signature in keys for keys in others) == 1  # the signature names this model alone


def test_pretrained_detectors_name_registry_models():
    from ssdfast.models.pretrained import PRETRAINED

    detectors = [entry for entry in PRETRAINED.values() if entry.kind == "detector"]
    assert detectors and all(entry.architecture in registry.MODELS for entry in detectors)
    assert {entry.imagenet for entry in registry.MODELS.values()} <= set(PRETRAINED)
