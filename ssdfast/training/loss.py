"""MultiBox loss (docs/ssd.md section 4), vectorised over the batch.

Per image: smooth L1 (beta 1) on positive anchors, summed over the 4 offsets; cross entropy on the
positives plus the 3x-positives hardest negatives; divided by that image's positive count. Images
without positives contribute 0. Mean over the batch. Computed in fp32 even under autocast.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from ssdfast.anchors import SSD_DEFAULTS


class LossOutput(NamedTuple):
    total: Tensor  # scalar: what to backpropagate
    loc: Tensor  # scalar: the localisation part (for logging)
    conf: Tensor  # scalar: the classification part (for logging)


class MultiBoxLoss(nn.Module):
    def __init__(self, neg_pos_ratio: int = SSD_DEFAULTS.neg_pos_ratio):
        super().__init__()
        self.neg_pos_ratio = neg_pos_ratio

    def forward(self, locs: Tensor, confs: Tensor, target_offsets: Tensor, target_labels: Tensor) -> LossOutput:
        """
        Args:
            locs (Tensor[B, A, 4]): predicted offsets.  confs (Tensor[B, A, C+1]): class logits.
            target_offsets (Tensor[B, A, 4]), target_labels (Tensor[B, A] int64, 0 = background):
                from ssdfast.ops.match_encode.
        """
        locs, confs = locs.float(), confs.float()
        batch, num_anchors = target_labels.shape
        positive = target_labels > 0
        num_pos = positive.sum(dim=1)  # [B]

        loc = F.smooth_l1_loss(locs, target_offsets, reduction="none", beta=1.0).sum(dim=-1)  # [B, A]
        loc = (loc * positive).sum(dim=1)

        ce = F.cross_entropy(confs.flatten(0, 1), target_labels.flatten(), reduction="none").view(batch, num_anchors)
        # Hard negative mining: rank the negatives by their loss (positives count as 0, so they never
        # take a negative's place) and keep the top neg_pos_ratio * num_pos of them. argsort gives the
        # anchors in loss order; argsort of that gives each anchor's rank in it. Two sorts of [B, A]
        # instead of a per-image loop with data-dependent sizes: no loop, no host sync, static shapes.
        neg_ce = ce.masked_fill(positive, 0.0)
        rank = neg_ce.argsort(dim=1, descending=True).argsort(dim=1)
        num_neg = (self.neg_pos_ratio * num_pos).clamp(max=num_anchors)
        negative = rank < num_neg[:, None]
        conf = (ce * (positive.float() + negative.float())).sum(dim=1)  # as NVIDIA's SSD300 (docs/ssd.md section 4)

        scale = (num_pos > 0).float() / num_pos.float().clamp(min=1e-6)  # 0 for images without positives
        loc, conf = (loc * scale).mean(), (conf * scale).mean()
        return LossOutput(loc + conf, loc, conf)
