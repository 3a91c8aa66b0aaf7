"""`node-eval RUN_DIR [solver.KEY=VALUE ...] [--split test] [--device cpu|cuda|auto]`: evaluate a finished (or
stopped) run's checkpoint again, on the whole test split, at the run's own solver settings or at other ones.

- The run is what its `.hydra/config.yaml` says; its `checkpoint.pt` is read with `weights_only=True`
  (core.rundir.load_checkpoint). The two must describe the same run (they may differ only in the budget keys
  `node-run resume=` may change).
- Only `solver.*` settings may be overridden (Hydra-style `key=value`, values parsed as OmegaConf parses them:
  `solver.rtol=1e-5` is a float, `solver.adjoint=false` a bool, `solver.step_size=null` None). Any other key would
  evaluate something other than the run, and is refused.
- A model with `model.eval_tol` (the CNF) evaluates at rtol = atol = eval_tol, whatever it trained with. When
  `solver.rtol` and/or `solver.atol` are overridden on such a run, those overrides are what the evaluation uses
  instead: an overridden tolerance takes the override, one not overridden stays at eval_tol (the tolerance the
  run's own evaluation used), and the summary's `tolerance_from` and `eval_tol_note` say so. Without such an
  override it evaluates at eval_tol exactly as the run did.
- The result goes to `RUN_DIR/eval/<YYYY-mm-dd_HH-MM-SS-ffffff>/summary.json` (written atomically, only once the
  evaluation succeeded); nothing else in the run folder is written or changed.

`load_run(run_dir, device, overrides)` (config + checkpoint + the family's task with the weights loaded) is also
what `node-report tolsweep` uses. Families are reached only through the registry (`node_cli.families`).
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf

from . import families
from .core.checks import DEVICES, ConfigError, DataError, one_line, resolve_device, validate
from .core.compose import nearest
from .core.rundir import CHECKPOINT, CONFIG, load_checkpoint, read_summary, write_json
from .core.solve import nfe

SPLITS = ("test",)
EVAL_DIR = "eval"
RESULT = "summary.json"
RESUMABLE = ("trainer.max_steps", "trainer.epochs", "trainer.progress")   # what node-run resume= may rewrite
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
        from .core.compose import compose
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


def _flat(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


# ----------------------------------------------------------------------------------------------- loading
def load_run(run_dir, device: str = "cpu", overrides: dict | None = None,
             accept: Callable | None = None) -> Loaded:
    """A run's config (`.hydra/config.yaml`, with `overrides` of solver.* keys applied and checked), its
    checkpoint, and its family's task built on `device` ('cpu' | 'cuda' | 'auto') with the checkpoint's weights
    loaded. `accept(cfg)` may refuse a run (ConfigError) before anything is built. Every problem is one
    ConfigError (DataError when the run's data set cannot be had)."""
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a node-run run folder (no {CONFIG}: cannot tell what the run is)")
    try:
        cfg = OmegaConf.load(run_dir / CONFIG)
        if not OmegaConf.is_dict(cfg) or "solver" not in cfg or "task" not in cfg:
            raise ValueError("not a node-run config (no task or solver)")
    except Exception as exc:  # noqa: BLE001 - unreadable or not a mapping
        raise ConfigError(f"cannot read {run_dir / CONFIG}: {one_line(exc, 200)}") from None
    mine, theirs = _flat(OmegaConf.to_container(cfg)), _flat(ckpt["config"])
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
    validate(cfg)
    families.check(cfg)
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    task = families.build(cfg, dev)
    try:
        task.model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ConfigError(f"the weights in {run_dir / CHECKPOINT} do not fit the model its config builds: "
                          f"{one_line(exc, 200)}") from None
    return Loaded(run_dir, cfg, ckpt, task, dev, notes, source)


# -------------------------------------------------------------------------------------------- evaluation
def new_eval_dir(run_dir: Path) -> Path:
    """RUN_DIR/eval/<time>, made here (never an existing one)."""
    base = run_dir / EVAL_DIR
    base.mkdir(exist_ok=True)
    while True:
        path = base / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def evaluate(run_dir, overrides: list[str] | tuple = (), split: str = "test", device: str = "cpu") -> Path:
    """Evaluate the run's checkpoint on `split`; returns the written summary.json."""
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r} is not available; accepted: {', '.join(SPLITS)}")
    if device not in DEVICES:
        raise ConfigError(f"--device {device!r} is not available; accepted: {', '.join(DEVICES)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such folder")
    changes = parse_overrides(overrides)
    loaded = load_run(run_dir, device, changes)
    cfg, task, dev = loaded.cfg, loaded.task, loaded.device
    tic = time.perf_counter()
    f0, _ = nfe(task.model)
    metrics = task.evaluate(None)
    f1, _ = nfe(task.model)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - tic
    try:
        run_status = read_summary(run_dir).get("status")
    except (OSError, ValueError):
        run_status = None
    summary = dict(kind="node-eval", status="ok", run_dir=str(run_dir.resolve()), experiment=cfg.get("name"),
                   task=cfg.task, model=cfg.model.get("name"), dataset=cfg.dataset.get("name"), split=split)
    summary.update(metrics)
    summary.setdefault("eval_nfe_forward", f1 - f0)
    summary.update(eval_nfe_forward_total=f1 - f0, solver=evaluated_solver(cfg), tolerance_from=loaded.tolerance_from,
                   overrides=list(overrides), checkpoint_step=loaded.ckpt.get("step"),
                   checkpoint_final=loaded.ckpt.get("final"), checkpoint_metrics=loaded.ckpt.get("metrics"),
                   run_status=run_status, wall_time=seconds, device=str(dev), torch=torch.__version__,
                   created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    if loaded.notes:
        summary["eval_tol_note"] = " ".join(loaded.notes)
    out = new_eval_dir(run_dir) / RESULT
    write_json(out, summary)
    return out


def report_lines(summary: dict, path: Path) -> list[str]:
    s = summary["solver"]
    lines = [f"node-eval: {summary['run_dir']} at step {summary['checkpoint_step']} ({summary['model']}), "
             f"{summary['split']} split on {summary['device']}: {s['method']} rtol={s['rtol']:g} atol={s['atol']:g}"
             f" ({summary['tolerance_from']}) in {summary['wall_time']:.1f} s"]
    for key, value in summary.items():
        if key.startswith("test_") and isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"  {key:<28} {value:.6g}")
    lines.append(f"  {'eval_nfe_forward':<28} {summary['eval_nfe_forward']:.6g}")
    if summary.get("eval_tol_note"):
        lines.append(f"  note: {summary['eval_tol_note']}")
    lines.append(f"node-eval: wrote {path}")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="node-eval",
        description="Evaluate a node-run run's checkpoint on its whole test split, at its own solver settings or "
                    "with solver.* overrides. Writes RUN_DIR/eval/<time>/summary.json; the run's own files are "
                    "never touched.")
    p.add_argument("run_dir", help="a node-run run folder (.hydra/config.yaml and checkpoint.pt)")
    p.add_argument("overrides", nargs="*", help="solver.KEY=VALUE, e.g. solver.rtol=1e-5 solver.atol=1e-5 "
                                                 "solver.method=rk4 solver.step_size=0.05")
    p.add_argument("--split", default="test", help="the split to evaluate: test (the only one for now)")
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    args = p.parse_args(argv)
    try:
        out = evaluate(args.run_dir, args.overrides, args.split, args.device)
    except ConfigError as exc:
        print(f"node-eval: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except DataError as exc:
        print(f"node-eval: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    import json
    print("\n".join(report_lines(json.loads(out.read_text()), out)), flush=True)


if __name__ == "__main__":
    main()
