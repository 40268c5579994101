"""One seed of the demo recipe trained by the older implementation's own code (uvipen/SSD-pytorch).

    git clone https://github.com/uvipen/SSD-pytorch /somewhere/SSD-pytorch      # outside this repository
    python benchmarks/quality.py --older /somewhere/SSD-pytorch --seeds 1 2 3 4 5

benchmarks/quality.py runs this file once per seed, in its own process (the older code builds its
backbones when its modules are imported). Nothing of the older code is copied here: this script imports
its dataset, PIL augmentation (SSDTransformer), default boxes, encoder, SSDLite model, loss and
evaluation from the clone and only drives them. What it adapts, and why:

  * the recipe comes from ssdfast/training/demo_recipe.py's train_command (epochs, batch, lr per 32 images, warm-up,
    milestones), applied per step as tools/train.py does (the older train() steps MultiStepLR per epoch
    and has no warm-up);
  * the class count is the dataset's (the older train.py fixes COCO's 81);
  * no pretrained backbone (the recipe trains from scratch; the older code asks torchvision for
    ImageNet weights at import: the builders are wrapped to pass weights=None);
  * today's torchvision keeps InvertedResidual in torchvision.models.mobilenetv2 only: it is put back
    where the older code imports it from;
  * `apex` (its optional AMP, imported at module level) is replaced by an empty stand-in: fp32 is used;
  * seeds: torch and Python's `random` (its crop and flip) and the loader's shuffle come from --seed
    (the older train.py fixes 123);
  * evaluation is its own evaluate() with the NMS IoU of ssdfast's evaluation (0.45; its train.py
    passes 0.5): the comparison is of training, not of post-processing.

Prints one JSON line: {"seed", "AP", "AP50", "loss" (mean over the last epoch's steps), "minutes"}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import types
from pathlib import Path


def import_older(repo: Path):
    """Import the older implementation's modules from a clone, with its two import-time needs met."""
    import torchvision.models.mobilenet as mobilenet
    import torchvision.models.mobilenetv2 as mobilenetv2
    import torchvision.models.resnet as resnet

    def from_scratch(builder):
        return lambda *args, **kwargs: builder(weights=None)

    resnet.resnet50 = from_scratch(resnet.resnet50)
    mobilenet.mobilenet_v2 = from_scratch(mobilenetv2.mobilenet_v2)
    mobilenet.InvertedResidual = mobilenetv2.InvertedResidual  # today's torchvision keeps it in mobilenetv2 only
    sys.modules.setdefault("apex", types.SimpleNamespace(amp=None))
    sys.path.insert(0, str(repo))
    from src import dataset, loss, model, process, transform, utils  # noqa: F401  (the older code)

    return types.SimpleNamespace(
        dataset=dataset, loss=loss, model=model, process=process, transform=transform, utils=utils
    )


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--older", required=True, help="a clone of uvipen/SSD-pytorch (the folder holding src/)")
    p.add_argument("--data-path", required=True, help="COCO-layout set (train2017/, val2017/, annotations/)")
    p.add_argument("--seed", type=int, required=True, help="seed of init, data order and augmentation")
    p.add_argument("--epochs", type=int, required=True, help="epochs")
    p.add_argument("--batch-size", type=int, required=True, help="images per step")
    p.add_argument("--lr", type=float, required=True, help="lr for a batch of 32 (scaled by batch/32)")
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up over this many steps")
    p.add_argument("--multistep", type=int, nargs="*", default=[], help="epochs where lr is multiplied by 0.1")
    p.add_argument("--num-workers", type=int, default=1, help="loader worker processes")
    p.add_argument("--nms-threshold", type=float, default=0.45, help="NMS IoU of the evaluation")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = get_args(argv)

    import torch
    from torch.utils.data import DataLoader

    from ssdfast.training.optimizer import lr_at  # tools/train.py's schedule, step by step

    older = import_older(Path(args.older).resolve())
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    dboxes = older.utils.generate_dboxes(model="ssdlite")
    train_set = older.dataset.CocoDataset(
        args.data_path, 2017, "train", older.transform.SSDTransformer(dboxes, (300, 300), val=False)
    )
    val_set = older.dataset.CocoDataset(
        args.data_path, 2017, "val", older.transform.SSDTransformer(dboxes, (300, 300), val=True)
    )
    num_classes = len(train_set.label_info)  # background included, as the older code counts
    loader_args = dict(batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=older.dataset.collate_fn)
    train_loader = DataLoader(
        train_set, shuffle=True, drop_last=False, generator=torch.Generator().manual_seed(args.seed), **loader_args
    )
    val_loader = DataLoader(val_set, shuffle=False, drop_last=False, **loader_args)

    net = older.model.SSDLite(backbone=older.model.MobileNetV2(), num_classes=num_classes)
    criterion = older.loss.Loss(dboxes)
    base_lr = args.lr * args.batch_size / 32
    optimizer = torch.optim.SGD(net.parameters(), lr=base_lr, momentum=0.9, weight_decay=5e-4, nesterov=True)

    start = time.time()
    for epoch in range(args.epochs):
        net.train()
        losses = []
        for i, (img, _, _, gloc, glabel) in enumerate(train_loader):  # the body of the older process.train()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(base_lr, epoch, i, len(train_loader), args.multistep, args.warmup)
            ploc, plabel = net(img)
            loss = criterion(ploc.float(), plabel.float(), gloc.transpose(1, 2).contiguous(), glabel)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        print(
            f"epoch {epoch}: loss {sum(losses) / len(losses):.4f} ({(time.time() - start) / 60:.1f} min)",
            file=sys.stderr,
            flush=True,
        )

    captured = {}

    class KeepStats(older.process.COCOeval):  # its evaluate() prints the table; keep the numbers too
        def summarize(self):
            super().summarize()
            captured["stats"] = self.stats

    older.process.COCOeval = KeepStats
    writer = types.SimpleNamespace(add_scalar=lambda *a, **k: None)
    older.process.evaluate(net, val_loader, args.epochs - 1, writer, older.utils.Encoder(dboxes), args.nms_threshold)
    print(
        json.dumps(
            {
                "seed": args.seed,
                "AP": float(captured["stats"][0]),
                "AP50": float(captured["stats"][1]),
                "loss": sum(losses) / len(losses),
                "minutes": (time.time() - start) / 60,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
