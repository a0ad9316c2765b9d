"""ImageFolder (ImageNet layout): root/<class_dir>/<image file>.

Images stay file paths until decoded. A shift set that covers only some classes (ImageNet-R,
ImageNet-A style) is mapped into the training label space by its directory names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysoup.data.images import DataError, LabeledImages

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def class_dirs_of(path: Path | str) -> list[str]:
    """Sorted class directory names under an ImageFolder root."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"image folder not found: {path}")
    dirs = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(f"image folder {path} has no class directories")
    return dirs


def read_imagefolder(path: Path | str, classnames: list[str] | None = None,
                     class_dirs: list[str] | None = None) -> LabeledImages:
    """Read root/<class_dir>/* into LabeledImages (images are file paths).

    class_dirs: the reference label space as directory names (e.g. the training folder's);
    defaults to this folder's own dirs. If this folder covers only some of them, labels still
    index the full space and class_subset lists the covered classes.
    classnames: human-readable names for that label space; default = the directory names.
    """
    path = Path(path)
    own = class_dirs_of(path)
    space = list(class_dirs) if class_dirs is not None else own
    unknown = sorted(set(own) - set(space))
    if unknown:
        raise DataError(f"{path}: class directories {unknown} are not in the reference class "
                        f"list ({len(space)} classes, e.g. {space[:3]})")
    names = list(classnames) if classnames is not None else space
    if len(names) != len(space):
        raise DataError(f"{path}: {len(names)} classnames for {len(space)} class directories")
    index = {d: i for i, d in enumerate(space)}
    keys, files, labels = [], [], []
    for d in own:
        for f in sorted((path / d).iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                keys.append(f"{d}/{f.name}")
                files.append(str(f))
                labels.append(index[d])
    if not files:
        raise DataError(f"image folder {path} contains no images ({sorted(IMAGE_SUFFIXES)})")
    covered = sorted(index[d] for d in own)
    subset = covered if len(covered) < len(space) else None
    return LabeledImages(keys, files, np.asarray(labels, np.int64), names, None, subset)
