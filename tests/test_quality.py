"""benchmarks/quality.py gives the older implementation the demo's recipe, flag for flag.

The oracle is tools/train.py's own argument parser: what it reads from the demo's command line must be
what benchmarks/older_recipe.py's parser reads from the command quality.py builds for the older code.
(Training the older code needs a clone of it, which the tests do not have.)
"""

import older_recipe  # benchmarks/ and tools/ are on pytest's path (pyproject.toml)
import quality
import train

from ssdfast.training import demo_recipe


def test_older_gets_the_demo_recipe(tmp_path):
    for epochs, seed in ((demo_recipe.EPOCHS, 3), (2, 11)):
        ours = train.get_args(
            demo_recipe.train_command(tmp_path / "data", tmp_path / "model", epochs=epochs, seed=seed)[2:]
        )
        theirs = older_recipe.get_args(quality.older_command(tmp_path / "older", tmp_path / "data", seed, epochs)[2:])
        for field in ("epochs", "batch_size", "lr", "warmup", "multistep", "num_workers", "seed", "data_path"):
            assert getattr(theirs, field) == getattr(ours, field), field
        assert ours.model == "ssdlite" and ours.backbone_weights == "none"  # what older_recipe.py builds
        assert ours.batch_size == demo_recipe.BATCH_SIZE


def test_recipe_flags_reads_multi_value_flags():
    cmd = ["python", "tools/train.py", "--epochs", "8", "--multistep", "4", "6", "--channels-last", "--lr", "0.1"]
    assert quality.recipe_flags(cmd) == {
        "--epochs": ["8"],
        "--multistep": ["4", "6"],
        "--channels-last": [],
        "--lr": ["0.1"],
    }
