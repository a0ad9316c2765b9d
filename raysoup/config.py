"""Experiment configuration: validated pydantic models loaded from YAML.

Every model forbids unknown fields so a typo names itself instead of being ignored.
Validators raise ValueError (never RuntimeError) so pydantic can report the field path.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from raysoup import storage
from raysoup.search.distributions import Distribution, as_dist
from raysoup.soup_settings import SECTIONS


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field path and the problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OmitsNewDefaults(Strict):
    """Fields added after configs were first written (`_new_fields`) are left out of the dump
    while at their default: an existing config keeps the bytes of its snapshot, its cache
    fingerprints and the model config a shipped base recorded."""

    _new_fields: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler):
        data = handler(self)
        for name in self._new_fields:
            if getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return data


# ---------------------------------------------------------------- data


class WorldCfg(Strict):
    """The procedurally generated image world of the embedded default (see data/world.py)."""

    num_classes: int = Field(10, ge=2, le=16)
    image_size: int = Field(32, ge=16, le=128)
    train_per_class: int = Field(2000, ge=10)
    test_per_class: int = Field(200, ge=5)
    shift_per_class: int = Field(100, ge=5)
    seed: int = 0


class TextWorldCfg(Strict):
    """The generated text classification task of the text miniature (data/text/world.py)."""

    train_per_class: int = Field(300, ge=10)
    test_per_class: int = Field(100, ge=5)
    shift_per_class: int = Field(50, ge=5)
    seed: int = 0


class SplitSource(OmitsNewDefaults):
    """A labelled split on disk: images (Parquet shards or an ImageFolder, ImageNet layout) or
    texts (`text_columns` of Parquet, JSON-lines, CSV or a `datasets` save_to_disk directory,
    `hf_disk`; docs/text-models.md)."""

    _new_fields: ClassVar[tuple[str, ...]] = ("text_columns", "label_column", "split")
    format: Literal["parquet", "imagefolder", "jsonl", "csv", "hf_disk"]
    path: str
    # hf_disk: the split to read from a DatasetDict directory (unset: a Dataset directory).
    split: str | None = None
    # Texts: one column (single sentences) or two (sentence pairs). None with jsonl/csv:
    # "sentence", or "sentence1" + "sentence2", whichever the file has.
    text_columns: list[str] | None = Field(None, min_length=1, max_length=2)
    label_column: str = "label"
    # For a shift set covering a subset of the classes, the class names it covers; accuracy
    # then projects logits onto that subset (ImageNet-R/A style). Parquet shards may carry it
    # in their metadata instead.
    classes: list[str] | None = None
    # ObjectNet style: a JSON file {"<this split's class dir>": ["<train class dir>", ...]}.
    # Each listed class stands for that group of train classes (max logit over the group);
    # class dirs not in the file are skipped (ObjectNet classes outside ImageNet).
    class_map: str | None = None

    @model_validator(mode="after")
    def _one_projection(self) -> SplitSource:
        if self.classes is not None and self.class_map is not None:
            raise ValueError("set either classes (a subset) or class_map (groups), not both")
        if self.class_map is not None and self.format != "imagefolder":
            raise ValueError("class_map needs format imagefolder")
        if self.format == "imagefolder" and self.text_columns is not None:
            raise ValueError("text_columns needs format parquet, jsonl, csv or hf_disk")
        if self.split is not None and self.format != "hf_disk":
            raise ValueError("split (of a DatasetDict directory) needs format hf_disk")
        return self

    @property
    def is_text(self) -> bool:
        return self.format in ("jsonl", "csv", "hf_disk") or self.text_columns is not None


# data.memory_budget_mb unset: the decoded train split may take this share of a node's memory.
DEFAULT_MEMORY_SHARE = 0.1


def default_memory_budget_mb(node_bytes: float) -> float:
    return DEFAULT_MEMORY_SHARE * node_bytes / 2**20


class DataCfg(OmitsNewDefaults):
    _new_fields: ClassVar[tuple[str, ...]] = ("text_world",)
    world: WorldCfg | None = None
    text_world: TextWorldCfg | None = None  # the generated text task (instead of world)
    train: SplitSource | None = None
    test: SplitSource | None = None
    shifts: dict[str, SplitSource] = Field(default_factory=dict)
    # Human-readable class names in label order (zero-shot prompts): a list, "imagenet"
    # (open_clip's IMAGENET_CLASSNAMES, the order of ImageNet's sorted wnid folders), or None
    # (the ImageFolder directory names / the Parquet metadata).
    classnames: list[str] | Literal["imagenet"] | None = None
    heldout_fraction: float = Field(0.02, gt=0.0, lt=0.5)
    # Zero-shot prompt templates: "openai_imagenet" (open_clip's), "world", or explicit strings
    # containing "{}".
    templates: Literal["openai_imagenet", "world"] | list[str] = "openai_imagenet"
    # Training input (train/batches.py). A train split whose decoded images fit the budget is
    # decoded once per trial into memory; a larger one streams through DataLoader workers.
    # None: DEFAULT_MEMORY_SHARE of the node's memory (`train_budget_mb`).
    memory_budget_mb: float | None = Field(None, ge=0)
    # DataLoader workers of a streamed trial (None: the trial's CPUs less one, at least 1).
    # Part of the batch order, like the seed: a resumed trial must keep it.
    loader_workers: int | None = Field(None, ge=1)
    shuffle_window: int = Field(1024, ge=1)  # samples shuffled together (docs/data.md)
    # "auto": shift_flip for data.world (its images are at the model's size), otherwise
    # open_clip's training crop (RandomResizedCrop of the source image, scale 0.9..1).
    train_crop: Literal["auto", "shift_flip", "random_resized_crop"] = "auto"
    # Eval splits are decoded once into uint8 shards of this many images (the eval cache).
    eval_cache_shard: int = Field(1024, ge=1)
    # A corrupt image: an error naming it (false), or skipped and counted (true).
    skip_corrupt: bool = False

    def train_budget_mb(self, node_bytes: float) -> float:
        """The decoded train split's budget, in MB, on a node with `node_bytes` of memory."""
        if self.memory_budget_mb is not None:
            return self.memory_budget_mb
        return default_memory_budget_mb(node_bytes)

    @property
    def is_text(self) -> bool:
        """Texts (the generated text task, or text sources) rather than images."""
        return self.text_world is not None or (self.train is not None and self.train.is_text)

    @model_validator(mode="after")
    def _one_source(self) -> DataCfg:
        generated = [n for n in ("world", "text_world") if getattr(self, n) is not None]
        if not generated and (self.train is None or self.test is None):
            raise ValueError("set either data.world or both data.train and data.test")
        if len(generated) > 1:
            raise ValueError("set data.world (images) or data.text_world (texts), not both")
        if generated and (self.train or self.test or self.shifts):
            raise ValueError(f"data.{generated[0]} generates its own splits; "
                             "drop data.train/test/shifts")
        sources = [s for s in (self.train, self.test, *self.shifts.values()) if s is not None]
        if not generated and len({s.is_text for s in sources}) > 1:
            raise ValueError("mixed text and image splits: every text split needs "
                             "text_columns (parquet) or format jsonl/csv/hf_disk")
        if isinstance(self.templates, list):
            bad = [t for t in self.templates if "{}" not in t]
            if bad:
                raise ValueError(f"templates must contain '{{}}': {bad}")
        return self


