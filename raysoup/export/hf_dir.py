"""A text soup (or ingredient) as a `save_pretrained` directory: plain transformers loads it.

    DIR/config.json, DIR/model.safetensors   AutoModelForSequenceClassification.from_pretrained
    DIR/tokenizer.json, tokenizer_config.json AutoTokenizer.from_pretrained (the base's)
    DIR/raysoup.json                          max_length, recipe, ingredients, accuracies
    DIR/README.md                             the model card

The weights are the soup's state dict without the classifier wrapper's `model.` prefix, read
from safetensors (nothing unpickled). The hf_text family's export formats: `hf` (this) and
`safetensors` (the state dict as raysoup holds it).
"""

from __future__ import annotations

import json
from pathlib import Path

from raysoup.export.open_clip_dir import (
    FLAT_FILE,
    _write_dir,
    claim_out_dir,
    model_state,
)
from raysoup.workdir import IngredientManifest

PREFIX = "model."
INFO_FILE = "raysoup.json"


def text_state(model_dir: Path) -> dict:
    return model_state(Path(model_dir))


def _card(meta: dict, extra: dict, fmt: str) -> str:
    classes = ", ".join(meta["classnames"])
    lines = [f"# {extra.get('model', 'model')}", "",
             (f"A `{meta['model_name']}` text classifier ({len(meta['classnames'])} classes: "
              f"{classes}) made by raysoup (recipe: {extra.get('recipe', 'single model')})."),
             ""]
    acc = extra.get("accuracy") or {}
    if acc:
        lines += ["| split | accuracy (%) |", "|---|---|"]
        lines += [f"| {k} | {100 * v:.2f} |" for k, v in sorted(acc.items())]
        lines += [""]
    if fmt == "hf":
        length = meta["preprocess"]["max_length"]
        lines += ["```python",
                  "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                  'model = AutoModelForSequenceClassification.from_pretrained("DIR").eval()',
                  'tok = AutoTokenizer.from_pretrained("DIR")',
                  (f'x = tok(texts, padding="max_length", truncation=True, '
                   f'max_length={length}, return_tensors="pt")'),
                  "logits = model(**x).logits", "```", ""]
    return "\n".join(lines)


def export_text(model_dir: Path, zeroshot_dir: Path, fmt: str, out: Path, extra: dict,
                overwrite: bool = False) -> Path:
    meta = IngredientManifest.read(zeroshot_dir).meta
    state = text_state(model_dir)
    info = {"model_name": meta["model_name"], "classnames": meta["classnames"],
            "preprocess": meta["preprocess"], **extra}
    if fmt == "safetensors":
        return _write_dir(out, {FLAT_FILE: ({k: v.contiguous() for k, v in state.items()},
                                            {"format": "pt"}),
                                INFO_FILE: json.dumps(info, indent=2),
                                "README.md": _card(meta, extra, fmt)}, overwrite)
    from raysoup.atomic import atomic_dir
    from raysoup.evaluate.evaluator import load_weights_
    from raysoup.models.hf_text.classifier import pretrained_config_model
    from raysoup.models.hf_text.tokenizer import load_tokenizer

    model = pretrained_config_model(meta["model_name"], meta["classnames"])
    load_weights_(model, {k.removeprefix(PREFIX): v for k, v in state.items()})
    claim_out_dir(Path(out), overwrite)
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp)
        load_tokenizer(meta["preprocess"]["tokenizer"]).save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
        (tmp / "README.md").write_text(_card(meta, extra, fmt))
        for p in tmp.iterdir():
            p.chmod(0o644)
    return Path(out)
