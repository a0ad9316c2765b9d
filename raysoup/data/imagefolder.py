"""ImageFolder (ImageNet layout): root/<class_dir>/<image file>.

Images stay file paths until decoded. A shift set that covers only some classes (ImageNet-R,
ImageNet-A style) is mapped into the training label space by its directory names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from raysoup.data import fs as data_fs
from raysoup.data.images import DataError, LabeledImages

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _listing(path: str) -> dict[str, list[str]]:
    """{class dir: sorted image file paths} from one recursive listing (one LIST walk on S3)."""
    root = data_fs.info(path)
    if root.type != pafs.FileType.Directory:
        raise DataError(f"image folder not found: {path}")
    _fsys, key = data_fs.resolve(path)
    prefix = key.rstrip("/") + "/"
    dirs: dict[str, list[str]] = {}
    for e in data_fs.listdir(path, recursive=True):
        rel = e.path.removeprefix(prefix)
        parts = rel.split("/")
        if parts[0].startswith("."):
            continue
        if e.type == pafs.FileType.Directory and len(parts) == 1:
            dirs.setdefault(parts[0], [])
        elif (e.type == pafs.FileType.File and len(parts) == 2
              and Path(parts[1]).suffix.lower() in IMAGE_SUFFIXES):
            dirs.setdefault(parts[0], []).append(data_fs.join(path, *parts))
    if not dirs:
        raise DataError(f"image folder {path} has no class directories")
    return {d: sorted(files) for d, files in sorted(dirs.items())}


def class_dirs_of(path: Path | str) -> list[str]:
    """Sorted class directory names under an ImageFolder root."""
    return list(_listing(str(path)))


def _check_nonempty(path: str, listing: dict[str, list[str]], dirs) -> None:
    empty = [d for d in dirs if not listing[d]]
    if empty:
        raise DataError(f"image folder {path}: {len(empty)} class folder(s) without images "
                        f"({sorted(IMAGE_SUFFIXES)}): {empty[:5]}")


def read_imagefolder(path: Path | str, classnames: list[str] | None = None,
                     class_dirs: list[str] | None = None) -> LabeledImages:
    """Read root/<class_dir>/* into LabeledImages (images are file paths).

    class_dirs: the reference label space as directory names (e.g. the training folder's);
    defaults to this folder's own dirs. If this folder covers only some of them, labels still
    index the full space and class_subset lists the covered classes.
    classnames: human-readable names for that label space; default = the directory names.
    """
    path = str(path)
    listing = _listing(path)
    own = list(listing)
    space = list(class_dirs) if class_dirs is not None else own
    if class_dirs is not None and (numeric := numeric_dir_map(own, space)) is not None:
        # ImageNetV2 names its dirs by class index: 0..999 → the reference dirs in sorted order.
        listing = {numeric[d]: files for d, files in listing.items()}
        own = sorted(listing)
    _check_nonempty(path, listing, own)
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
        for f in listing[d]:
            keys.append(f"{d}/{f.rsplit('/', 1)[-1]}")
            files.append(f)
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
    path = str(path)
    listing = _listing(path)
    own = list(listing)
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
    owner: dict[str, str] = {}
    for d in sorted(class_map):
        for t in class_map[d]:
            if t in owner and owner[t] != d:
                # A class in two groups would count for whichever group comes last.
                raise DataError(f"{map_file}: {t!r} is in the groups of both {owner[t]!r} and "
                                f"{d!r}; each train class may stand for one class only")
            owner[t] = d
    _check_nonempty(path, listing, sorted(class_map))
    keys, files, labels = [], [], []
    for label, d in enumerate(sorted(class_map)):
        for f in listing[d]:
            keys.append(f"{d}/{f.rsplit('/', 1)[-1]}")
            files.append(f)
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