# ---------------------------------------------------------------- model and training


class PretrainCfg(Strict):
    """Short contrastive pre-training on the data's captions: produces the shared initialisation."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(100, ge=0)
    seed: int = 0
    threads: int = Field(2, ge=1)
    # What the base learns from: "train" (the task's own train captions, held-out excluded) or
    # "web" (data.world's broad corpus: photos plus every shift's style in fresh samples, as
    # CLIP's web data is broader than ImageNet; data/world.py `web_corpus`), of
    # web_per_class image-caption pairs per class.
    corpus: Literal["train", "web"] = "train"
    web_per_class: int = Field(1000, ge=1)
    web_photo_share: float = Field(0.5, ge=0, le=1)  # the rest: the shift styles, evenly


class ModelCfg(OmitsNewDefaults):
    _new_fields: ClassVar[tuple[str, ...]] = ("family", "max_length")
    # Which kind of model (raysoup/models/families.py): open_clip image classification, or
    # hf_text, a Hugging Face sequence classifier (docs/text-models.md).
    family: Literal["open_clip", "hf_text"] = "open_clip"
    # open_clip: a model name, built-in (e.g. "ViT-B-32") or one of raysoup/models/configs/.
    # hf_text: where the architecture and tokenizer come from (a Hub id, a save_pretrained
    # directory, or raysoup:<name>, a base shipped with raysoup).
    name: str = "ViT-B-32"
    # Weight source: an open_clip pretrained tag (e.g. "openai"), a local weights file, or None
    # with `pretrain` set (the project's own base checkpoint, cached in the workdir).
    pretrained: str | None = None
    tokenizer: Literal["open_clip", "world"] = "open_clip"
    pretrain: PretrainCfg | None = None
    max_length: int = Field(128, ge=8, le=8192)  # hf_text: tokens per example (padded, cut)

    @model_validator(mode="after")
    def _has_weights(self) -> ModelCfg:
        if self.pretrained is None and self.pretrain is None:
            raise ValueError("no weight source: set model.pretrained (tag or file) or model.pretrain")
        if self.pretrained is not None and self.pretrain is not None:
            raise ValueError("set only one of model.pretrained and model.pretrain")
        return self


class TrainHParams(Strict):
    """Hyper-parameters of one fine-tuning run; a sweep samples some of them."""

    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(128, ge=2)
    warmup_steps: int = Field(50, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup: float = Field(0.0, ge=0)  # mixup alpha (0 = off)
    cutmix: float = Field(0.0, ge=0)  # cutmix alpha (0 = off)
    randaug_n: int = Field(0, ge=0)  # RandAugment ops per image (0 = off)
    randaug_m: int = Field(9, ge=0, le=30)
    seed: int = 0


class ResourcesCfg(Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


# A data-parallel trial's own Tune process only drives its TorchTrainer (the workers hold the
# resources): it asks for this sliver of a CPU (non-zero, so that Tune places it).
DATA_PARALLEL_DRIVER_CPU = 0.01


class SoupSearchCfg(Strict):
    """sweep.search: soup. The first `initial` trials are drawn at random; later ones are a
    fresh draw (share `explore`) or perturb the anytime soup's strongest member, away from the
    trials it rejected (raysoup/search/proposer.py)."""

    initial: int = Field(4, ge=1)
    explore: float = Field(0.2, ge=0.0, le=1.0)  # share of proposals that are fresh draws
    step: float = Field(0.15, gt=0.0, le=1.0)  # perturbation sd, as a fraction of each range


class AshaCfg(Strict):
    """sweep.scheduler: asha (Tune's AsyncHyperBandScheduler on per-epoch held-out accuracy)."""

    grace_period: int = Field(2, ge=1)  # epochs every trial gets
    reduction_factor: int = Field(3, ge=2)


class AnytimeCfg(Strict):
    enabled: bool = True
    # The anytime soup's eval actor. 0 CPUs: it rides along beside trials that take every CPU
    # (its evaluations are short); on a cluster give it a CPU or a GPU of its own.
    cpus: float = Field(0.0, ge=0)
    gpus: float = Field(0.0, ge=0)


class SweepCfg(Strict):
    num_samples: int = Field(8, ge=1, strict=True)  # 4.0 or true is a typo, not 4 trials
    seed: int = 0
    max_concurrent: int = Field(2, ge=1)
    resources_per_trial: ResourcesCfg = ResourcesCfg()
    base: TrainHParams = TrainHParams()
    space: dict[str, Distribution] = Field(default_factory=dict)
    max_failures: int = Field(2, ge=0)
    # A finished trial's worker runs the next trial: no process start and torch import per
    # trial, which dominate short trials. An ingredient does not depend on the worker that
    # trained it: bit-identical either way.
    reuse_actors: bool = True
    # Data-parallel trials: each trial runs Ray Train's TorchTrainer with this many workers
    # (DDP: NCCL on GPUs, gloo on CPUs) from its Tune trial, each with resources_per_worker;
    # the global batch (base.batch_size) is split evenly between them. 1: the single-process
    # trial with resources_per_trial (nothing else changes, the ingredients' bytes included).
    workers_per_trial: int = Field(1, ge=1)
    resources_per_worker: ResourcesCfg = ResourcesCfg()
    # How trials are proposed: random (Tune's random search over `space`), grid (every
    # combination of the `choice` values, num_samples random draws of the rest each: Tune's
    # grid_search), optuna (TPE through Tune's integration; `pip install raysoup[optuna]`)
    # or soup (the soup-aware search: a trial's objective is its marginal gain to the anytime
    # soup).
    search: Literal["random", "grid", "optuna", "soup"] = "random"
    soup_search: SoupSearchCfg = SoupSearchCfg()
    # fifo runs every trial to the end; asha stops trials whose held-out accuracy at a rung
    # trails (Tune's ASHA). A stopped trial is no ingredient (README, "Search and scheduling").
    scheduler: Literal["fifo", "asha"] = "fifo"
    asha: AshaCfg = AshaCfg()
    # Each finished trial is scored on held-out at once and offered to a running greedy soup
    # (the sweep's MLflow run carries soup/heldout per finished trial; report: anytime curve).
    anytime: AnytimeCfg = AnytimeCfg()

    @property
    def trials(self) -> int:
        """How many trials the sweep runs: num_samples, times the grid under search: grid."""
        if self.search != "grid":
            return self.num_samples
        return self.num_samples * math.prod(
            as_dist(d).grid_points() for d in self.space.values())

    @model_validator(mode="after")
    def _soup_search_needs_anytime(self) -> SweepCfg:
        if self.search == "soup" and not self.anytime.enabled:
            raise ValueError("sweep.search: soup needs the anytime soup "
                             "(sweep.anytime.enabled: true): it scores trials by their gain to it")
        return self

    @model_validator(mode="after")
    def _batches_split_evenly(self) -> SweepCfg:
        if self.workers_per_trial == 1:
            return self
        sizes = {self.base.batch_size}
        dist = self.space.get("batch_size")
        values = None if dist is None else as_dist(dist).finite_values()
        if dist is not None and values is None:
            raise ValueError("sweep.space.batch_size: with sweep.workers_per_trial > 1, use a "
                             "constant or {choice: [...]} of multiples of the worker count")
        if values is not None:
            # A constant replaces the base batch size; a choice is checked with it.
            sizes = set(values) if isinstance(dist, int | float) else sizes | set(values)
        uneven = sorted(int(b) for b in sizes if int(b) % self.workers_per_trial)
        if uneven:
            raise ValueError(f"sweep.workers_per_trial={self.workers_per_trial}: batch size(s) "
                             f"{uneven} do not split evenly between the workers (the global "
                             "batch must equal the single-worker trial's)")
        return self

    @field_validator("space")
    @classmethod
    def _known_hparams(cls, space: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(space) - set(TrainHParams.model_fields))
        if unknown:
            raise ValueError(
                f"unknown hyper-parameter(s) {unknown}; valid: {sorted(TrainHParams.model_fields)}"
            )
        errors = []
        for name, dist in space.items():
            problem = _space_problem(name, dist)
            if problem is not None:
                errors.append({"type": PydanticCustomError("sweep_space", "{problem}",
                                                           {"problem": problem}),
                               "loc": (name,), "input": _plain(dist)})
        if errors:
            # Raised as a ValidationError so each error's path is sweep.space.<name>.
            raise ValidationError.from_exception_data("space", errors)
        return space


def _plain(dist: Any) -> Any:
    return as_dist(dist).plain()


def _space_problem(name: str, dist: Any) -> str | None:
    """Why `dist` may draw a value TrainHParams refuses for `name`, or None.

    Tune draws loguniform/uniform from [low, high), randint from [low, high) and choice from
    its list; every value a trial could get is checked (both bounds of a range: the
    hyper-parameters' constraints are intervals)."""
    d = as_dist(dist)
    problem = d.problem(name, TrainHParams.model_fields[name].annotation is int)
    if problem is not None:
        return problem
    for value in d.extremes():
        try:
            TrainHParams.model_validate({name: value})
        except ValidationError as err:
            return f"can draw {value!r}: {err.errors()[0]['msg']}"
    return None


class EvalCfg(OmitsNewDefaults):
    _new_fields: ClassVar[tuple[str, ...]] = ("logits_cache_mb",)
    num_actors: int = Field(2, ge=1)
    batch_size: int = Field(500, ge=1)
    cpus_per_actor: float = Field(1, gt=0)
    gpus_per_actor: float = Field(0, ge=0)
    # The evaluate stage keeps the ingredients' logits (float32, in the workdir's cache) for
    # the logit ensemble while all of them fit this many MiB; beyond, the ensemble runs its
    # N forward passes again (evaluate/logits_cache.py).
    logits_cache_mb: float = Field(1024, ge=0)


# Settings that moved into a method's own section (`soup.<method>`).
_MOVED = {"greedy_accept_ties": "soup.greedy.accept_ties", "speculation": "soup.greedy.speculation"}


class SoupBase(Strict):
    """The soup stage's own settings; each merge method's section (`soup.learned`,
    `soup.ties`, ...) is added from `raysoup.soup_settings.SECTIONS`, with its defaults."""

    recipes: list[str] = Field(default_factory=lambda: ["uniform", "greedy"], min_length=1)
    num_shards: int = Field(2, ge=1)
    include_zeroshot: bool = False
    # An ingredient with NaN/Inf weights: excluded from soups with a warning, or (strict) an error.
    strict: bool = False

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data):
        if isinstance(data, dict):
            for old, new in _MOVED.items():
                if old in data:
                    raise ValueError(f"soup.{old} is now {new}")
        return data

    @field_validator("recipes")
    @classmethod
    def _known_recipes(cls, recipes: list[str]) -> list[str]:
        unknown = [r for r in recipes if r not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown recipe(s) {unknown}; valid: {sorted(SECTIONS)}")
        return recipes


def _soup_cfg() -> type[SoupBase]:
    sections = {name: (settings, settings()) for name, settings in SECTIONS.items()}
    return create_model("SoupCfg", __base__=SoupBase, __module__=__name__, **sections)


SoupCfg = _soup_cfg()


class TrackingCfg(Strict):
    # None: SQLite database in the workdir (sqlite:///WORKDIR/mlflow.db).
    uri: str | None = None
    experiment: str | None = None  # default: the experiment name
    # Each weight soup and the best single model as an MLflow Model (pyfunc: images -> logits,
    # over an open_clip export; texts -> labels and probabilities, over an hf export) on its
    # run; `raysoup export` writes the same files.
    log_models: bool = True
    # Each soup a version of one registered model (alias `champion`: the best by held-out
    # accuracy). On for every store: a SQLite store has MLflow's registry too.
    # (Spelled `register` in YAML; the attribute name would shadow BaseModel.register.)
    register_soups: bool = Field(default=True, alias="register")
    # default: the MLflow experiment's name
    registered_model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)  # + Strict's

    @model_validator(mode="after")
    def _register_needs_models(self) -> TrackingCfg:
        if self.register_soups and not self.log_models:
            raise ValueError("tracking.register needs tracking.log_models (a registered version "
                             "is a logged model); set register: false too")
        return self


