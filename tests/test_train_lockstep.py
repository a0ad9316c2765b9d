"""Data-parallel fine-tuning when a worker's slice of a step is empty: two real torch
processes in a gloo group (what Ray Train's TorchTrainer sets up for sweep.workers_per_trial;
the whole Ray path: test_data_parallel.py), the default tiny model (BatchNorm included).

A worker's slice is empty when the epoch's last batch is smaller than the workers, or when
every image of it is corrupt under skip_corrupt. That worker must still make the step's
forward and backward (DDP's collectives), or the group falls out of step and hangs."""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import numpy as np
import torch
import torch.multiprocessing as mp

from raysoup.config import TrainHParams, WorldCfg
from raysoup.data.images import LabeledImages
from raysoup.data.world import build_split
from raysoup.models import build_clip, classifier_from_clip, image_stats
from raysoup.train.batches import LoaderCfg
from raysoup.train.finetune import finetune

WORLD = 2
TIMEOUT_S = 40  # a group out of step fails after this instead of hanging


def _splits() -> dict[str, tuple[LabeledImages, bool, str]]:
    data = build_split(WorldCfg(num_classes=3, train_per_class=10), "train").select(np.arange(7))
    # 7 images, batch 4: the second step's batch is 3 images, all the first worker's (odd:
    # mixup pairs its middle one with itself), the second worker's slice empty.
    seven = data
    # 3 of 6 images corrupt (cut short): slices, and sometimes whole batches, come out empty.
    six = data.select(np.arange(6))
    cut = [b[:30] if i % 2 else b for i, b in enumerate(six.images.read(list(range(6))))]
    corrupt = LabeledImages(list(six.keys), cut, np.asarray(six.labels), six.classnames)
    # The ViT there: skip_corrupt can leave a slice of one image, on which BatchNorm (the
    # ResNet) cannot train.
    return {"short_last_batch": (seven, False, "raysoup-tiny-rn"),
            "corrupt_slices": (corrupt, True, "raysoup-tiny-vit")}


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # forked: the parent's thread pool is not the child's
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=WORLD,
                                         timeout=timedelta(seconds=TIMEOUT_S))
    results = {}
    for name, (data, skip, model_name) in _splits().items():
        torch.manual_seed(0)
        clip = build_clip(model_name)
        model = classifier_from_clip(clip, torch.randn(3, clip.visual.output_dim))
        size, mean, std = image_stats(clip)
        hp = TrainHParams(lr=1e-3, epochs=3, batch_size=4, warmup_steps=1, mixup=0.2)
        metrics = finetune(model, data, hp, image_size=size, mean=mean, std=std, device="cpu",
                           threads=1, loader=LoaderCfg(lanes=1, memory_budget_mb=1e6,
                                                       skip_corrupt=skip),
                           shard=(rank, WORLD))
        # Parameters: each worker's BatchNorm statistics are its own slice's (DDP without
        # SyncBatchNorm; rank 0's are broadcast before every forward).
        weights = torch.cat([p.detach().double().flatten() for p in model.parameters()])
        results[name] = {"train_images": metrics["train_images"],
                         "train_loss": metrics["train_loss"],
                         "weights": weights[::97].tolist()}
    torch.distributed.destroy_process_group()
    with open(f"{out}/rank-{rank}.json", "w") as f:
        json.dump(results, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_workers_with_empty_slices_step_with_the_others(tmp_path):
    ctx = mp.get_context("fork")  # as the trainer forks its DataLoader workers: no re-imports
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(tmp_path))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=4 * TIMEOUT_S)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0], "a worker hung or failed (out of step)"
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0] == ranks[1]  # the same weights and whole-batch metrics on every worker
    # Every image that decodes counted once in the last epoch: 7 of 7, 3 of 6.
    assert ranks[0]["short_last_batch"]["train_images"] == 7
    assert ranks[0]["corrupt_slices"]["train_images"] == 3
