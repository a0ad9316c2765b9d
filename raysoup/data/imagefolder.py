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


def read_mapped_imagefolder(path: Path | str, class_map: dict[str, list[str]],
                            train_dirs: list[str], map_file: str = "class_map") -> LabeledImages:
    """An ImageFolder whose classes each stand for a group of train classes (ObjectNet).

    Labels index the mapped directories (sorted); `class_groups` holds each one's train class
    indices. Directories the map does not name are skipped.
    """
    path = Path(path)
    own = class_dirs_of(path)
    index = {d: i for i, d in enumerate(train_dirs)}
    missing = sorted(set(class_map) - set(own))
    if missing:
        raise DataError(f"{map_file}: class dirs {missing[:5]} are not in {path}")
    groups = []
    for d in sorted(class_map):
        targets = class_map[d]
        unknown = [t for t in targets if t not in index]
        if unknown or not targets:
            raise DataError(f"{map_file}: {d!r} maps to {unknown[:5] or 'nothing'}, not train "
                            f"classes (e.g. {train_dirs[:3]})")
        groups.append(sorted(index[t] for t in targets))
    keys, files, labels = [], [], []
    for label, d in enumerate(sorted(class_map)):
        for f in sorted((path / d).iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                keys.append(f"{d}/{f.name}")
                files.append(str(f))
                labels.append(label)
    if not files:
        raise DataError(f"image folder {path} has no images in the mapped class dirs")
    return LabeledImages(keys, files, np.asarray(labels, np.int64), sorted(class_map),
                         class_groups=groups)


def numeric_dir_map(own: list[str], space: list[str]) -> dict[str, str] | None:
    """{"0": space[0], ...} when a folder's dirs are class indices (ImageNetV2 names its dirs
    0..999 after the sorted ImageNet wnids), else None.

    Only when every dir is a plain decimal integer below len(space) and none is itself a name
    in `space`: a label space of numeric names ("0", "1", ...) is then matched by name as usual.
    """
    if not own or any(d in space for d in own):
        return None
    # str.isdecimal also accepts other scripts' digits; the release uses ASCII "0".."999".
    if not all(d.isascii() and d.isdecimal() and int(d) < len(space) for d in own):
        return None
    return {d: space[int(d)] for d in own}