# ---------------------------------------------------------------- analysis


class TransferSource(Strict):
    """A labelled image dataset on disk (local or s3:// / gs://): an ImageFolder
    (root/<class>/<image>) or Parquet shards (docs/data.md)."""

    format: Literal["imagefolder", "parquet"]
    path: str = Field(min_length=1)


class TransferCfg(Strict):
    """`raysoup analyze transfer` on a second dataset of the user's (docs/analysis.md):
    its images read zero-shot through the base model's text tower."""

    test: TransferSource
    # Class names in label order (the prompts' words); None: the dataset's own (the ImageFolder
    # directory names, the Parquet metadata).
    classnames: list[str] | None = Field(None, min_length=1)
    # Prompt templates with one "{}"; None: data.templates (those of the sweep's zero-shot head).
    templates: Literal["openai_imagenet", "world"] | list[str] | None = None
    # The task's name in the table, the figure and the findings; None: the path's last part.
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_. -]+$")

    @field_validator("templates")
    @classmethod
    def _templates(cls, templates):
        if isinstance(templates, list):
            if not templates:
                raise ValueError("templates is empty: give at least one, e.g. 'a photo of a {}.'")
            bad = [t for t in templates if "{}" not in t]
            if bad:
                raise ValueError(f"templates must contain '{{}}': {bad}")
        return templates

    @field_validator("classnames")
    @classmethod
    def _classnames(cls, names):
        if names is not None and len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"classnames repeat {twice[:5]}: each class needs its own name")
        return names

    @property
    def task_name(self) -> str:
        return self.name or self.test.path.rstrip("/").rsplit("/", 1)[-1]


