"""ImageClassifier = CLIP image encoder + L2-normalised features + linear head.

The head starts as the zero-shot classifier (class-name x template text embeddings, scaled by
the CLIP temperature), exactly as in the model-soups paper's code, so the initial classifier
reproduces zero-shot CLIP and fine-tuning starts from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from raysoup.models.factory import build_clip


class ImageClassifier(nn.Module):
    """State-dict keys: visual.* (the CLIP image tower), head.weight [C, D], head.bias [C]."""

    def __init__(self, visual: nn.Module, head: nn.Linear):
        super().__init__()
        self.visual = visual
        self.head = head

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@torch.no_grad()
def zero_shot_head(
    clip: nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """[C, D] head weight: normalised mean text embedding per class, times logit_scale.exp()."""
    clip = clip.to(device)
    # 50 classes × all templates per text-tower batch: ImageNet's 1000 × 80 prompts in one
    # batch peaked at ~8 GB even for a tiny text tower.
    weights = open_clip.build_zero_shot_classifier(
        clip, tokenizer, list(classnames), list(templates), num_classes_per_batch=50,
        device=device,
    )  # [D, C], columns unit-norm
    return (clip.logit_scale.exp() * weights.T).float().contiguous()


def classifier_from_clip(clip: nn.Module, head_weight: torch.Tensor) -> ImageClassifier:
    """Wrap clip.visual with a head initialised from head_weight [C, D] and zero bias.

    The image tower is shared with `clip` (not copied); fine-tuning then changes both.
    """
    out_dim = getattr(clip.visual, "output_dim", None)
    num_classes, dim = head_weight.shape
    if out_dim is not None and dim != out_dim:
        raise ValueError(f"head_weight has feature dim {dim}, clip.visual outputs {out_dim}")
    head = nn.Linear(dim, num_classes, bias=True)
    with torch.no_grad():
        head.weight.copy_(head_weight)
        head.bias.zero_()
    return ImageClassifier(clip.visual, head)


def classifier_skeleton(model_name: str, num_classes: int) -> ImageClassifier:
    """Random weights with the right shapes (eval actors then copy ingredient weights in)."""
    clip = build_clip(model_name)
    dim = clip.visual.output_dim
    return ImageClassifier(clip.visual, nn.Linear(dim, num_classes, bias=True)).eval()
