"""The only MLflow code in raysoup: the runs of a workdir (`tracker`), its models as MLflow
Models (`mlflow_model`) and the pyfunc those serve (`pyfunc_model`, run by MLflow itself)."""

from raysoup.tracking.mlflow_model import PYFUNC_CODE, PYFUNC_REQUIREMENTS, save_pyfunc
from raysoup.tracking.tracker import (
    CHAMPION,
    MODEL_ID,
    RECIPE,
    ROLE,
    SOUP_ID,
    TRIAL,
    WORKDIR,
    WORKDIR_ID,
    Tracker,
    default_uri,
    is_server,
    quiet,
    seed_sqlite_store,
    workdir_id,
)

__all__ = [
    "CHAMPION", "MODEL_ID", "PYFUNC_CODE", "PYFUNC_REQUIREMENTS", "RECIPE", "ROLE", "SOUP_ID",
    "TRIAL", "WORKDIR", "WORKDIR_ID", "Tracker", "default_uri", "is_server", "quiet",
    "save_pyfunc", "seed_sqlite_store", "workdir_id",
]
