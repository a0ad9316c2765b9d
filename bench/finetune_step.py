"""The sweep's training loop on one device: throughput and a bf16-vs-fp32 forward check.

Runs `raysoup.train.finetune.finetune` (the code a sweep trial runs; bf16 autocast on CUDA)
for two epochs on synthetic JPEG images and reports images/s per epoch (epoch 1 includes the
kernels' warm-up), the peak device memory and the losses. It also compares one batch's
logits under bf16 autocast with fp32 on the same weights, to show that autocast changes the
numbers only by bf16 rounding. Used by `bench/gpu.sh`; runs on the CPU too (tiny model).

    python -m bench.finetune_step --device cuda --model ViT-B-32 --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time

import numpy as np
import torch
from PIL import Image

from raysoup.config import TrainHParams
from raysoup.data.images import LabeledImages
from raysoup.models.classifier import classifier_skeleton
from raysoup.models.factory import image_stats, register_configs
from raysoup.train.finetune import finetune

log = logging.getLogger(__name__)


def synthetic_images(n: int, size: int, classes: int, seed: int = 0) -> LabeledImages:
    """Smooth random images (8x8 noise upsampled), JPEG-encoded like a real dataset's files."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        buf = io.BytesIO()
        small.resize((size, size), Image.BILINEAR).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
    return LabeledImages(keys=[f"synthetic/{i:06d}" for i in range(n)], images=images,
                         labels=rng.integers(0, classes, n),
                         classnames=[f"class{c}" for c in range(classes)])


def autocast_parity(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Max |bf16 - fp32| of one batch's logits, relative to the fp32 logits' max magnitude."""
    model.eval()
    with torch.no_grad():
        ref = model(x).float()
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            low = model(x).float()
    scale = ref.abs().max().item() or 1.0
    return {"max_abs_diff_rel": (low - ref).abs().max().item() / scale,
            "argmax_agreement": (low.argmax(1) == ref.argmax(1)).float().mean().item()}


def run(model_name: str, device: str, n_images: int, batch_size: int, classes: int) -> dict:
    register_configs()
    model = classifier_skeleton(model_name, classes)
    size, mean, std = image_stats(model)  # read from model.visual, as for a full CLIP
    t0 = time.perf_counter()
    data = synthetic_images(n_images, size, classes)
    log.info("finetune_step: %d synthetic %dpx images in %.1f s", n_images, size,
             time.perf_counter() - t0)
    hp = TrainHParams(lr=1e-5, weight_decay=0.1, epochs=2, batch_size=batch_size,
                      warmup_steps=2, seed=0)
    epochs: list[dict] = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    last = finetune(model, data, hp, image_size=size, mean=mean, std=std, device=device,
                    on_epoch=lambda e, m, _state: epochs.append(m))
    seconds = time.perf_counter() - t0
    out = {
        "model": model_name, "device": device, "images": n_images, "image_size": size,
        "batch_size": batch_size, "steps": hp.epochs * (n_images // batch_size),
        "autocast": "bf16" if device == "cuda" else "off (CPU runs fp32)",
        "seconds": seconds, "epochs": epochs, "final_loss": last["train_loss"],
        "loss_finite": bool(np.isfinite(last["train_loss"])),
        "images_per_s_warm": epochs[-1]["images_per_s"],
    }
    if device == "cuda":
        out["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["gpu"] = torch.cuda.get_device_name(0)
    x = torch.randn(min(64, batch_size), 3, size, size, device=device)
    out["parity"] = autocast_parity(model.to(device), x)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.finetune_step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(a.model, a.device, a.images, a.batch_size, a.classes)
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(text)
    return 0 if result["loss_finite"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
