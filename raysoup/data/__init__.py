"""Datasets: the synthetic world, Parquet shards, ImageFolders, the held-out split, sources.

transforms (torch/torchvision) is not imported here so that reading data stays light.
"""

from raysoup.data.imagefolder import read_imagefolder
from raysoup.data.images import DataError, LabeledImages
from raysoup.data.parquet import read_parquet_split, write_parquet_split
from raysoup.data.sources import DatasetSplits, load_splits
from raysoup.data.split import heldout_mask, split_heldout
from raysoup.data.world import CLASSNAMES, TEMPLATES, generate_world, normalize_words, vocabulary

__all__ = [
    "CLASSNAMES", "TEMPLATES", "DataError", "DatasetSplits", "LabeledImages", "generate_world",
    "heldout_mask", "load_splits", "normalize_words", "read_imagefolder", "read_parquet_split",
    "split_heldout", "vocabulary", "write_parquet_split",
]
