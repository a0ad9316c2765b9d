"""The model-family seam: everything a stage needs to know about a kind of model.

Prepare, training, evaluation, export and tracking ask a `ModelFamily` for whatever depends on
the model's library and modality (how to build it, where its weights come from, what its
inputs look like, how it computes logits and a loss, how it leaves raysoup). What the family
hands back to the rest of raysoup is a torch module whose state dict is a flat dict of named
tensors: the sweep saves it, the soup methods and the reduction merge it tensor by tensor, and
none of them knows which family produced it.

The families are listed in `raysoup.models.families` (`FAMILIES`, `get_family`, `family_of`).
open_clip image classification (`raysoup.models.open_clip_family`) is the one family today;
docs/architecture.md ("Add a model family") says how a second one plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # type names only: the seam itself imports no model library
    from collections.abc import Sequence

    import torch
    from torch import nn

    from raysoup.config import ModelCfg, TrainHParams
    from raysoup.models.factory import WeightSource


@dataclass(frozen=True)
class InitialModel:
    """The classifier fine-tuning starts from (ingredient 0) and what its manifest records."""

    model: nn.Module
    preprocess: dict  # the manifest's "preprocess" record (see `ModelFamily.preprocess`)


@dataclass(frozen=True)
class MlflowModelSpec:
    """How the tracker logs a model of the family as an MLflow Model (names only: the mlflow
    code stays in the tracking module)."""

    flavour: str  # MLflow flavour the model is saved with ("pyfunc")
    code: Path | None  # a "model from code" file MLflow runs to load it (pyfunc), if any
    artifact: str  # the artifact key the export directory is logged under
    export_format: str  # which of the family's export formats that artifact is
    requirements: tuple[str, ...]  # pip names the served model needs (pinned at save time)


class TrainObjective(Protocol):
    """Fine-tuning's forward + loss for one batch, after the input pipeline."""

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) the loss is taken against (e.g. mixup/cutmix of the batch)."""
        ...

    def forward_loss(self, net: nn.Module, x: torch.Tensor,
                     target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, loss) of `net` on the batch (called under the loop's autocast)."""
        ...


class PretrainObjective(Protocol):
    """Pre-training's forward + loss (a family that pre-trains its own base)."""

    def loss(self, model: nn.Module, inputs: torch.Tensor,
             texts: torch.Tensor) -> torch.Tensor: ...

    def after_step(self, model: nn.Module) -> None:
        """Keep the model's parameters in range after each optimizer step."""
        ...

    def summary(self, model: nn.Module) -> dict[str, Any]:
        """Family-specific metrics recorded with the base (after the common ones)."""
        ...


@runtime_checkable
class ModelFamily(Protocol):
    """What the stages ask of a kind of model. Methods take the experiment's `model` section
    (`ModelCfg`) or the names recorded in the zero-shot manifest (`model_name`, `num_classes`,
    `preprocess`), so a worker can rebuild a model from the manifest alone."""

    name: str  # the key in `families.FAMILIES`
    export_formats: tuple[str, ...]  # `raysoup export --format` choices (export/ writes them)
    mlflow: MlflowModelSpec

    # --- build and weights
    def skeleton(self, model_name: str, num_classes: int) -> nn.Module:
        """The classifier with random weights and the right names and shapes (eval mode):
        trials, eval actors and importers copy weights into it."""
        ...

    def architecture(self, model_name: str) -> dict:
        """The library's config of the architecture (recorded with an export)."""
        ...

    def resolve_weights(self, model_cfg: ModelCfg,
                        base_checkpoint: Path | None = None) -> WeightSource:
        """Where `model_cfg`'s pre-trained weights come from, without loading them; an
        unusable source errors listing what was tried."""
        ...

    def load_pretrained(self, model_cfg: ModelCfg,
                        base_checkpoint: Path | None = None) -> nn.Module:
        """The pre-trained model (the library's own type, e.g. a full CLIP), eval mode."""
        ...

    def packaged_base(self, model_cfg: ModelCfg, splits) -> Path | None:
        """A base shipped with raysoup that `model_cfg` names, checked against `splits`
        (None when the weights come from elsewhere)."""
        ...

    # --- preprocessing
    def preprocess(self, pretrained: nn.Module) -> dict:
        """The input record of the zero-shot manifest: what training and evaluation feed the
        model (for images: size, mean, std). JSON; its key order is part of the manifest."""
        ...

    def input_args(self, preprocess: dict) -> dict:
        """The fine-tuning loop's input arguments from that record."""
        ...

    # --- the initial head, forward and loss
    def initial_model(self, model_cfg: ModelCfg, base: Path | None,
                      classnames: Sequence[str], templates: Sequence) -> InitialModel:
        """The classifier fine-tuning starts from, with its initial head."""
        ...

    def logits(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Class logits [N, C] of a batch of preprocessed inputs."""
        ...

    def train_objective(self, hp: TrainHParams, num_classes: int) -> TrainObjective: ...

    def pretrain_objective(self) -> PretrainObjective:
        """Pre-training's loss (model.pretrain): the caller above models/ runs train/'s loop
        with it (`raysoup.train.base_clip.ensure_base_clip(..., objective=...)`). A family
        that cannot pre-train its own base raises."""
        ...
