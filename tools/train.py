"""Train SSD300-ResNet50 or SSDLite-MobileNetV2 on a dataset in the COCO, Pascal VOC or YOLO layout.

    python tools/train.py --data-path /coco --model ssd --amp                        # one GPU (or CPU)
    torchrun --nproc_per_node=8 tools/train.py --data-path /coco --model ssd --amp --dali
    python tools/train.py --data-path demo_data --model ssdlite --backbone-weights none --epochs 2
    python tools/train.py --data-path VOCdevkit/VOC2007 --model ssdlite   # or a YOLO data.yaml (detected)

Start the same command again to resume: it continues from --save-folder/last.pt (model, optimizer,
scaler, epoch and the iteration inside it; the data order and augmentation derive from --seed, the
epoch and the image index, so a resumed run replays what an uninterrupted one would have done).
last.pt is written atomically every --checkpoint-every (10 minutes) and at every epoch end, best.pt
when COCO AP improves; log.jsonl and TensorBoard scalars (--log-path) follow the run.
SIGTERM, SIGUSR1 or Ctrl-C: the current step finishes, last.pt is written, exit code 75 (a second
Ctrl-C aborts at once). Exit codes: ssdfast/preemption.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ssdfast import flag_types as flags
from ssdfast.anchors import SSD_DEFAULTS
from ssdfast.checkpoint import CheckpointError, keep_epoch_copy, resume_training, save_checkpoint, training_state
from ssdfast.data import build_loader
from ssdfast.data.image_files import add_image_limit_args
from ssdfast.data.loader import BACKENDS
from ssdfast.engine import EpochProgress, NonFiniteLossError, evaluate, lr_at, train_one_epoch
from ssdfast.models import build_model, canonical_name
from ssdfast.outputs import writable_folder
from ssdfast.preemption import (EXIT_ABORTED, EXIT_DONE, EXIT_ERROR, EXIT_NON_FINITE, EXIT_PEER_LOST, EXIT_STOPPED,
                                CheckpointSchedule, StopAgreement, StopRequest, process_group_timeout)
from ssdfast.run_lock import hold_save_folder
from ssdfast.runtime import (autocast_dtype, configure_cudnn, host_sync_point, setup_distributed, unwrap,
                             use_channels_last)
from ssdfast.train_step import CudaGraphTrainStep, TrainStep


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default=None, help="dataset: COCO layout root (annotations/, train2017/, val2017/), "
                   "VOCdevkit year folder (Annotations/, JPEGImages/, ImageSets/Main/), or YOLO data.yaml (or its folder)")
    p.add_argument("--data-format", choices=["coco", "voc", "yolo"], default=None,
                   help="layout of --data-path (default: detected)")
    p.add_argument("--train-ann", default=None, help="a COCO annotation file for training, anywhere (with --train-images)")
    p.add_argument("--train-images", default=None, help="the image folder of --train-ann")
    p.add_argument("--val-ann", default=None, help="a COCO annotation file for evaluation, anywhere (with --val-images)")
    p.add_argument("--val-images", default=None, help="the image folder of --val-ann")
    p.add_argument("--save-folder", default="trained_models", help="checkpoints (last.pt, best.pt) and log.jsonl go here")
    p.add_argument("--log-path", default=None, help="TensorBoard folder (default: SAVE_FOLDER/tensorboard)")
    p.add_argument("--model", default="ssd", help="ssd (SSD300-ResNet50) or ssdlite (SSDLite-MobileNetV2)")
    p.add_argument("--epochs", type=flags.positive, default=65, help="number of epochs")
    p.add_argument("--batch-size", type=flags.batch_size, default=32, help="images per GPU (per process)")
    p.add_argument("--multistep", type=flags.non_negative, nargs="*", default=[43, 54], help="epochs where lr is multiplied by 0.1")
    p.add_argument("--lr", type=flags.real(0, low_open=True), default=2.6e-3, help="lr for a global batch of 32; scaled linearly by global batch / 32")
    p.add_argument("--momentum", type=flags.real(0, 1, high_open=True), default=0.9, help="SGD momentum")
    p.add_argument("--no-nesterov", action="store_true", help="plain momentum instead of the seed's Nesterov momentum")
    p.add_argument("--weight-decay", type=flags.real(0), default=5e-4, help="SGD weight decay")
    p.add_argument("--no-bn-weight-decay", action="store_true", help="no weight decay on BatchNorm and bias parameters (NVIDIA's tweak)")
    p.add_argument("--warmup", type=flags.non_negative, default=0, help="linear lr warmup over this many iterations (NVIDIA uses 300)")
    p.add_argument("--nms-threshold", type=flags.nms_threshold, default=SSD_DEFAULTS.nms_threshold,
                   help="NMS IoU threshold for the per-epoch evaluation (the same default as eval.py)")
    p.add_argument("--num-workers", type=flags.workers, default=4, help="data loading workers per process (DALI: threads)")
    p.add_argument("--amp", action="store_true", help="mixed precision (autocast; GradScaler with fp16)")
    p.add_argument("--amp-dtype", choices=["fp16", "bf16"], default=None, help="autocast dtype (default: fp16 on CUDA; bf16 with --cuda-graphs and on CPU)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None, help="channels_last memory format (default on CUDA)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW")
    p.add_argument("--cuda-graphs", action="store_true", help="capture the whole training step in a CUDA graph (one CUDA GPU; not with torchrun)")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="do not let cuDNN autotune its convolutions (on by default on CUDA)")
    p.add_argument("--data-backend", choices=BACKENDS, default="pytorch", help="data path: pytorch (CPU workers), "
                   "gpu (JPEG decode and augmentation on the device; on CPU without one), dali (NVIDIA DALI)")
    p.add_argument("--dali", dest="data_backend", action="store_const", const="dali", help="= --data-backend dali")
    p.add_argument("--eval-every", type=flags.non_negative, default=1, help="COCO evaluation every N epochs (0: never)")
    p.add_argument("--eval-batches", type=flags.positive, default=None, help="evaluate on at most this many val batches (quick checks)")
    p.add_argument("--iters-per-epoch", type=flags.positive, default=None, help="stop each epoch after this many iterations (smoke tests)")
    p.add_argument("--seed", type=flags.integer(0, flags.MAX_SEED), default=0, help="seed of the data order, augmentation and init")
    p.add_argument("--backbone-weights", default="imagenet", help="imagenet (torchvision, downloaded), none, or a path to a state dict")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if SAVE_FOLDER/last.pt exists (it is overwritten)")
    p.add_argument("--checkpoint-every", default="10m", help="also write last.pt inside an epoch: every N iterations "
                   "(e.g. 500) or wall time (e.g. 10m, 90s, 1h); 0: at epoch ends only")
    p.add_argument("--keep-checkpoints", type=flags.non_negative, default=0, metavar="K", help="keep the last K epoch checkpoints as "
                   "epoch_NNN.pt besides last.pt and best.pt (0: none)")
    p.add_argument("--dist-timeout", type=flags.real(0, flags.MAX_DIST_TIMEOUT, low_open=True), default=600, help="seconds a collective may wait for another rank "
                   "before the job stops with exit code 3 (a rank died or hangs outside torchrun's watch)")
    p.add_argument("--max-boxes", type=flags.integer(1, flags.MAX_BOXES), default=128, help="ground-truth boxes per image after padding (G)")
    p.add_argument("--log-every", type=flags.positive, default=10, help="iterations between loss checks/logs (each is a host sync)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--ignore-category-names", action="store_true", help="resume even if SAVE_FOLDER/last.pt was trained "
                   "on categories with other names than the dataset's (only the count must match)")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for user errors too")
    add_image_limit_args(p)
    args = p.parse_args(argv)
    if args.data_path is None and not (args.train_ann and args.train_images):
        p.error("no dataset given: --data-path, or --train-ann and --train-images (and --val-ann, --val-images)")
    if args.momentum == 0 and not args.no_nesterov:
        p.error("argument --momentum: Nesterov momentum needs a momentum > 0 (or pass --no-nesterov)")
    return args


def build_optimizer(model, args, lr: float, device):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if args.no_bn_weight_decay and param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    # On CUDA, fused SGD: one kernel for all parameters, and it takes GradScaler's inf check on the
    # device (the unfused step reads it on the host: a sync every iteration with fp16).
    fused = device.type == "cuda" or None
    if args.cuda_graphs:
        # lr as a device tensor, so lr changes reach the captured graph.
        lr = torch.tensor(lr, device=device)
    return torch.optim.SGD(groups, lr=lr, momentum=args.momentum, nesterov=not args.no_nesterov, fused=fused)


def main(argv=None, stop_request: StopRequest | None = None) -> int:
    args = get_args(argv)
    args.model = canonical_name(args.model)
    stop_request = stop_request or StopRequest()  # run() installs the signal handlers before anything
    schedule = CheckpointSchedule(args.checkpoint_every)  # a bad value fails here, before any work
    if args.keep_checkpoints < 0:
        raise ValueError(f"--keep-checkpoints must be >= 0, got {args.keep_checkpoints}")
    timeout = process_group_timeout(args.dist_timeout)
    rank, world, device = setup_distributed(args.device, timeout)
    agreement = StopAgreement(timeout)  # every rank, at the same point (new_group is a collective)
    is_main = rank == 0
    if args.cuda_graphs and device.type != "cuda":
        sys.exit("error: --cuda-graphs needs a CUDA device (CUDA graphs do not exist on CPU)")
    if args.cuda_graphs and world > 1:
        # PyTorch's recipe for capturing DDP (DDP built on a side stream, 11+ eager warm-up steps,
        # NCCL async error handling off) has not been run on several GPUs here: refuse rather than guess.
        sys.exit("error: --cuda-graphs is single-process for now (capturing DDP is untested): drop --cuda-graphs "
                 "under torchrun, or train on one GPU")
    cudnn_benchmark = configure_cudnn(device, not args.no_cudnn_benchmark)
    channels_last = use_channels_last(device, args.channels_last)
    amp_dtype = autocast_dtype(device, args.amp, args.amp_dtype, args.cuda_graphs)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    torch.manual_seed(args.seed)
    save_folder = Path(args.save_folder)
    if is_main:  # found now, not after the first epoch
        writable_folder(save_folder, "save folder")
        writable_folder(args.log_path or save_folder / "tensorboard", "TensorBoard folder")
        hold_save_folder(save_folder)  # one training per folder (refused at once); clears stale temporaries
    train_loader = build_loader(args.data_path, "train", train=True, batch_size=args.batch_size,
                                num_workers=args.num_workers, rank=rank, world_size=world, seed=args.seed,
                                max_boxes=args.max_boxes, backend=args.data_backend, device=device,
                                channels_last=channels_last, data_format=args.data_format, ann_file=args.train_ann,
                                image_dir=args.train_images, max_pixels=args.max_pixels,
                                allow_outside_paths=args.allow_outside_paths)
    val_loader = build_loader(args.data_path, "val", train=False, batch_size=args.batch_size,
                              num_workers=args.num_workers, rank=rank, world_size=world, seed=args.seed,
                              max_boxes=args.max_boxes, backend=args.data_backend, device=device,
                              channels_last=channels_last, data_format=args.data_format, ann_file=args.val_ann,
                              image_dir=args.val_images, max_pixels=args.max_pixels,
                              allow_outside_paths=args.allow_outside_paths) if args.eval_every > 0 else None
    num_classes = len(train_loader.info.category_ids)
    model = build_model(args.model, num_classes=num_classes, backbone_weights=args.backbone_weights).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    base_lr = args.lr * args.batch_size * world / 32
    optimizer = build_optimizer(model, args, base_lr, device)

    start_epoch, best_ap, position = 0, -1.0, None
    last = save_folder / "last.pt"
    if last.exists() and not args.no_resume:
        start_epoch, best_ap, position = resume_training(last, model, optimizer, scaler, model_name=args.model,
                                                         category_names=train_loader.info.category_names,
                                                         check_names=not args.ignore_category_names,
                                                         data=args.data_path)
        if not agreement.same([start_epoch, position["iteration"] if position else 0]):
            raise ValueError(f"the ranks found different checkpoints in {save_folder}: every rank must see the "
                             "same save folder (a shared file system)")
        if is_main and position:
            print(f"resuming from {last}: epoch {start_epoch} stopped after {position['iteration']} iteration(s), "
                  f"continuing with iteration {position['iteration']} (0-based)")
            if position.get("world", world) != world:
                print(f"warning: {last} was written by {position['world']} processes, this run has {world}: the "
                      "global batch, lr and data order change, so this continues as a different run")
        elif is_main:
            print(f"resuming from {last}: epoch {start_epoch - 1} done, continuing at epoch {start_epoch}")

    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_cls = CudaGraphTrainStep if args.cuda_graphs else TrainStep
    step = step_cls(ddp_model, optimizer, amp_dtype=amp_dtype, scaler=scaler)

    writer, log_file = None, None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        save_folder.mkdir(parents=True, exist_ok=True)
        # purge_step: scalars an interrupted run logged after its last checkpoint are dropped, not doubled.
        resumed_at = start_epoch * len(train_loader) + (position["iteration"] if position else 0)
        writer = SummaryWriter(args.log_path or str(save_folder / "tensorboard"), purge_step=resumed_at or None)
        log_file = open(save_folder / "log.jsonl", "a")
        print(f"ssd: {args.model}, {num_classes} classes, {train_loader.info.num_images} train images, world {world}, "
              f"device {device}, amp {amp_dtype}, channels_last {channels_last}, cuda graphs {args.cuda_graphs}, "
              f"cudnn.benchmark {cudnn_benchmark}, "
              f"{args.data_backend} data, lr {base_lr:.2e}")

    def log(record: dict) -> None:
        if is_main:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    def on_log(epoch, it, values):
        log({"epoch": epoch, "iteration": it, **values})
        step_index = epoch * len(train_loader) + it
        for key, value in values.items():
            writer.add_scalar(f"train/{key}", value, step_index)

    def lr_fn(epoch, it, iters):
        return lr_at(base_lr, epoch, it, iters, args.multistep, args.warmup)

    def save_last(epochs_done: int, position: dict | None, also_best: bool = False) -> None:
        """Write last.pt (rank 0 only; no collective inside, so rank 0 alone may decide when).
        epochs_done: the last finished epoch; position: where the next one stands (None: at its start).
        also_best: the same state to best.pt first (a kill between the two never leaves best_ap ahead of best.pt)."""
        if position is not None and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            # Another rank's NaN reaches these weights through the all-reduce before this rank's loss shows it.
            raise NonFiniteLossError(f"the weights became non-finite in epoch {position['epoch']} before iteration "
                                     f"{position['iteration']}: not saved (last.pt is the one before); try a lower --lr")
        state = training_state(unwrap(model), optimizer, scaler, model_name=args.model, epoch=epochs_done,
                               category_ids=train_loader.info.category_ids,
                               category_names=train_loader.info.category_names, best_ap=best_ap, args=vars(args),
                               position=position)
        if also_best:
            save_checkpoint(save_folder / "best.pt", state)
        save_checkpoint(last, state)
        schedule.saved()

    def save_position(progress: EpochProgress) -> None:
        with host_sync_point(device):  # reads the loss sums and the weights
            save_last(progress.epoch - 1, {**progress.state_dict(), "world": world})

    def after_step(progress: EpochProgress) -> bool:
        """Mid-epoch last.pt when due (rank 0 decides alone) and the ranks' agreement on a stop request."""
        stop = agreement.any(stop_request.requested is not None)
        if is_main and (stop or schedule.due(progress.iteration - 1)):
            save_position(progress)
        return stop

    def close_logs() -> None:
        if is_main:
            writer.close()
            log_file.close()

    if agreement.any(stop_request.requested is not None):  # signalled while loading
        close_logs()
        return stopped(world, is_main, stop_request, last, "the start (nothing trained)")
    for epoch in range(start_epoch, args.epochs):
        torch.manual_seed(args.seed + epoch)
        progress = EpochProgress(epoch, device, position if position and position["epoch"] == epoch else None)
        try:
            stats = train_one_epoch(step, train_loader, device, epoch, lr_fn=lr_fn, channels_last=channels_last,
                                    log_every=args.log_every, max_iters=args.iters_per_epoch, is_main=is_main,
                                    on_log=on_log if is_main else None, progress=progress, after_step=after_step)
        except NonFiniteLossError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_NON_FINITE
        if stats["stopped"]:
            close_logs()
            return stopped(world, is_main, stop_request, last, f"epoch {epoch}, iteration {progress.iteration}")
        if stats["skipped"] and is_main:
            print(f"warning: epoch {epoch}: {len(stats['skipped'])} unreadable image(s) skipped, "
                  f"e.g. {stats['skipped'][0]}")
        record = {"epoch": epoch, **{k: v for k, v in stats.items() if k not in ("skipped", "stopped")},
                  "time": time.time()}
        if val_loader is not None and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
            if is_main:  # the trained epoch is safe before the evaluation (a kill during it loses only that)
                save_position(progress)
            coco, table, _, _ = evaluate(ddp_model, val_loader, device, amp_dtype=amp_dtype,
                                         channels_last=channels_last, nms_threshold=args.nms_threshold,
                                         max_batches=args.eval_batches, is_main=is_main)
            if is_main:
                print(f"epoch {epoch} COCO evaluation:\n{table}")
                for key, value in (coco or {}).items():  # None: nothing to evaluate (said in `table`)
                    record[f"coco/{key}"] = value
                    writer.add_scalar(f"coco/{key}", value, epoch)
        if is_main:
            writer.add_scalar("train/images_per_s", stats["images_per_s"], epoch)
            print(f"epoch {epoch}: loss {stats['loss']:.4f} (loc {stats['loss_loc']:.4f}, conf "
                  f"{stats['loss_conf']:.4f}), {stats['images_per_s']:.1f} images/s"
                  + (f", AP {record['coco/AP']:.4f}, AP50 {record['coco/AP50']:.4f}" if "coco/AP" in record else ""))
            ap = record.get("coco/AP", -1.0)
            improved, best_ap = ap > best_ap, max(best_ap, ap)
            save_last(epoch, None, also_best=improved)
            log(record)  # after the save: a kill before it replays the epoch, which then logs it once
            if args.keep_checkpoints:
                keep_epoch_copy(last, epoch, args.keep_checkpoints)
        # A signal during the evaluation: the epoch is saved, stop now (every rank agrees).
        if agreement.any(stop_request.requested is not None) and epoch + 1 < args.epochs:
            close_logs()
            return stopped(world, is_main, stop_request, last, f"the end of epoch {epoch}")
        if world > 1:
            dist.barrier()
    close_logs()
    if is_main:
        written = ", ".join(name for name in ("last.pt", "best.pt") if (save_folder / name).exists())
        print(f"done: checkpoints in {save_folder} ({written}), log {save_folder / 'log.jsonl'}")
    if world > 1:
        dist.destroy_process_group()
    return EXIT_DONE


