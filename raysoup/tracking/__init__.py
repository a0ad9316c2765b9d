"""The only MLflow code in raysoup: the runs of a workdir (`tracker`), its models as MLflow
Models (`mlflow_model`) and the pyfuncs those serve (`pyfunc_model` for images,
`text_pyfunc_model` for text; run by MLflow itself)."""

from raysoup.tracking.comparison import model_metrics
from raysoup.tracking.mlflow_model import save_pyfunc, save_text_pyfunc
from raysoup.tracking.models import CHAMPION, MODEL_ID
from raysoup.tracking.store import (
    KIND,
    MODEL,
    RECIPE,
    ROLE,
    SOUP_ID,
    TRIAL,
    WORKDIR,
    WORKDIR_ID,
    is_server,
    seed_sqlite_store,
)
from raysoup.tracking.tracker import (
    Tracker,
    TrackingUnavailable,
    default_uri,
    quiet,
    workdir_id,
)

__all__ = [
    "CHAMPION", "KIND", "MODEL", "MODEL_ID", "RECIPE", "ROLE", "SOUP_ID", "TRIAL", "WORKDIR", "WORKDIR_ID",
    "Tracker", "TrackingUnavailable", "default_uri", "is_server", "model_metrics", "quiet", "save_pyfunc", "save_text_pyfunc", "seed_sqlite_store", "workdir_id",
]
