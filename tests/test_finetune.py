"""Fine-tuning weights onto other categories: what is kept, row by row, against the source model itself."""

import json
import warnings

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


# benchmarks/finetune.py: the measurement in docs/training.md ("Fine-tune on a small dataset").


def test_the_benchmark_fine_tunes_with_the_recipe_a_user_gets(tmp_path):
    """Its fine-tune command gives no schedule flag: tools/train.py's own parser and TrainConfig (the oracle)
    must resolve it to the fine-tuning recipe, with no value marked "(given)"."""
    import finetune  # benchmarks/ and tools/ are on pytest's path (pyproject.toml)
    import train

    from ssdfast.training import recipe
    from ssdfast.training.config import TrainConfig

    cmd = finetune.finetune_command(tmp_path / "b", tmp_path / "run", tmp_path / "a.pt", seed=3)
    assert cmd[1] == "tools/train.py"
    config = TrainConfig.from_flags(vars(train.get_args(cmd[2:])))
    schedule = config.schedule
    assert (schedule.epochs, schedule.batch_size, schedule.lr, schedule.warmup) == (
        recipe.FINE_TUNE.epochs,
        recipe.FINE_TUNE.batch_size,
        recipe.FINE_TUNE.lr,
        recipe.FINE_TUNE.warmup,
    )
    assert schedule.multistep == recipe.milestones(recipe.FINE_TUNE.epochs)
    assert config.recipe_line.startswith("recipe: fine-tune") and "(given)" not in config.recipe_line
    assert config.model.weights == str(tmp_path / "a.pt") and config.run.seed == 3


@pytest.mark.parametrize("images, batch", [(128, 8), (130, 8), (64, 32), (5, 8)])
def test_steps_of_counts_the_batches_the_training_loader_gives(images, batch):
    import finetune
    from torch.utils.data import BatchSampler

    from ssdfast.data.sampler import epoch_sampler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer images than a batch: the sampler says so
        sampler, drop_last = epoch_sampler(range(images), "train", True, batch, 0, 1, 0)
    batches = list(BatchSampler(sampler, batch, drop_last))  # what the DataLoader iterates over
    assert finetune.steps_of(3, images, batch) == 3 * len(batches)


def test_the_benchmarks_start_model_keeps_all_but_the_renamed_class_rows(tmp_path):
    """'B before fine-tuning' is A's model with B's categories: every weight kept but the class rows of
    the renamed categories, which start fresh; tools/eval.py's loader reads it with B's names."""
    import finetune

    from ssdfast.inference import load_detector
    from ssdfast.machinery.checkpoint import save_checkpoint

    torch.manual_seed(1)  # not start_checkpoint's seed: the fresh rows must not be the source's own init
    source = build_model("ssdlite", num_classes=3, backbone_weights="none")
    names = ["circle", "square", "triangle"]
    path = tmp_path / "a.pt"
    save_checkpoint(
        path,
        {
            "model": source.state_dict(),
            "model_name": "ssdlite300_mobilenetv2",
            "num_classes": 3,
            "category_names": names,
        },
    )
    data = finetune.second_set(tmp_path / "b", num_train=1, num_val=1)
    start = finetune.start_checkpoint(path, data, tmp_path / "start.pt", seed=0)
    model, meta = load_detector(start)
    assert meta["category_names"] == [finetune.RENAMED[n] for n in names]
    src, got = source.state_dict(), model.state_dict()
    outputs = class_output_layers(got)
    for key in got:
        if key in outputs:
            nd = got[key].shape[0] // 4
            assert torch.equal(got[key][:nd], src[key][:nd])  # background kept
            assert not torch.equal(got[key][nd:], src[key][nd:]), key  # no name shared: fresh rows
        else:
            assert torch.equal(got[key], src[key]), key


def test_the_training_page_shows_the_measured_results_file_as_finetune_py_writes_it():
    """docs/training.md's measured table is generated (benchmarks/finetune.py): the file it names, rendered."""
    import re

    import finetune  # benchmarks/finetune.py (on pytest's path: pyproject.toml)
    from report import fill_between

    page = finetune.DOC.read_text()
    shown = page.split(finetune.DOC_START, 1)[1].split(finetune.DOC_END, 1)[0].strip()
    named = re.match(r"`benchmarks/results/(finetune-[\w.-]+\.json)`", shown)
    assert named, shown[:200]
    results = finetune.RESULTS / named.group(1)
    assert shown == finetune.doc_table(results)
    assert fill_between(page, finetune.DOC_START, finetune.DOC_END, finetune.doc_table(results)) == page
    runs = json.loads(results.read_text())["runs"]
    assert "B fine-tuned from A (recipe defaults)" in runs and "B from scratch (demo recipe)" in runs
