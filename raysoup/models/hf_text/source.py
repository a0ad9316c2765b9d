"""Where a text model comes from: a base shipped with raysoup (`raysoup:<name>`), a local
`save_pretrained` directory, or a Hugging Face Hub id (downloaded by transformers itself)."""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).parents[1] / "bases"
PREFIX = "raysoup:"


class TextModelError(ValueError):
    """A text model's source is unusable; the message lists what was tried."""


def resolve(source: str) -> str:
    """A local directory (shipped base or save_pretrained dir) as a path, else the Hub id.

    A string that looks like a path but is no directory is an error here, not a download."""
    if source.startswith(PREFIX):
        name = source[len(PREFIX):]
        path = SHIPPED / name
        if not (path / "config.json").is_file():
            shipped = sorted(p.name for p in SHIPPED.iterdir() if (p / "config.json").is_file())
            raise TextModelError(f"{source}: no text base shipped with raysoup under that name "
                                 f"(shipped text bases: {shipped})")
        return str(path)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TextModelError(f"{source}: a directory without config.json (tried: a shipped "
                                 "base raysoup:<name>, a save_pretrained directory, a Hub id)")
        return str(path.absolute())
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise TextModelError(f"{source}: no such directory (tried: a shipped base "
                             "raysoup:<name>, a save_pretrained directory, a Hub id)")
    return source  # a Hub id ("bert-base-uncased", "org/name"): transformers fetches it
