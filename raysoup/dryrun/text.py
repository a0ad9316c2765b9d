"""`--dry-run` of a text experiment (model.family: hf_text): the plan and its size from the
files' listings, footers and line counts and the model's config.json, never the weights (a
Hub id is not downloaded: its size comes from `KNOWN`)."""

from __future__ import annotations

import json
from pathlib import Path

from raysoup.config import ExperimentCfg, SplitSource
from raysoup.dryrun.sizing import RUNTIME_BYTES, TRAIN_BYTES_PER_PARAM, Needs, gib
from raysoup.search.distributions import as_dist

# Architectures of common Hub ids (layers, hidden size, parameters), for sizing without a
# download.
KNOWN = {"bert-base-uncased": (12, 768, 109_482_240), "bert-base-cased": (12, 768, 108_310_272),
         "roberta-base": (12, 768, 124_645_632), "bert-large-uncased": (24, 1024, 335_141_888)}
# Stated, not measured by raysoup: sequences/s of BERT-base at 128 tokens in bf16 on one
# data-centre GPU (A100/H100 class), fine-tuning and inference. Scaled by parameters and
# length for other models. Measure yours and read the GPU-hours line accordingly.
BERT_BASE_SEQ_PER_S = {"train": 1000.0, "eval": 4000.0}


def _arch(cfg: ExperimentCfg, warnings: list[str]) -> tuple[int, int, int] | None:
    from raysoup.models.hf_text.source import TextModelError, resolve

    try:
        where = resolve(cfg.model.name)
    except TextModelError as e:
        warnings.append(f"model.name: {e}")
        return None
    if Path(where).is_dir():
        c = json.loads((Path(where) / "config.json").read_text())
        layers, hidden = c.get("num_hidden_layers", 0), c.get("hidden_size", 0)
        inter = c.get("intermediate_size", 4 * hidden)
        embed = (c.get("vocab_size", 0) + c.get("max_position_embeddings", 0)
                 + c.get("type_vocab_size", 0)) * hidden
        return layers, hidden, embed + layers * (4 * hidden * hidden + 2 * hidden * inter)
    if where in KNOWN:
        return KNOWN[where]
    warnings.append(f"model.name: {where} is a Hub id raysoup does not know the size of "
                    "(nothing is downloaded by --dry-run): no memory or GPU-hour estimates")
    return None


# GLUE's published split sizes (train, dev): a missing file whose path names the task is
# sized with them (said in the warnings).
GLUE_ROWS = {"RTE": (2490, 277), "MRPC": (3668, 408), "CoLA": (8551, 1043),
             "SST-2": (67349, 872)}


def _glue_guess(src: SplitSource, field: str, warnings: list[str]) -> int | None:
    for task, (train, dev) in GLUE_ROWS.items():
        # a file in the task's directory, or the task's own (a DatasetDict: `split` says which)
        if f"/{task}/".lower() in src.path.lower().replace("\\", "/").rstrip("/") + "/":
            n = train if "train" in (src.split or Path(src.path).name) else dev
            warnings.append(f"{field}: sized as GLUE {task}'s published split ({n:,} examples)")
            return n
    return None


def _rows(src: SplitSource, field: str, warnings: list[str]) -> int | None:
    from raysoup.data import fs as data_fs
    from raysoup.dryrun.sources import count_parquet

    try:
        if src.format == "parquet":
            return count_parquet(src.path)[0]
        if src.format == "hf_disk":
            from raysoup.data.text.hf_disk import count_rows

            return count_rows(src)
        lines = data_fs.read_bytes(src.path).count(b"\n")  # a text split is megabytes
        return lines - (1 if src.format == "csv" else 0)  # the header
    except (FileNotFoundError, OSError, ValueError) as e:
        warnings.append(f"{field}: {src.path}: {getattr(e, 'args', [e])[0]} (fine if the job "
                        "runs where it does)")
    return _glue_guess(src, field, warnings)


def _mean(dist, default: float) -> float:
    return default if dist is None else float(as_dist(dist).mean())


