"""Imported by the DataLoader workers' fork server (train/batches.py) before it forks any.

It imports what a worker runs once, then freezes the garbage collector's view of those
objects: a worker's collections would otherwise write to every inherited object's header,
making the server's pages the worker's own, so its memory would creep up batch by batch.
"""

import gc

import torchvision.io  # noqa: F401  (the JPEG decoder: 1.7 s to import, once here)

import raysoup.train.batches  # noqa: F401  (torch, PIL, pyarrow, timm's RandAugment)

gc.collect()
gc.freeze()
