"""The pipeline once per sweep seed (and per sweep search), for `raysoup fidelity`: does a
soup's gain hold across sweeps? Seeds pair the runs; the analysis is `raysoup.fidelity`.

Workdirs: ROOT/seed-<s>, or ROOT/<search>/seed-<s> when searches are compared. What does not
depend on the sweep seed (generated data, a pre-trained base) is built once and hard-linked
into the other workdirs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from raysoup.config import ExperimentCfg
from raysoup.orchestration.pipeline import run_pipeline


def share_prepared(src: Path, dst: Path) -> None:
    """Hard-link src's generated data and cached base into dst (where dst has none): raysoup
    replaces files by rename, never in place, so a link is never written through."""
    for shared in ("data", "base"):
        if (src / shared).is_dir() and not (dst / shared).exists():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src / shared, dst / shared, copy_function=os.link)


def run_seeds(cfg: ExperimentCfg, root: Path, seeds: int, address: str | None = None,
              share_from: Path | None = None) -> list[Path]:
    """The config's pipeline once per sweep seed 0..seeds-1 under root/seed-<s>; what does
    not depend on the sweep seed (generated data, a pre-trained base) is built in the first
    workdir (or taken from `share_from`) and hard-linked into the others. A finished seed is
    skipped, an unfinished one resumed (the pipeline's own resume)."""
    workdirs = []
    for seed in range(seeds):
        workdir = root / f"seed-{seed}"
        if workdirs or share_from is not None:
            share_prepared(workdirs[0] if workdirs else share_from, workdir)
        print(f"raysoup fidelity: sweep seed {seed} of {seeds} → {workdir}", file=sys.stderr)
        run_pipeline(cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"seed": seed})}),
                     workdir, address=address)
        workdirs.append(workdir)
    return workdirs


def with_search(cfg: ExperimentCfg, search: str) -> ExperimentCfg:
    """`cfg` with sweep.search set (validated: the soup search needs the anytime soup)."""
    data = json.loads(cfg.model_dump_json())
    data["sweep"]["search"] = search
    return type(cfg).model_validate(data)


def run_searches(cfg: ExperimentCfg, root: Path, seeds: int, searches: list[str],
                 address: str | None = None) -> dict[str, list[Path]]:
    """`run_seeds` once per sweep search under root/<search>/seed-<s>: the same seeds, data
    and base, so the runs pair by seed with equal compute (trial-epochs)."""
    out: dict[str, list[Path]] = {}
    for search in searches:
        first = next(iter(out.values()))[0] if out else None
        out[search] = run_seeds(with_search(cfg, search), root / search, seeds, address,
                                share_from=first)
    return out
