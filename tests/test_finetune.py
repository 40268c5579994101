"""Fine-tuning weights onto other categories: what is kept, row by row, against the source model itself."""

import pytest
import torch

from ssdfast.machinery.checkpoint import CheckpointError
from ssdfast.models import build_model
from ssdfast.training.finetune import class_output_layers, transfer_weights


@pytest.mark.parametrize("name", ["ssdlite", "ssd"])
def test_shared_categories_keep_their_rows_and_new_ones_start_fresh(name):
    torch.manual_seed(0)
    source = build_model(name, num_classes=3, backbone_weights="none")
    target = build_model(name, num_classes=2, backbone_weights="none")
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_weights(target, source.state_dict(), ["circle", "square", "star"], ["star", "moon"])
    assert "1 of 2 categories matched by name (star)" in report
    src, got = source.state_dict(), target.state_dict()
    outputs = class_output_layers(got)
    assert outputs and all(k.startswith("conf.") for k in outputs)
    for key in got:
        if key in outputs:
            nd = got[key].shape[0] // 3
            assert torch.equal(got[key][:nd], src[key][:nd])  # background
            assert torch.equal(got[key][nd : 2 * nd], src[key][3 * nd : 4 * nd])  # star: label 3 there, 1 here
            assert torch.equal(got[key][2 * nd :], fresh[key][2 * nd :])  # moon: as initialised
        else:
            assert torch.equal(got[key], src[key]), key  # backbone, extras, box heads, heads' inner layers


def test_the_same_categories_in_another_order_are_reordered():
    torch.manual_seed(1)
    source = build_model("ssdlite", num_classes=2, backbone_weights="none").eval()
    target = build_model("ssdlite", num_classes=2, backbone_weights="none").eval()
    transfer_weights(target, source.state_dict(), ["cat", "dog"], ["dog", "cat"])
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        (loc_s, conf_s), (loc_t, conf_t) = source(x), target(x)
    torch.testing.assert_close(loc_s, loc_t, rtol=0, atol=1e-6)
    # Same logits, labels swapped (a convolution may sum its channels in another order: float noise).
    torch.testing.assert_close(conf_s[..., [0, 2, 1]], conf_t, rtol=0, atol=1e-5)
    assert not torch.allclose(conf_s, conf_t, atol=1e-3)  # and not merely equal because nothing moved


def test_weights_of_another_model_are_refused():
    source = build_model("ssdlite", num_classes=2, backbone_weights="none")
    target = build_model("ssd", num_classes=2, backbone_weights="none")
    with pytest.raises(CheckpointError, match="another model"):
        transfer_weights(target, source.state_dict(), ["a", "b"], ["a", "b"])
