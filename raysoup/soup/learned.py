"""Learned soup (Wortsman et al. 2022, appendix "learned soup"): mixing coefficients learned
on the held-out split by gradient descent.

As in the paper's reference code (`learned_soup.py`): the coefficients are a softmax over
ingredients of free parameters (initialised uniform), optionally one set per layer, and the
logits are multiplied by a learned scalar temperature β (it only eases optimisation: the soup
is Σ α_i·θ_i, β is not part of it); AdamW with no weight decay on cross-entropy. Differences:
- "Layer" = module: tensors sharing a name prefix (`conv1.weight`, `conv1.bias`, a BatchNorm's
  running statistics) share coefficients, so normalisation statistics mix like their layer.
  The reference learns one set per parameter tensor and leaves buffers out.
- Memory: the reference keeps all N models in memory. Here ingredients stay on disk (read
  with `raysoup.reduce.open_tensors`: positioned reads, no mmap, so no file page stays
  resident) and each step streams them twice, one tensor at a time:
    1. θ_l = Σ_i α_i,l·θ_i,l                         (one model)
    2. g = ∂L/∂θ by one forward/backward through `torch.func.functional_call` (its gradient)
    3. ∂L/∂α_i,l = Σ_{tensors t of layer l} ⟨g_t, θ_i,t⟩, then the softmax chain rule
  so memory ≈ one model + its gradient + one tensor read, whatever N.
The coefficients are fitted on the held-out split, so the soup's held-out accuracy is an
optimistic estimate; test and shift splits are the honest ones.
"""

from __future__ import annotations

import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from raysoup.checkpoints.ingredient import weights_path
from raysoup.checkpoints.tensorfile import open_tensors
from raysoup.evaluate.evaluator import EvalSplit
from raysoup.soup.base import Candidate, Kitchen, RecipeResult
from raysoup.soup_settings import LearnedSettings


@dataclass
class LearnedMix:
    weights: list[float]  # per ingredient (per-layer: the mean over layers)
    tensor_weights: dict[str, list[float]] | None  # per-layer only: every floating tensor
    trace: list[dict] = field(default_factory=list)  # per step: loss
    info: dict = field(default_factory=dict)


def layer_of(name: str) -> str:
    """The module a tensor belongs to: "visual.conv1.weight" → "visual.conv1"."""
    return name.rsplit(".", 1)[0] if "." in name else name


def learn_coefficients(model: nn.Module, paths: list[Path], heldout: EvalSplit, per_layer: bool,
                       steps: int, lr: float, batch_size: int, seed: int,
                       device: str | torch.device = "cpu") -> LearnedMix:
    """Fit mixing coefficients of the ingredients at `paths` for `model`'s architecture."""
    if not paths:
        raise ValueError("a learned soup needs at least one ingredient")
    if steps < 0 or batch_size < 1 or len(heldout) == 0:
        raise ValueError(f"need steps >= 0, batch_size >= 1 and held-out data, got steps={steps}, "
                         f"batch_size={batch_size}, {len(heldout)} held-out samples")
    device = torch.device(device)
    model = model.to(device).eval()
    floating = [n for n, t in model.state_dict().items() if t.is_floating_point()]
    trainable = [n for n, _ in model.named_parameters()]  # buffers get no gradient
    groups = list(dict.fromkeys(layer_of(n) for n in floating)) if per_layer else ["*"]
    group_of = {n: groups.index(layer_of(n)) if per_layer else 0 for n in floating}
    files = [weights_path(p) for p in paths]

    raw = torch.zeros(len(groups), len(files), requires_grad=True)  # softmax → uniform
    beta = torch.tensor(1.0, requires_grad=True)
    opt = _Adam([raw, beta], lr)
    gen = torch.Generator().manual_seed(seed)
    trace = []
    with ExitStack() as stack:
        handles = [stack.enter_context(open_tensors(f)) for f in files]
        read = _reader(handles, files)
        for step in range(steps):
            alpha = torch.softmax(raw, dim=1)
            mixed = _mix(read, floating, group_of, alpha.detach(), device)
            for n in trainable:
                mixed[n].requires_grad_(True)
            idx = torch.randperm(len(heldout), generator=gen)[:batch_size].numpy()
            x = torch.tensor(heldout.images.take(idx), device=device)
            y = torch.as_tensor(heldout.labels[idx], device=device)
            loss = F.cross_entropy(beta * functional_call(model, mixed, (x,)), y)
            grads = torch.autograd.grad(loss, [mixed[n] for n in trainable] + [beta])
            del mixed  # one model's worth freed before the second streaming pass
            d_alpha = _alpha_grad(read, dict(zip(trainable, grads[:-1], strict=True)),
                                  group_of, alpha.shape, device)
            (d_raw,) = torch.autograd.grad(alpha, raw, grad_outputs=d_alpha)
            opt.step([d_raw, grads[-1].detach()])
            trace.append({"step": step, "loss": loss.item()})
    alpha = torch.softmax(raw.detach(), dim=1)
    info = {"beta": beta.item(), "per_layer": per_layer, "steps": steps, "lr": lr,
            "batch_size": batch_size, "seed": seed, "layers": len(groups)}
    if not per_layer:
        return LearnedMix(alpha[0].tolist(), None, trace, info)
    tensor_weights = {n: alpha[group_of[n]].tolist() for n in floating}
    return LearnedMix(alpha.mean(dim=0).tolist(), tensor_weights, trace, info)