class AnalysisCfg(Strict):
    """`raysoup analyze`'s settings that live in the config (its command-line ones do not)."""

    transfer: TransferCfg | None = None  # None: the generated world's colour task


class ExperimentCfg(OmitsNewDefaults):
    _new_fields: ClassVar[tuple[str, ...]] = ("analysis",)
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    workdir: str | None = None  # default: ./runs/<name>
    model: ModelCfg
    data: DataCfg
    sweep: SweepCfg = SweepCfg()
    eval: EvalCfg = EvalCfg()
    soup: SoupCfg = SoupCfg()
    tracking: TrackingCfg = TrackingCfg()
    analysis: AnalysisCfg = AnalysisCfg()

    @field_validator("name")
    @classmethod
    def _not_a_relative_dir(cls, name: str) -> str:
        # The default workdir is runs/<name>: "." or ".." would be runs/ itself or its parent.
        if set(name) == {"."}:
            raise ValueError(f"{name!r} is not a usable name (it names a directory, not an "
                             "experiment: the default workdir is runs/<name>)")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentCfg:
        if self.model.tokenizer == "world" and self.data.world is None:
            raise ValueError("model.tokenizer 'world' needs data.world")
        if self.model.tokenizer == "world" and self.data.templates == "openai_imagenet":
            raise ValueError("model.tokenizer 'world' knows only the world's words: "
                             "set data.templates to 'world' (or a list of world phrases)")
        if self.model.pretrain is not None and self.data.world is None:
            raise ValueError("model.pretrain needs captions: only data.world provides them")
        text_model = self.model.family == "hf_text"
        if text_model != self.data.is_text:
            raise ValueError(f"model.family {self.model.family} needs "
                             f"{'text' if text_model else 'image'} data, and data gives "
                             f"{'texts' if self.data.is_text else 'images'} (text splits: "
                             "data.text_world, or sources with text_columns / jsonl / csv / hf_disk)")
        return self

    @model_validator(mode="after")
    def _transfer_readable(self) -> ExperimentCfg:
        transfer = self.analysis.transfer
        if transfer is None:
            return self
        if self.model.family != "open_clip":
            raise ValueError(f"analysis.transfer: model.family {self.model.family} has no text "
                             "tower to read a new task's class names (open_clip only)")
        if self.model.tokenizer == "world" and transfer.templates == "openai_imagenet":
            raise ValueError("analysis.transfer.templates: model.tokenizer 'world' knows only "
                             "the world's words: 'world' or a list of world phrases")
        return self

    def resolved_workdir(self, override: str | None = None) -> Path:
        """The workdir as a local path: itself, or the local mirror of an s3:// / gs:// URI
        (`raysoup.storage`)."""
        return workdir_path(override or self.workdir or str(Path("runs") / self.name))

    def fingerprint(self, *parts: str) -> str:
        """Short stable hash of the named top-level sections (cache keys, e.g. the base model)."""
        payload = {p: self.model_dump(mode="json")[p] for p in parts}
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def workdir_path(text: str) -> Path:
    try:
        return storage.mirror_of(text) if storage.is_uri(text) else Path(text).absolute()
    except storage.StorageError as e:
        raise ConfigError(f"workdir: {e}") from None


