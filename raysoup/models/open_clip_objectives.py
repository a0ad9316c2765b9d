"""Forward + loss of the open_clip family: the image classifier's fine-tuning objective and
CLIP's contrastive pre-training.

A leaf module (torch, timm and open_clip only): the training loops in train/ take these from
the family, and the pre-training loop falls back to the contrastive one when its caller names
none.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from raysoup.config import TrainHParams

_MAX_LOGIT_SCALE = math.log(100.0)  # open_clip's training clamps the temperature here


class ClassifierObjective:
    """Cross-entropy with label smoothing; with mixup or cutmix (timm), each batch is mixed
    and the loss taken against the soft targets."""

    def __init__(self, hp: TrainHParams, num_classes: int):
        if hp.mixup > 0 or hp.cutmix > 0:
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            self.mixer = Mixup(
                mixup_alpha=hp.mixup, cutmix_alpha=hp.cutmix,
                label_smoothing=hp.label_smoothing, num_classes=num_classes,
            )
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        else:
            self.mixer = None
            self.criterion = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # timm's Mixup draws from numpy's global RNG, which the loop seeds per epoch.
        if self.mixer is None:
            return x, y
        if len(x) % 2 == 0:
            return self.mixer(x, y)
        # timm pairs sample i with sample n-1-i and wants an even batch. An odd one (the
        # epoch's last batch, kept whole) pairs its middle sample with itself: mixed through
        # a duplicate, which is then dropped. One draw per batch, as for an even one.
        m = len(x) // 2
        mixed, target = self.mixer(torch.cat([x[:m + 1], x[m:]]), torch.cat([y[:m + 1], y[m:]]))
        return torch.cat([mixed[:m + 1], mixed[m + 2:]]), torch.cat([target[:m + 1],
                                                                     target[m + 2:]])

    def forward_loss(self, net: nn.Module, x: torch.Tensor,
                     target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = net(x)
        return logits, self.criterion(logits.float(), target)


class ContrastiveObjective:
    """CLIP's symmetric InfoNCE over the batch's image and caption embeddings."""

    def __init__(self):
        from open_clip.loss import ClipLoss

        self.loss_fn = ClipLoss()

    def loss(self, model: nn.Module, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        img_f, txt_f, scale = model(images, texts)[:3]
        return self.loss_fn(img_f.float(), txt_f.float(), scale.float())

    def after_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, _MAX_LOGIT_SCALE)

    def summary(self, model: nn.Module) -> dict:
        return {"logit_scale": model.logit_scale.exp().item()}
