"""TrainingRun driven in-process: a stop saves where the epoch stands and a new run continues there to
the weights of an uninterrupted run; best.pt follows the best AP; a stop before any step trains nothing.
The oracle is an uninterrupted run of the same arguments (tests/test_preemption.py does the same
through subprocesses and signals)."""

from pathlib import Path

import pytest
import torch
import train  # tools/train.py (on pytest's path: pyproject.toml): its argument parser makes the runs' arguments
from conftest import resume_args

from ssdfast.machinery.checkpoint import load_checkpoint, save_checkpoint
from ssdfast.machinery.exit_codes import EXIT_DONE, EXIT_STOPPED
from ssdfast.machinery.preemption import StopRequest
from ssdfast.training import run_state as run_state_module
from ssdfast.training.config import TrainConfig
from ssdfast.training.run import TrainingRun
from ssdfast.training.run_log import RunLog


def arguments(data, folder, *extra, epochs=1) -> TrainConfig:
    """A tiny run: conftest's resume_args (SSDLite from scratch, 4 images a step, no evaluation, seed 5) with
    2 steps per epoch, a log line every step and last.pt at epoch ends only; later flags win (argparse)."""
    flags = resume_args(
        data, folder, "--iters-per-epoch", 2, "--log-every", 1, "--checkpoint-every", 0, *extra, epochs=epochs
    )
    return TrainConfig.from_flags(vars(train.get_args([str(flag) for flag in flags])))


class StopsDuringStep(TrainingRun):
    """A run whose stop request arrives during its k-th step (stop_at_step), as a SIGTERM would
    (StopRequest's handler sets `requested`; the loop reads it after the step)."""

    stop_at_step, steps = 0, 0

    def after_step(self, progress):
        self.steps += 1
        if self.steps == self.stop_at_step:
            self.stop_request.requested = "SIGTERM"
        return super().after_step(progress)


def stopping(config: TrainConfig, stop_at_step: int) -> StopsDuringStep:
    run = StopsDuringStep.build(config, StopRequest())
    run.stop_at_step = stop_at_step
    return run


def started(config: TrainConfig) -> TrainingRun:
    """What tools/train.py's main does before train()."""
    return TrainingRun.build(config)


