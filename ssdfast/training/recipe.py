"""The training recipe: epochs, batch size, lr, warm-up and the epochs where the lr drops, in one home.

Two recipes, chosen by whether the run starts from a trained detector (--weights):

- COCO: NVIDIA's SSD300 schedule, 65 epochs of 32 images at lr 2.6e-3, x0.1 at epochs 43 and 54.
- fine-tune: a detector trained on other categories adapted to a set of a few hundred images. Batch 8,
  so a small set still gives 16-60 steps an epoch (128-500 images), and 30 epochs, so it gets
  about 500-1,900 steps. Half COCO's lr per image (the linear scaling rule then gives a step a
  quarter of that again at batch 8): the weights start near a solution and the backbone should move
  less than when it learns detection. A 50-step warm-up: the fresh class rows of new categories
  start with large losses, whose first gradients would otherwise jolt the pretrained backbone.

Either way the lr drops x0.1 at the same fractions of the run as COCO's (43/65 and 54/65 of
--epochs), so a shorter run still decays. A flag given on the command line always wins over the
recipe. Without PyTorch: tools/train.py's --help shows these values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

# The flags a recipe sets when they are not given (tools/train.py leaves them None then).
RECIPE_FLAGS = ("epochs", "batch_size", "lr", "warmup", "multistep")
# Where COCO's lr drops (epochs 43 and 54 of 65), as fractions of any run's length.
MILESTONE_FRACTIONS = (Fraction(43, 65), Fraction(54, 65))
MIN_STEPS = 100  # fewer optimizer steps than this rarely train a detector: the run warns


@dataclass(frozen=True)
class Recipe:
    """Default epochs, images per process, lr (for a global batch of 32: training.optimizer.scaled_lr)
    and warm-up iterations; the milestones follow the epochs (milestones())."""

    name: str
    epochs: int
    batch_size: int
    lr: float
    warmup: int


COCO = Recipe("COCO", epochs=65, batch_size=32, lr=2.6e-3, warmup=0)
FINE_TUNE = Recipe("fine-tune (--weights)", epochs=30, batch_size=8, lr=1.3e-3, warmup=50)


def milestones(epochs: int) -> tuple[int, ...]:
    """The epochs where the lr drops x0.1 in a run of `epochs`: 43/65 and 54/65 of it, rounded
    (65 -> 43, 54; 30 -> 20, 25; 12 -> 8, 10)."""
    return tuple(round(epochs * fraction) for fraction in MILESTONE_FRACTIONS)


def choose(given: dict, fine_tune: bool) -> tuple[dict, str]:
    """The recipe's values with the flags `given` (RECIPE_FLAGS -> value, None: not given) on top
    -> (RECIPE_FLAGS -> value, the one line that says what was chosen, "(given)" after a flag's value)."""
    recipe = FINE_TUNE if fine_tune else COCO
    values = {
        name: given[name] if given.get(name) is not None else getattr(recipe, name)
        for name in ("epochs", "batch_size", "lr", "warmup")
    }
    steps = given.get("multistep")
    values["multistep"] = tuple(steps) if steps is not None else milestones(values["epochs"])

    def shown(name: str, text: str) -> str:
        return f"{text} (given)" if given.get(name) is not None else text

    drops = ", ".join(map(str, values["multistep"]))
    line = ", ".join(
        [
            shown("epochs", f"epochs {values['epochs']}"),
            shown("batch_size", f"batch {values['batch_size']}"),
            shown("lr", f"lr {values['lr']:g} for 32 images"),
            shown("warmup", f"warmup {values['warmup']} iterations"),
            shown("multistep", f"lr x0.1 at epochs {drops}" if drops else "no lr drop"),
        ]
    )
    every_flag_given = all(given.get(name) is not None for name in RECIPE_FLAGS)
    return values, f"recipe: {'your own' if every_flag_given else recipe.name}: {line}"


def short_run_warning(epochs: int, steps_per_epoch: int, global_batch: int, images: int) -> str | None:
    """A warning when the whole run takes fewer than MIN_STEPS optimizer steps (with the numbers and
    what to change), else None."""
    steps = epochs * steps_per_epoch
    if steps >= MIN_STEPS:
        return None
    enough = math.ceil(MIN_STEPS / max(steps_per_epoch, 1))
    smaller_batch = ", or a smaller --batch-size" if global_batch > 1 else ""
    return (
        f"warning: this run takes {steps} optimizer steps ({epochs} epochs x {steps_per_epoch} steps of "
        f"{global_batch} images; {images} training images): fewer than about {MIN_STEPS} rarely train a "
        f"detector. Give --epochs {enough} or more{smaller_batch}"
    )
