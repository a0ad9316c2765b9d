"""Learning-rate schedule: linear warm-up, then cosine decay to zero (pure function of the step)."""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    Warm-up ramps linearly to base_lr over `warmup_steps` (step 0 already gets a non-zero lr,
    so no step is wasted); afterwards a half cosine goes from base_lr to 0 at `total_steps`.
    """
    if total_steps <= 0:
        raise ValueError(f"lr_at: total_steps must be positive, got {total_steps}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))
