"""MNIST classification (paper section 3, Table 1): the data held as one uint8 tensor on the device,
random-crop augmentation done on tensors, batches drawn by a seeded permutation.

Speed options (conf/model/odenet.yaml, rknet.yaml; measured by `node-bench`, see docs/tools/bench.md):
`model.fast_rk` (fast Runge-Kutta stage arithmetic, core/fastrk.py), `model.channels_last` (NHWC memory format for the
model and its inputs), `model.compile` (torch.compile of the ODE vector field, eager fallback where unsupported).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ...core.checks import boolean, choice, integer, one_line, positive, text
from ...core.progress import bar
from ...core.solve import ODEBlock
from .data import default_root, load_mnist
from .models import MODELS, build_mnist_model

EVAL_BATCH = 1000


def compile_field(field: torch.nn.Module) -> None:
    """Replace `field.forward` by its torch.compile'd version, falling back to eager (once, with a warning) if
    compiling or running the compiled code fails, e.g. without a C++ compiler. Parameters and state_dict keys
    are unchanged."""
    eager = field.forward
    try:
        compiled = torch.compile(eager, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - torch.compile unavailable on this platform
        warnings.warn(f"model.compile: torch.compile unavailable ({type(exc).__name__}: {exc}); running eager")
        return
    state = {"compiled": True}

    def forward(t, x):
        if state["compiled"]:
            try:
                return compiled(t, x)
            except Exception as exc:  # noqa: BLE001 - any backend failure: the eager field is the same function
                state["compiled"] = False
                warnings.warn(f"model.compile: compiled vector field failed ({type(exc).__name__}: "
                              f"{one_line(exc, 200)}); running eager")
        return eager(t, x)

    field.forward = forward


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-example random crop of `x` [B,1,H,W] zero-padded by `pad`, as torchvision's RandomCrop(H, padding)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device="cpu").to(x.device))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    return padded[torch.arange(b, device=x.device)[:, None, None], 0, rows, cols].unsqueeze(1)


class MnistTask:
    def __init__(self, cfg, device: torch.device):
        d = cfg.dataset
        (xtr, ytr), (xte, yte) = load_mnist(d.root or default_root(), download=d.download)
        if d.limit:
            xtr, ytr = xtr[: d.limit], ytr[: d.limit]
        self.train_x, self.train_y = xtr.to(device), ytr.to(device)
        self.test_x, self.test_y = xte.to(device), yte.to(device)
        self.batch_size = min(cfg.trainer.batch_size, len(self.train_x))
        self.augment = d.augment
        self.device = device
        self.progress = cfg.trainer.get("progress", True)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.model = build_mnist_model(cfg.model, cfg.solver).to(device)
        self.memory_format = torch.contiguous_format
        if cfg.model.get("channels_last"):
            self.memory_format = torch.channels_last
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.model.get("compile"):
            for block in self.model.modules():
                if isinstance(block, ODEBlock):
                    compile_field(block.vector_field)

    @staticmethod
    def images(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1).float().div_(255.0)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)

    def steps_per_epoch(self) -> int:
        return len(self.train_x) // self.batch_size

    def generators(self) -> list:
        return [self.generator]

    def train_batches(self, epoch: int):
        order = torch.randperm(len(self.train_x), generator=self.generator).to(self.device)
        for i in range(self.steps_per_epoch()):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images(self.train_x[idx])
            if self.augment:
                x = random_crop(x, 4, self.generator)
            yield self.inputs(x), self.train_y[idx]

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    @torch.no_grad()
    def evaluate(self, limit: int | None) -> dict:
        self.model.eval()
        n = len(self.test_x) if limit is None else min(limit, len(self.test_x))
        wrong, loss = 0, 0.0
        for i in bar(range(0, n, EVAL_BATCH), self.progress, desc="evaluation", unit="batch", leave=False):
            x, y = self.images(self.test_x[i:i + EVAL_BATCH][: n - i]), self.test_y[i:i + EVAL_BATCH][: n - i]
            logits = self.model(self.inputs(x))
            wrong += (logits.argmax(1) != y).sum().item()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
        self.model.train()
        return dict(test_error=wrong / n, test_loss=loss / n, test_examples=n)

    def memory_batch(self):
        idx = torch.arange(self.batch_size, device=self.device)
        return self.inputs(self.images(self.train_x[idx])), self.train_y[idx]

    def finish(self, run) -> dict:
        return {}


def check(cfg) -> None:
    d, m = cfg.dataset, cfg.model
    choice(d.name, "dataset", ("mnist",))
    choice(m.name, "model", MODELS)
    text(d.root, "dataset.root", allow_none=True)
    boolean(d.download, "dataset.download")
    boolean(d.augment, "dataset.augment")
    for key, low in (("channels", 1), ("blocks", 1), ("hidden", 1), ("augment_dim", 0)):
        if key in m:
            integer(m[key], f"model.{key}", low)
    if "t1" in m:
        positive(m.t1, "model.t1")
    for key in ("fast_rk", "channels_last", "compile"):
        if key in m:
            boolean(m[key], f"model.{key}")
    build_mnist_model(m, cfg.solver)