@pytest.fixture(scope="module")
def uninterrupted(synthetic_coco, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    assert started(arguments(synthetic_coco, folder)).train() == EXIT_DONE
    return load_checkpoint(folder / "last.pt")


def test_a_stop_mid_epoch_saves_the_position_and_a_new_run_resumes_to_the_same_weights(
    uninterrupted, synthetic_coco, tmp_path, capsys
):
    args = arguments(synthetic_coco, tmp_path)
    assert stopping(args, stop_at_step=1).train() == EXIT_STOPPED
    assert "stopped (SIGTERM) at epoch 0, iteration 1:" in capsys.readouterr().out
    stopped = load_checkpoint(tmp_path / "last.pt")
    assert stopped["epoch"] == -1 and stopped["position"]["epoch"] == 0 and stopped["position"]["iteration"] == 1
    assert not (tmp_path / "best.pt").exists()

    resumed = started(args)
    assert (resumed.state.start_epoch, resumed.state.resumed_iteration) == (0, 1)
    assert resumed.train() == EXIT_DONE
    out = capsys.readouterr().out
    assert "continuing with iteration 1 (0-based)" in out and "done: checkpoints in" in out
    final = load_checkpoint(tmp_path / "last.pt")
    assert final["epoch"] == 0 and final["position"] is None
    for key, value in uninterrupted["model"].items():
        torch.testing.assert_close(final["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_best_pt_only_when_the_ap_improves_and_before_last_pt(synthetic_coco, tmp_path, monkeypatch):
    written = []
    save = run_state_module.save_checkpoint
    monkeypatch.setattr(
        run_state_module, "save_checkpoint", lambda path, state: (written.append(Path(path).name), save(path, state))
    )
    run = started(arguments(synthetic_coco, tmp_path, epochs=4))
    log_line = run.log.record
    run.log.record = lambda record: (written.append(f"log {record['epoch']}"), log_line(record))
    for epoch, ap in enumerate((0.2, 0.1, 0.3)):
        run.save_epoch(epoch, {"epoch": epoch, "coco/AP": ap})
    run.save_epoch(3, {"epoch": 3})  # not evaluated: no AP, no best.pt
    run.log.close()
    assert written == [
        "best.pt",
        "last.pt",
        "log 0",
        "last.pt",
        "log 1",
        "best.pt",
        "last.pt",
        "log 2",
        "last.pt",
        "log 3",
    ]
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert (best["epoch"], best["best_ap"]) == (2, 0.3) and (last["epoch"], last["best_ap"]) == (3, 0.3)
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 4

    # The best AP survives a restart: a worse epoch after the resume keeps best.pt.
    written.clear()
    again = started(arguments(synthetic_coco, tmp_path, epochs=5))
    assert (again.state.start_epoch, again.state.best_ap) == (4, 0.3)
    again.save_epoch(4, {"epoch": 4, "coco/AP": 0.25})
    again.log.close()
    assert written == ["last.pt"] and load_checkpoint(tmp_path / "best.pt")["epoch"] == 2


def test_a_stop_before_the_first_step_trains_and_saves_nothing(synthetic_coco, tmp_path, capsys):
    run = stopping(arguments(synthetic_coco, tmp_path), stop_at_step=0)
    run.stop_request.requested = "SIGUSR1"  # arrived while loading
    assert run.train() == EXIT_STOPPED
    assert "stopped (SIGUSR1) at the start (nothing trained)" in capsys.readouterr().out
    assert not (tmp_path / "last.pt").exists() and run.steps == 0


def test_a_run_draws_its_batch_predictions_curves_and_pr_plot(synthetic_coco, tmp_path, capsys):
    """train_batch0.jpg (8 augmented images, 4 per row, 300 px each), results.png, pr.png, the val pictures
    and the confusion matrix in the save folder, and the predictions image in TensorBoard's event file."""
    import cv2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tmp_path / "drawn"
    args = arguments(synthetic_coco, folder, "--eval-every", 1, "--eval-batches", 1, "--batch-size", 8)
    assert started(args).train() == EXIT_DONE
    batch0 = cv2.imread(str(folder / "train_batch0.jpg"))
    assert batch0.shape == (600, 1200, 3) and batch0.std() > 10
    for name in ("results.png", "pr.png", "confusion_matrix.png"):
        assert cv2.imread(str(folder / name)) is not None, name
    for name in ("val_batch0_labels.jpg", "val_batch0_pred.jpg"):  # the 4 val images also in TensorBoard
        assert cv2.imread(str(folder / name)).shape == (300, 1200, 3), name
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "val/predictions" in events.Tags()["images"]
    image = events.Images("val/predictions")[0]
    assert image.width == 4 * 300 and image.height == 300


def test_fine_tuning_keeps_the_categories_shared_by_name(synthetic_coco, tmp_path, capsys):
    """A detector trained on the synthetic set, fine-tuned onto a copy whose first category is renamed:
    2 of 3 categories matched, and the run trains."""
    import json
    import shutil

    source = tmp_path / "source"
    assert started(arguments(synthetic_coco, source)).train() == EXIT_DONE
    data = tmp_path / "renamed"
    shutil.copytree(synthetic_coco, data)
    for split in ("train", "val"):
        path = data / "annotations" / f"instances_{split}2017.json"
        coco = json.loads(path.read_text())
        coco["categories"][0]["name"] = "never seen before"
        path.write_text(json.dumps(coco))
    capsys.readouterr()
    tuned = tmp_path / "tuned"
    assert started(arguments(data, tuned, "--weights", source / "last.pt")).train() == EXIT_DONE
    out = capsys.readouterr().out
    assert "class heads: 2 of 3 categories matched by name" in out, out
    # The fine-tuning recipe, told in one line: the flags given win, warm-up and milestones from the recipe.
    assert "recipe: fine-tune (--weights): epochs 1 (given), batch 4 (given), lr 0.05 for 32 images (given), " in out
    assert "warmup 50 iterations, lr x0.1 at epochs 1, 1\n" in out
    wrong_model = arguments(data, tmp_path / "wrong", "--weights", source / "last.pt", "--model", "ssd")
    with pytest.raises(ValueError, match="holds ssdlite300_mobilenetv2, not ssd300_resnet50"):
        started(wrong_model)


def test_a_finished_run_says_so_and_a_resumed_one_lists_its_changed_arguments(synthetic_coco, tmp_path, capsys):
    import json

    folder = tmp_path / "finished"
    assert started(arguments(synthetic_coco, folder)).train() == EXIT_DONE
    assert json.loads((folder / "args.json").read_text())["lr"] == 0.05
    capsys.readouterr()
    before = (folder / "last.pt").read_bytes()
    assert started(arguments(synthetic_coco, folder, "--lr", 0.01)).train() == EXIT_DONE
    out = capsys.readouterr().out
    assert "already finished at epoch 0; nothing to train (raise --epochs or choose a new --save-folder)" in out
    assert "resuming from" not in out  # nothing to resume: only the line above
    assert "--lr 0.01 (was 0.05)" in out and (folder / "last.pt").read_bytes() == before
    assert json.loads((folder / "args.json").read_text())["lr"] == 0.01  # the arguments now in force
    # The changes are told against what last.pt was trained with (lr 0.05), not against args.json.
    assert started(arguments(synthetic_coco, folder, epochs=2)).train() == EXIT_DONE
    out = capsys.readouterr().out
    assert "--epochs 2 (was 1)" in out and "--lr" not in out


def ids_of(loader, epoch: int, start_batch: int = 0, batches: int | None = None) -> list[int]:
    loader.set_epoch(epoch, start_batch=start_batch)
    return [i for n, batch in enumerate(loader) if batches is None or n < batches for i in batch.image_ids.tolist()]


def test_a_new_batch_size_mid_epoch_goes_on_after_the_images_already_trained(synthetic_coco, tmp_path, capsys):
    """Stopped after 3 batches of 2 (6 of the epoch's 24 images), resumed with batches of 4: it goes on at
    batch 1 (after 4 images: 2 are trained again), not at batch 3 (which would skip 6 images)."""
    whole_epoch = ["--iters-per-epoch", 100]
    stopped = stopping(arguments(synthetic_coco, tmp_path, *whole_epoch, "--batch-size", 2), stop_at_step=3)
    assert stopped.train() == EXIT_STOPPED
    resumed = started(arguments(synthetic_coco, tmp_path, *whole_epoch, "--batch-size", 4))
    assert resumed.state.resumed_iteration == 1
    out = capsys.readouterr().out
    assert "it trained 6 images of epoch 0 in batches of 2; in batches of 4 this run goes on after 4 of them" in out
    assert "--batch-size 4 (was 2)" in out
    first, rest = ids_of(stopped.data.train_loader, 0, batches=3), ids_of(resumed.data.train_loader, 0, start_batch=1)
    assert sorted(set(first) | set(rest)) == list(range(1, 25)) and len(first) + len(rest) == 24 + 2
    assert resumed.train() == EXIT_DONE
    # TensorBoard's steps go on from where the stopped run was (step 3), in the new run's steps: 3 + 5 = 8.
    assert load_checkpoint(tmp_path / "last.pt")["global_step"] == 8


def test_a_position_saved_without_its_batch_size_is_counted_in_the_checkpoints_own(synthetic_coco, tmp_path, capsys):
    """A mid-epoch position stores no batch size: the images done are counted in the batch size of the run that
    wrote last.pt (its arguments), not this run's."""
    whole_epoch = ["--iters-per-epoch", 100]
    stopped = stopping(arguments(synthetic_coco, tmp_path, *whole_epoch, "--batch-size", 2), stop_at_step=4)
    assert stopped.train() == EXIT_STOPPED
    state = load_checkpoint(tmp_path / "last.pt")
    state["position"].pop("batch_size", None)  # (not stored: the checkpoint's args give it)
    save_checkpoint(tmp_path / "last.pt", state)
    capsys.readouterr()
    resumed = started(arguments(synthetic_coco, tmp_path, *whole_epoch, "--batch-size", 4))
    assert resumed.state.resumed_iteration == 2  # 4 batches of 2 = 8 images = 2 batches of 4
    assert "it trained 8 images of epoch 0 in batches of 2" in capsys.readouterr().out


def test_resuming_with_another_number_of_processes_warns_also_at_an_epoch_end(synthetic_coco, tmp_path, capsys):
    """A checkpoint written by 2 processes (its stored world) resumed by 1 at an epoch boundary."""
    assert started(arguments(synthetic_coco, tmp_path)).train() == EXIT_DONE
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["world"] == 1 and state["position"] is None
    save_checkpoint(tmp_path / "last.pt", {**state, "world": 2})
    capsys.readouterr()
    started(arguments(synthetic_coco, tmp_path, epochs=2))
    assert "was written by 2 processes, this run has 1: the global batch, lr and data order change" in (
        capsys.readouterr().out
    )


def test_no_resume_sets_the_previous_run_aside_instead_of_overwriting_it(synthetic_coco, tmp_path, capsys):
    fresh = tmp_path / "fresh"  # nothing to set aside: no folder, no message (its empty tensorboard/ is no run)
    started(arguments(synthetic_coco, fresh, "--no-resume"))
    assert not list(fresh.glob("previous_run_*")) and "--no-resume:" not in capsys.readouterr().out
    assert started(arguments(synthetic_coco, tmp_path, "--keep-checkpoints", 1)).train() == EXIT_DONE
    before = {name: (tmp_path / name).read_bytes() for name in ("last.pt", "epoch_000.pt", "log.jsonl", "args.json")}
    assert started(arguments(synthetic_coco, tmp_path, "--no-resume", "--lr", 0.02)).train() == EXIT_DONE
    aside = list(tmp_path.glob("previous_run_*"))
    assert (
        len(aside) == 1 and f"the previous run's files in {tmp_path} are now in {aside[0]}" in capsys.readouterr().out
    )
    assert {name: (aside[0] / name).read_bytes() for name in before} == before
    assert load_checkpoint(tmp_path / "last.pt")["args"]["lr"] == 0.02  # the new run's, beside none of the old files
    # A log of its own (same recipe, as many lines), not appended to the old run's.
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == len(before["log.jsonl"].decode().splitlines())


def test_the_tensorboard_steps_go_on_from_the_resumed_step():
    log = RunLog(steps_per_epoch=5, resumed_at=12, start=(2, 1))  # 12: where a run with other batches stopped
    assert (log.step(2, 1), log.step(2, 4), log.step(3, 0)) == (12, 15, 16)
    assert RunLog(steps_per_epoch=5, resumed_at=11, start=(2, 1)).step(3, 0) == 15  # unchanged: epoch x 5 + it


# --- the recipe (ssdfast/training/recipe.py) and TrainConfig, from the command line ------------------------


def config_of(*flags) -> TrainConfig:
    return TrainConfig.from_flags(vars(train.get_args(["--data-path", "d", *map(str, flags)])))


def test_the_lr_milestones_scale_with_the_epochs_unless_given():
    # 43/65 and 54/65 of the run, rounded by hand: 30 -> 19.85, 24.92; 12 -> 7.94, 9.97; 100 -> 66.15, 83.08.
    for epochs, drops in ((65, (43, 54)), (30, (20, 25)), (12, (8, 10)), (100, (66, 83)), (1, (1, 1))):
        config = config_of("--epochs", epochs)
        assert config.schedule.multistep == drops, epochs
        assert config.recipe_line.endswith(f"lr x0.1 at epochs {drops[0]}, {drops[1]}"), config.recipe_line
    assert config_of().schedule.multistep == (43, 54)  # COCO's own, at its 65 epochs
    assert config_of("--epochs", 30, "--multistep", 5).schedule.multistep == (5,)
    never = config_of("--epochs", 30, "--multistep")  # the flag with no epoch: no drop
    assert never.schedule.multistep == () and never.recipe_line.endswith("no lr drop (given)")


def test_the_fine_tuning_recipe_comes_with_weights_only_and_a_given_flag_wins():
    def recipe_of(config):
        s = config.schedule
        return s.epochs, s.batch_size, s.lr, s.warmup, s.multistep

    assert recipe_of(config_of()) == (65, 32, 2.6e-3, 0, (43, 54))
    assert config_of().recipe_line.startswith("recipe: COCO: epochs 65, batch 32,")
    tuned = config_of("--weights", "w.pt")
    assert recipe_of(tuned) == (30, 8, 1.3e-3, 50, (20, 25))
    assert tuned.recipe_line == (
        "recipe: fine-tune (--weights): epochs 30, batch 8, lr 0.0013 for 32 images, warmup 50 iterations, "
        "lr x0.1 at epochs 20, 25"
    )
    # Every flag given wins, also one equal to the other recipe's default (--epochs 65).
    given = config_of("--weights", "w.pt", "--epochs", 65, "--batch-size", 16, "--lr", 0.01, "--warmup", 0)
    assert recipe_of(given) == (65, 16, 0.01, 0, (43, 54))
    assert "epochs 65 (given), batch 16 (given), lr 0.01 for 32 images (given), warmup 0 iterations (given)" in (
        given.recipe_line
    )
    assert given.recipe_line.startswith("recipe: fine-tune (--weights): ")  # --multistep was not given
    every = config_of("--epochs", 20, "--batch-size", 16, "--lr", 0.01, "--warmup", 0, "--multistep", 5, 9)
    assert every.recipe_line.startswith("recipe: your own: epochs 20 (given)"), every.recipe_line
    assert recipe_of(config_of("--weights", "w.pt", "--epochs", 10)) == (10, 8, 1.3e-3, 50, (7, 8))
    # Only --weights chooses it: --backbone-weights starts a detector from scratch.
    assert recipe_of(config_of("--backbone-weights", "none")) == (65, 32, 2.6e-3, 0, (43, 54))


def test_a_short_run_warns_with_its_numbers_and_what_to_change(synthetic_coco, tmp_path, capsys):
    from ssdfast.training.recipe import short_run_warning

    # 3 epochs x 4 steps = 12 steps; 100 steps need ceil(100 / 4) = 25 epochs.
    warning = short_run_warning(epochs=3, steps_per_epoch=4, global_batch=32, images=128)
    assert warning == (
        "warning: this run takes 12 optimizer steps (3 epochs x 4 steps of 32 images; 128 training images): "
        "fewer than about 100 rarely train a detector. Give --epochs 25 or more, or a smaller --batch-size"
    )
    assert short_run_warning(epochs=25, steps_per_epoch=4, global_batch=32, images=128) is None
    assert short_run_warning(epochs=24, steps_per_epoch=4, global_batch=32, images=128) is not None
    # A run says it once at the start: 24 images in batches of 4, 2 epochs = 12 steps.
    flags = resume_args(synthetic_coco, tmp_path, epochs=2)
    run = TrainingRun.build(TrainConfig.from_flags(vars(train.get_args([str(flag) for flag in flags]))))
    run.log.close()
    out = capsys.readouterr().out
    assert out.count("warning: this run takes") == 1
    assert "takes 12 optimizer steps (2 epochs x 6 steps of 4 images; 24 training images)" in out
    assert "Give --epochs 17 or more" in out


def test_num_workers_defaults_to_the_cores_this_process_may_use_at_most_4(monkeypatch):
    import os

    from ssdfast import flag_types

    for cores, expected in (({0}, 1), ({0, 1}, 2), (set(range(4)), 4), (set(range(64)), 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cores=cores: cores, raising=False)
        assert flag_types.default_workers() == expected
        assert train.get_args(["--data-path", "d"]).num_workers == expected
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert flag_types.default_workers() == 3


def test_the_config_is_frozen_and_stores_the_flags_as_before():
    import dataclasses

    args = train.get_args(["--data-path", "d", "--model", "ssdlite", "--epochs", "3"])
    config = TrainConfig.from_flags(vars(args))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.schedule.epochs = 4
    stored = config.as_flags()  # what args.json and last.pt hold: a flat dict of every flag, plain values
    assert set(stored) == set(vars(args))
    assert stored["model"] == "ssdlite300_mobilenetv2" and stored["multistep"] == [2, 2] and stored["epochs"] == 3
    assert TrainConfig.from_flags(stored).schedule == config.schedule  # read back as given
    with pytest.raises(ValueError, match="does not match the flags"):
        TrainConfig.from_flags({**stored, "unknown_flag": 1})