def describe_text(cfg: ExperimentCfg, stages: tuple[str, ...], source: str | None,
                  head: list[str]) -> tuple[list[str], Needs, list[str]]:
    """(plan lines after `head`, what a trial / eval actor needs, warnings)."""
    warnings: list[str] = []
    m, d, s = cfg.model, cfg.data, cfg.sweep
    arch = _arch(cfg, warnings)
    desc = "?" if arch is None else f"{arch[0]} layers, hidden {arch[1]}, {arch[2] / 1e6:.1f} M parameters"
    lines = [*head, f"model        {m.name}  (hf_text: {desc}), max {m.max_length} tokens",
             f"  weights    {m.pretrained}; head initialised by the library (seeded)"]
    if d.text_world is not None:
        from raysoup.data.text.world import CLASSNAMES, SHIFTS

        w = d.text_world
        n = len(CLASSNAMES)
        rows = {"train": w.train_per_class * n, "test": w.test_per_class * n,
                **{k: w.shift_per_class * n for k in SHIFTS}}
        lines.append(f"data         generated text task: {n} classes, shifts {', '.join(SHIFTS)}")
    else:
        rows = {"train": _rows(d.train, "data.train.path", warnings),
                "test": _rows(d.test, "data.test.path", warnings),
                **{k: _rows(v, f"data.shifts.{k}.path", warnings) for k, v in d.shifts.items()}}
        lines.append(f"data         train {d.train.format} {d.train.path}; test {d.test.path}")
    train = rows["train"]
    heldout = None if train is None else round(train * d.heldout_fraction)
    lines.append("  examples   " + ", ".join(f"{k} {'?' if v is None else f'{v:,}'}"
                                             for k, v in rows.items())
                 + f" (held-out ~{'?' if heldout is None else f'{heldout:,}'} of train)")
    known = [v for v in rows.values() if v is not None]
    lines.append(f"  token cache {gib(sum(known) * 3 * m.max_length * 4)} (int32 ids, types, "
                 f"mask x {m.max_length})")
    epochs = _mean(s.space.get("epochs"), s.base.epochs)
    lines.append(f"sweep        {s.trials} trials, ~{epochs:g} epochs each, "
                 f"{s.max_concurrent} at a time")
    needs = Needs(None, None, None)
    if arch is not None:
        params = arch[2]
        needs = Needs(RUNTIME_BYTES + TRAIN_BYTES_PER_PARAM * params,
                      RUNTIME_BYTES + 4 * params, None)
        lines.append(f"  memory     a trial ~{gib(needs.trial)}, an eval actor ~{gib(needs.actor)}")
        if train is not None:
            scale = (params / KNOWN["bert-base-uncased"][2]) * (m.max_length / 128)
            tr = s.trials * epochs * (train - (heldout or 0)) / (BERT_BASE_SEQ_PER_S["train"] / scale)
            models = s.trials + 1 + len(cfg.soup.recipes)
            ev = models * sum(known) / (BERT_BASE_SEQ_PER_S["eval"] / scale)
            lines.append(f"  GPU-hours  ~{(tr + ev) / 3600:.2f} (training {tr / 3600:.2f}, "
                         f"evaluation {ev / 3600:.2f}) at a stated "
                         f"{BERT_BASE_SEQ_PER_S['train']:g} train / "
                         f"{BERT_BASE_SEQ_PER_S['eval']:g} eval sequences/s for BERT-base at "
                         "128 tokens (scaled by size and length; not measured)")
    lines.append(f"soup         recipes {', '.join(cfg.soup.recipes)}; {cfg.soup.num_shards} "
                 "shard(s) per reduction")
    greedy = cfg.soup.greedy
    if "greedy" in cfg.soup.recipes and greedy.metric != "accuracy":
        lines.append(f"  greedy     by held-out {greedy.metric} (soup.greedy.metric)")
        if isinstance(names := cfg.data.classnames, list):  # else known once data is read
            try:
                greedy.check_task(len(names))
            except ValueError as e:
                warnings.append(str(e))
    return lines, needs, warnings
