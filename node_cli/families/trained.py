"""A trained run read back from its folder: its config (with `solver.*` overrides applied and checked), its
checkpoint (read with `weights_only=True`) and its family's task with the checkpoint's weights loaded. Used by
`node-eval` (node_cli/evaluate.py) and by a family's own tools (`node-report tolsweep`). The registry
(`node_cli.families`) builds the task, so this knows no family in particular.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf

from ..core.checks import ConfigError, one_line, resolve_device
from ..core.compose import flat, nearest
from ..core.rundir import CHECKPOINT, CONFIG, RESUMABLE
from ..core.runs import load_config, read_checkpoint
from . import build, check

TOLERANCES = ("solver.rtol", "solver.atol")


@dataclass
class Loaded:
    """A run read back for evaluation: its config (as evaluated), checkpoint, task with the checkpoint's weights."""
    run_dir: Path
    cfg: object
    ckpt: dict
    task: object
    device: torch.device
    notes: list = field(default_factory=list)
    tolerance_from: str = "solver"


# ------------------------------------------------------------------------------------------------- overrides
def parse_overrides(args) -> dict:
    """`solver.KEY=VALUE` strings -> {dotted key: value}; ConfigError (one line) for anything else."""
    out = {}
    for arg in args:
        key, sep, raw = str(arg).partition("=")
        if not sep or not key:
            raise ConfigError(f"{arg!r} is not a key=value override (e.g. solver.rtol=1e-5)")
        if key[0] in "+~":
            raise ConfigError(f"{arg!r}: node-eval cannot add or delete keys; it only changes the run's existing "
                              "solver.* settings")
        if not key.startswith("solver."):
            hint = " (to change the method give solver.method=NAME)" if key == "solver" else ""
            raise ConfigError(f"{arg!r} cannot be given to node-eval: only solver.* settings may change (any other "
                              f"key would evaluate another run than the one the checkpoint holds){hint}")
        try:
            value = OmegaConf.select(OmegaConf.from_dotlist([str(arg)]), key)
        except Exception as exc:  # noqa: BLE001 - OmegaConf's parse errors
            raise ConfigError(f"cannot parse {arg!r}: {one_line(exc, 200)}") from None
        out[key] = value
    return out


def apply_overrides(cfg, overrides: dict) -> tuple[list[str], str]:
    """Set the solver overrides on `cfg` (in place); returns notes for the summary and where the evaluation's
    tolerance comes from ('solver', 'model.eval_tol' or 'solver overrides')."""
    known = [f"solver.{k}" for k in cfg.solver]
    newer = []   # settings node-run gained after this run was made: their defaults are what the run used
    if any(key not in known for key in overrides):
        from ..core.compose import compose
        newer = [f"solver.{k}" for k in compose([]).solver
                 if f"solver.{k}" not in known]
    for key, value in overrides.items():
        if key not in known + newer:
            raise ConfigError(f"unknown key {key!r}: the run's solver has no such setting; accepted: "
                              f"{', '.join(known + newer)}{nearest(key, known + newer)}")
        OmegaConf.update(cfg, key, value, merge=False, force_add=key in newer)
    eval_tol = cfg.model.get("eval_tol") if "model" in cfg else None
    if eval_tol is None:
        return [], "solver"
    tols = [k for k in TOLERANCES if k in overrides]
    if not tols:
        return [], "model.eval_tol"
    # the run evaluates at rtol = atol = model.eval_tol; a tolerance override replaces that, the other stays
    for key in TOLERANCES:
        OmegaConf.update(cfg, key, overrides.get(key, eval_tol), merge=False)
    cfg.model.eval_tol = None
    note = (f"model.eval_tol={eval_tol:g} (the tolerance this run evaluates at) replaced by the override of "
            f"{' and '.join(tols)}: evaluated at rtol={cfg.solver.rtol}, atol={cfg.solver.atol}"
            + ("" if len(tols) == 2 else " (the tolerance not overridden stays at eval_tol)"))
    return [note], "solver overrides"


def evaluated_solver(cfg) -> dict:
    """The solver settings the evaluation solves with (eval_tol, when the model has one, sets rtol = atol)."""
    solver = OmegaConf.to_container(cfg.solver, resolve=True)
    tol = cfg.model.get("eval_tol") if "model" in cfg else None
    if tol is not None:
        solver.update(rtol=float(tol), atol=float(tol))
    return solver


# ----------------------------------------------------------------------------------------------- loading
def load_run(run_dir, device: str = "cpu", overrides: dict | None = None,
             accept: Callable | None = None) -> Loaded:
    """A run's config (`.hydra/config.yaml`, with `overrides` of solver.* keys applied and checked), its
    checkpoint, and its family's task built on `device` ('cpu' | 'cuda' | 'auto') with the checkpoint's weights
    loaded. `accept(cfg)` may refuse a run (ConfigError) before anything is built. Every problem is one
    ConfigError (DataError when the run's data set cannot be had)."""
    run_dir = Path(run_dir)
    ckpt = read_checkpoint(run_dir / CHECKPOINT, "evaluate")
    cfg = load_config(run_dir)
    mine, theirs = flat(OmegaConf.to_container(cfg)), flat(ckpt["config"])
    differ = sorted(k for k in set(mine) | set(theirs)
                    if k not in RESUMABLE and mine.get(k, ...) != theirs.get(k, ...))
    if differ:
        raise ConfigError(f"{run_dir / CONFIG} does not match the config in its {CHECKPOINT} (they differ in "
                          f"{', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''}): the weights belong to "
                          "another run")
    if accept is not None:
        accept(cfg)
    cfg.device = device
    notes, source = apply_overrides(cfg, dict(overrides or {}))
    check(cfg, training=False)
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    task = build(cfg, dev)
    try:
        task.model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ConfigError(f"the weights in {run_dir / CHECKPOINT} do not fit the model its config builds: "
                          f"{one_line(exc, 200)}") from None
    return Loaded(run_dir, cfg, ckpt, task, dev, notes, source)