# ---------------------------------------------------------------- loading


def _format_errors(err: ValidationError, source: str, overrides: list[str] = ()) -> str:
    """One line per problem: the field path, what is wrong (with the nearest field for an
    unknown key), and where the value came from (`source`, or the `--set` that gave it)."""
    grouped: dict[tuple, list[dict]] = {}
    for e in err.errors():
        grouped.setdefault(_problem_loc(e["loc"]), []).append(e)
    lines = [f"invalid experiment config {source}:"]
    for loc, errors in grouped.items():
        path = ".".join(str(p) for p in loc) or "(top level)"
        branches = [e for e in errors if len(e["loc"]) > len(loc)]
        messages = [_message(e, loc) for e in errors if e not in branches]
        if branches:  # one problem however many union branches pydantic tried
            messages.append(_union_message(branches, loc))
        for msg in dict.fromkeys(messages):
            lines.append(f"  {path}: {msg}{_origin(loc, overrides)}")
    return "\n".join(lines)


def _union_message(branches: list[dict], loc: tuple) -> str:
    forms = dict.fromkeys(_form(str(e["loc"][len(loc)])) for e in branches)
    return f"{branches[0]['input']!r} is none of the accepted forms: {', '.join(forms)}"


def _form(branch: str) -> str:
    """`LogUniform` -> `{loguniform: ...}` (a distribution's YAML spelling), `float` -> `a
    float`."""
    if branch[:1].isupper():
        return f"{{{branch.lower()}: ...}}"
    name = branch.split("[")[0]
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _problem_loc(loc: tuple) -> tuple:
    """The field path, without the names pydantic gives the union branches it tried
    (`sweep.space.lr.float`, `...lr.Uniform`, `...lr.function-plain[...]`): the user wrote
    `sweep.space.lr`."""
    out = []
    for part in loc:
        if isinstance(part, str) and (part[:1].isupper() or "[" in part or part in _TYPE_NAMES):
            break
        out.append(part)
    return tuple(out)