def stopped(world: int, is_main: bool, stop_request: StopRequest, last: Path, where: str) -> int:
    """After a stop request: wait until rank 0 has written last.pt (a rank leaving early would make
    torchrun tear the others down mid-write), say where to resume, exit EXIT_STOPPED."""
    stop_request.exiting()
    if world > 1:
        dist.barrier()
    if is_main:
        print(f"stopped ({stop_request.requested or 'another rank was signalled'}) at {where}: {last} holds the run so "
              f"far; run the same command to resume from there (exit code {EXIT_STOPPED})", flush=True)
    if world > 1:
        dist.destroy_process_group()
    return EXIT_STOPPED


def is_collective_failure(error: BaseException) -> bool:
    """A collective that failed because a peer died or timed out (gloo/NCCL report it as these)."""
    text = str(error)
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and any(
        key in text for key in ("Connection closed by peer", "Timed out", "timed out", "Connection reset", "gloo")))


def run(argv=None) -> int:
    """main() with user errors as one `error:` line (a traceback only with --debug, or for bugs) and the
    exit codes of ssdfast/preemption.py."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    rank = os.environ.get("RANK", "0")
    try:
        with StopRequest() as stop_request:  # from the first line on: a signal while loading is a stop too
            return main(argv, stop_request)
    except KeyboardInterrupt:  # Ctrl-C where Python could not take it as a stop request
        print("aborted: last.pt is the one written before (at the last checkpoint); run the same command to "
              "resume from it", file=sys.stderr)
        return EXIT_ABORTED
    except (CheckpointError, FileNotFoundError, ValueError, NotADirectoryError, PermissionError) as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:
        if not is_collective_failure(error) or debug:
            raise
        print(f"error: rank {rank}: a collective operation failed: another rank died or did not answer within "
              f"--dist-timeout ({str(error).splitlines()[0][:200]}). last.pt is intact: run the same command "
              f"(torchrun --max-restarts does it by itself)", file=sys.stderr)
        return EXIT_PEER_LOST


if __name__ == "__main__":
    sys.exit(run())
