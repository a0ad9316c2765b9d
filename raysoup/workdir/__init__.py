"""The workdir: its layout (`layout.Workdir`) and the records a run writes there and reads
back, each with one reader and one writer: the ingredient manifest, the soup record
(recipe.json), the config snapshot (experiment.yaml) and the trial outcome records.

Sits right above storage and config: nothing here imports torch, Ray or MLflow."""

from raysoup.workdir.layout import (
    ANYTIME_JOURNAL,
    AUDIT_FILE,
    CONFIG_SNAPSHOT,
    RECIPE_FILE,
    RESULTS_FILE,
    SWEEP_DIR,
    SWEEP_NAME,
    TRAIN_DIR,
    ZEROSHOT,
    Workdir,
    soup_journal,
)
from raysoup.workdir.manifest import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    IngredientError,
    IngredientManifest,
    diverged_hparams,
    read_record,
    write_trial_outcome,
)
from raysoup.workdir.snapshot import WorkdirMismatch, read_snapshot, snapshot_config
from raysoup.workdir.soup_record import (
    CandidateSet,
    SoupRecord,
    cooked_soup_id,
    ensemble_members,
    inference_costs,
    model_name,
    recipe_files,
    recipe_info,
    write_recipe_file,
)

__all__ = [
    "ANYTIME_JOURNAL",
    "AUDIT_FILE",
    "CONFIG_SNAPSHOT",
    "MANIFEST_FILE",
    "RECIPE_FILE",
    "RESULTS_FILE",
    "SWEEP_DIR",
    "SWEEP_NAME",
    "TRAIN_DIR",
    "WEIGHTS_FILE",
    "ZEROSHOT",
    "CandidateSet",
    "IngredientError",
    "IngredientManifest",
    "SoupRecord",
    "Workdir",
    "WorkdirMismatch",
    "cooked_soup_id",
    "diverged_hparams",
    "ensemble_members",
    "inference_costs",
    "model_name",
    "read_record",
    "read_snapshot",
    "recipe_files",
    "recipe_info",
    "snapshot_config",
    "soup_journal",
    "write_recipe_file",
    "write_trial_outcome",
]
