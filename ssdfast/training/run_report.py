"""What a run tells its user (rank 0): the arguments in force (args.json, and what changed since
last.pt), the header line, the log files (run_log.py: log.jsonl and TensorBoard) and each epoch's line."""

from __future__ import annotations

import time

from ssdfast.data.coco import images_summary
from ssdfast.machinery.outputs import is_own, write_json_atomic
from ssdfast.training.config import TrainConfig
from ssdfast.training.run_log import RunLog

# Arguments that choose where a new run starts from: a resumed run starts from last.pt whatever they say.
STARTING_POINT_ARGS = {"weights", "backbone_weights", "no_resume"}


def record_arguments(config: TrainConfig, trained_with: dict, last) -> None:
    """SAVE_FOLDER/args.json: this run's arguments. A resumed run lists those that differ from the ones
    last.pt was trained with (`trained_with`: {} for a fresh run) and goes on with the new values (a new
    --lr, say, applies from here on)."""
    current = config.as_flags()
    changed = [
        f"--{k.replace('_', '-')} {v} (was {trained_with[k]})"
        for k, v in current.items()
        if k in trained_with and trained_with[k] != v and k not in STARTING_POINT_ARGS
    ]
    if changed:
        print(
            f"warning: resuming {last} with other arguments than it was trained with: {', '.join(changed)}; "
            "the run goes on with the new values"
        )
    path = config.save_folder / "args.json"
    if not trained_with and not (config.save_folder / "last.pt").exists() and path.exists() and not is_own(path):
        raise ValueError(  # a new run in a folder whose args.json is a user's (or one edited since it was written)
            f"{path} is a file ssdfast did not write (or one edited since): a new run would replace it; give "
            "another --save-folder"
        )
    write_json_atomic(path, current, "arguments file", indent=1, claim=True)


def open_log(config: TrainConfig, steps_per_epoch: int, start: tuple[int, int], saved_step: int | None) -> RunLog:
    """The run's log.jsonl and TensorBoard writer, going on from `start` (epoch, iteration) at the global
    step last.pt saved (`saved_step`; None: counted from `start`)."""
    resumed_at = saved_step if saved_step is not None else start[0] * steps_per_epoch + start[1]
    return RunLog(config.save_folder, config.tensorboard_folder, steps_per_epoch, resumed_at, start)


def header_line(config: TrainConfig, placement, info, base_lr: float) -> str:
    speed = config.speed
    return (
        f"ssd: {config.model.model}, {len(info.category_ids)} classes, {images_summary(info.num_images, info.dropped)}, "
        f"world {placement.world}, device {placement.device}, amp {placement.amp_dtype}, "
        f"channels_last {placement.channels_last}, cuda graphs {speed.cuda_graphs}, "
        f"compile {speed.compile_mode if speed.compile else False}, cudnn.benchmark {placement.cudnn_benchmark}, "
        f"{config.data.data_backend} data, lr {base_lr:.2e}"
    )


def epoch_record(epoch: int, stats: dict, say: bool) -> dict:
    """The epoch's line of log.jsonl (the COCO metrics join it); a warning for unreadable images (`say`: rank 0)."""
    if stats["skipped"] and say:
        print(
            f"warning: epoch {epoch}: {len(stats['skipped'])} unreadable image(s) skipped, e.g. {stats['skipped'][0]}"
        )
    kept = {k: v for k, v in stats.items() if k not in ("skipped", "stopped")}
    return {"epoch": epoch, **kept, "time": time.time()}


def epoch_line(record: dict) -> str:
    return (
        f"epoch {record['epoch']}: loss {record['loss']:.4f} (loc {record['loss_loc']:.4f}, conf "
        f"{record['loss_conf']:.4f}), {record['images_per_s']:.1f} images/s"
        + (f", AP {record['coco/AP']:.4f}, AP50 {record['coco/AP50']:.4f}" if "coco/AP" in record else "")
    )