class _Adam:
    """Adam (= the reference's AdamW with weight_decay=0) on a few small tensors. Hand-written
    because `torch.optim` imports torch._dynamo on first use: seconds per fresh eval actor."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.t))


def _reader(handles, files):
    def read(i: int, name: str) -> torch.Tensor:
        if name not in handles[i].keys():  # noqa: SIM118 - a tensor file, not a dict
            raise ValueError(f"tensor {name!r}: missing in {files[i]}")
        return handles[i].get_tensor(name)
    return read


@torch.no_grad()
def _mix(read, names, group_of, alpha, device) -> dict[str, torch.Tensor]:
    """θ = Σ_i α_i·θ_i per tensor, reading one ingredient's tensor at a time."""
    out = {}
    for name in names:
        a = alpha[group_of[name]]
        # A copy: safetensors may hand out memory shared with later reads of the same file.
        acc = read(0, name).to(device, torch.float32, copy=True).mul_(a[0])
        for i in range(1, alpha.shape[1]):
            acc.add_(read(i, name).to(device, torch.float32), alpha=float(a[i]))
        out[name] = acc
    return out


@torch.no_grad()
def _alpha_grad(read, grads, group_of, shape, device) -> torch.Tensor:
    """∂L/∂α_i,l = Σ_{t in layer l} ⟨∂L/∂θ_t, θ_i,t⟩ (θ is linear in α)."""
    d_alpha = torch.zeros(shape, dtype=torch.float64)
    for i in range(shape[1]):
        for name, g in grads.items():
            theta = read(i, name).to(device, torch.float32)
            d_alpha[group_of[name], i] += float(torch.vdot(g.reshape(-1), theta.reshape(-1)))
    return d_alpha.float()


@contextmanager
def peak_rss():
    """Peak resident memory (MiB) of this process while the block runs: Linux `VmHWM`, reset
    on entry through /proc/self/clear_refs ("5"); falls back to the lifetime peak."""
    result: dict[str, float | bool] = {}
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        result["reset"] = True
    except OSError:
        result["reset"] = False
    result["rss_before_mib"] = _status_mib("VmRSS")
    yield result
    result["peak_rss_mib"] = _status_mib("VmHWM")
    result["rss_after_mib"] = _status_mib("VmRSS")


def _status_mib(key: str) -> float:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return float("nan")
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) / 1024 if m else float("nan")


class LearnedSoup:
    name = "learned"
    Settings = LearnedSettings

    def __init__(self, per_layer: bool = True, steps: int = 20, lr: float = 0.05,
                 batch_size: int = 128, seed: int = 0):
        self.settings = {"per_layer": per_layer, "steps": steps, "lr": lr,
                         "batch_size": batch_size, "seed": seed}

    def cook(self, candidates: list[Candidate], kitchen: Kitchen | None) -> RecipeResult:
        if kitchen is None:
            raise ValueError("a learned soup needs a kitchen to learn on the held-out split")
        if not candidates:
            raise ValueError("a learned soup needs at least one ingredient")
        ranked = sorted(candidates, key=lambda c: c.name)
        mix = kitchen.learn([c.path for c in ranked], **self.settings)
        return RecipeResult(
            ingredients=[c.name for c in ranked], weights=mix["weights"],
            tensor_weights=mix["tensor_weights"], trace=mix["trace"], info=mix["info"],
        )
