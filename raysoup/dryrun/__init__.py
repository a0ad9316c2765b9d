"""`--dry-run`'s plan: the config described (`summary`), the data sources counted
(`sources`), the job sized (`sizing`) and checked against the cluster file (`cluster`)."""

from raysoup.dryrun.summary import describe

__all__ = ["describe"]