_TYPE_NAMES = {"int", "float", "str", "bool", "list", "dict", "none", "constrained-float",
               "constrained-int", "function-plain", "function-after", "function-before"}


def _message(e: dict, loc: tuple) -> str:
    if e["type"] == "extra_forbidden":
        known = _fields_at(loc[:-1])
        near = difflib.get_close_matches(str(loc[-1]), known, n=1) if known else []
        hint = f"; did you mean {'.'.join(map(str, (*loc[:-1], near[0])))}?" if near else ""
        return f"unknown field{hint}" + (f" (valid: {', '.join(known)})" if known and not near
                                          else "")
    return e["msg"].removeprefix("Value error, ")


def _fields_at(loc: tuple) -> list[str]:
    """The field names of the config section at `loc` ([] if it is not a section)."""
    model: Any = ExperimentCfg
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        model = _section_type(fields[part].annotation)
    return sorted(getattr(model, "model_fields", None) or [])


def _section_type(annotation: Any) -> Any:
    """`WorldCfg | None` -> WorldCfg: the model class a field holds, if any."""
    for t in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _origin(loc: tuple, overrides: list[str]) -> str:
    """` (from --set K=V)` when an override set this field or a section holding it."""
    path = [str(p) for p in loc]
    for text in reversed(overrides):  # the last one given wins
        key = text.partition("=")[0].strip().split(".")
        if key == path[: len(key)] or path == key[: len(path)]:
            return f" (from --set {text})"
    return ""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` → (["a","b","c"], value parsed as YAML, so numbers and lists work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"override {text!r}: {where} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentCfg:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"experiment config not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return _validated(apply_overrides(raw, overrides or []), str(path), overrides or [])


def revalidate(cfg: ExperimentCfg, overrides: list[str]) -> ExperimentCfg:
    """`cfg` with `overrides` applied (the Python API's `overrides=` on a config object)."""
    raw = apply_overrides(cfg.model_dump(mode="json"), overrides)
    return _validated(raw, f"({cfg.name}, the config given)", overrides)


def _validated(raw: dict[str, Any], source: str, overrides: list[str]) -> ExperimentCfg:
    try:
        return ExperimentCfg.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source, overrides)) from None
