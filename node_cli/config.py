"""Checks on a composed config: bad input becomes one clear line, before anything runs."""
from __future__ import annotations

import torch

from .solver import SOLVERS


class ConfigError(Exception):
    """A bad setting. The message is one line: what is wrong and what is accepted."""


OPTIMIZERS = ("sgd", "adam", "rmsprop")
SCHEDULES = ("multistep", "cosine")


def positive(value, key: str, integer: bool = False, allow_none: bool = False):
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{key}={value!r} is not allowed: it must be {kind}" + (" or null" if allow_none else ""))


def choice(value, key: str, accepted) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {key} {value!r}; accepted: {', '.join(map(str, accepted))}")


def validate(cfg) -> None:
    """Checks shared by every experiment family; each family checks its own model and dataset keys."""
    s = cfg.solver
    choice(s.method, "solver.method", SOLVERS)
    positive(s.rtol, "solver.rtol")
    positive(s.atol, "solver.atol")
    choice(s.adjoint, "solver.adjoint", (True, False))
    choice(s.adjoint_norm, "solver.adjoint_norm", ("default", "seminorm"))
    positive(s.get("step_size"), "solver.step_size", allow_none=True)
    positive(s.get("max_num_steps"), "solver.max_num_steps", integer=True, allow_none=True)
    t = cfg.trainer
    positive(t.epochs, "trainer.epochs", integer=True)
    positive(t.max_steps, "trainer.max_steps", integer=True, allow_none=True)
    positive(t.batch_size, "trainer.batch_size", integer=True)
    positive(t.lr, "trainer.lr")
    positive(t.eval_every, "trainer.eval_every", integer=True, allow_none=True)
    positive(t.eval_limit, "trainer.eval_limit", integer=True, allow_none=True)
    choice(t.optimizer, "trainer.optimizer", OPTIMIZERS)
    choice(t.get("schedule", "multistep"), "trainer.schedule", SCHEDULES)
    if t.get("schedule") == "cosine" and list(t.milestones):
        raise ConfigError("trainer.milestones belong to schedule=multistep; with trainer.schedule=cosine set "
                          "trainer.milestones=[]")
    ratio = t.get("min_lr_ratio", 0.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ConfigError(f"trainer.min_lr_ratio={ratio!r} is not allowed: it must be a number in [0, 1]")
    positive(cfg.dataset.get("limit"), "dataset.limit", integer=True, allow_none=True)
    choice(cfg.device, "device", ("auto", "cpu", "cuda"))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=auto or device=cpu")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
