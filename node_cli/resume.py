"""`node-run resume=RUN_DIR [trainer.max_steps=N | trainer.epochs=N]`: continue a run in its own folder.

An interrupted run continues from its last checkpoint to the end of its budget; a finished run continues when it is
given a larger budget. A run whose training is complete but whose final phase is not (killed or stopped during the
final evaluation or the figures: no summary saying ok) makes that phase again from its final checkpoint: evaluation,
figures, summary. A run stopped before its first checkpoint starts again from step 0 with its own config. A folder
another node-run runs in (it holds the folder's lock) is refused. Everything the run was is restored (core/train.py): model, optimizer, lr schedule, counters,
random generators, running totals, and metrics.jsonl is continued, not restarted. Only the budget may be changed,
and it is written back into the run's `.hydra/config.yaml`, so the folder keeps saying what the run is.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from .core.checks import ConfigError, DataError, StorageError, integer, one_line
from .core.rundir import BUDGET, CHECKPOINT, CONFIG, RESUMABLE, SUMMARY, atomic_write, locked, read_summary, resumes
from .core.runs import load_config, read_checkpoint


def parse(argv: list[str]) -> tuple[Path, dict]:
    folder, changes = None, {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key == "resume" and sep:
            folder = Path(value).expanduser() if value.strip() else None   # Path("") is the working directory
        elif key in BUDGET and sep:
            changes[key] = _int(key, value)
        elif key == "trainer.progress" and value in ("true", "false"):
            changes[key] = value == "true"
        else:
            raise ConfigError(f"{arg!r} cannot be combined with resume=: a resumed run stays what its "
                              f"{CONFIG} says; only {', '.join(RESUMABLE)} may change")
    if folder is None or not str(folder):
        raise ConfigError("resume= needs a run folder: node-run resume=outputs/NAME/TIME")
    return folder, changes


def _int(key: str, value: str):
    if value == "null" and key == "trainer.max_steps":
        return None
    try:
        number = int(value)
    except ValueError:
        number = value
    integer(number, key, 1)
    return number


def changed_budget(cfg, ckpt: dict) -> bool:
    return any(OmegaConf.select(cfg, k) != OmegaConf.select(OmegaConf.create(ckpt["config"]), k) for k in BUDGET)


def prepare(folder: Path, changes: dict):
    """The run's config with the new budget, its checkpoint (None: the run stopped before its first one, and starts
    again from step 0) and its resume history (ConfigError if it cannot be continued)."""
    if not (folder / CONFIG).is_file():
        raise ConfigError(f"{folder} is not a node-run run folder (no {CONFIG})")
    if not (folder / CHECKPOINT).exists():   # nothing trained to lose: start again, as the folder's config says
        cfg = load_config(folder)
        for key, value in changes.items():
            OmegaConf.update(cfg, key, value)
        return cfg, None, resumes(folder)
    ckpt = read_checkpoint(folder / CHECKPOINT, "resume")
    cfg = load_config(folder)
    if OmegaConf.to_container(cfg) != ckpt["config"]:
        raise ConfigError(f"{folder / CONFIG} no longer matches the checkpoint's config; it cannot be continued")
    try:
        summary = read_summary(folder)
    except (OSError, ValueError):
        summary = {}
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    budget_changed = changed_budget(cfg, ckpt)
    if budget_changed and cfg.trainer.get("schedule") == "cosine":
        raise ConfigError("trainer.schedule=cosine plans its lr over the budget the run started with: it can be "
                          "continued only to that budget (resume= without trainer.max_steps / trainer.epochs)")
    done = summary.get("status") == "ok" and summary.get("steps") == ckpt["step"]   # else its final phase is owed
    if ckpt["final"] and not budget_changed and done:
        raise ConfigError(f"{folder} finished its budget ({ckpt['step']} steps, status ok); give a larger "
                          "trainer.max_steps or trainer.epochs to continue it")
    if budget_changed and cfg.trainer.max_steps is not None and cfg.trainer.max_steps <= ckpt["step"]:
        raise ConfigError(f"trainer.max_steps={cfg.trainer.max_steps} is not beyond the checkpoint's step "
                          f"{ckpt['step']}")
    return cfg, ckpt, resumes(folder)


def main(argv: list[str]) -> None:
    from .core import stop
    from .experiment import execute, finish
    from . import families

    held = contextlib.ExitStack()   # the folder's lock, from before the config is rewritten to the end
    try:
        folder, changes = parse(argv)
        cfg, ckpt, history = prepare(folder, changes)
        families.check(cfg)
        held.enter_context(locked(folder))
    except (ConfigError, DataError) as exc:
        print(f"node-run: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    if ckpt is None:
        print(f"node-run: {folder} stopped before its first checkpoint: starting it again from step 0 with its own "
              "config", file=sys.stderr, flush=True)
    elif ckpt["final"] and not changed_budget(cfg, ckpt):
        print(f"node-run: {folder} finished training (step {ckpt['step']}) but not its final phase: making the "
              "final evaluation, figures and summary again", file=sys.stderr, flush=True)
    if changes:
        atomic_write(folder / CONFIG, lambda tmp: OmegaConf.save(cfg, tmp))
    handler = logging.FileHandler(folder / "node-run.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger = logging.getLogger("node_run")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with stop.watch(immediate=True):
            summary = execute(cfg, folder, resume=ckpt, history=history)
        status = finish(summary, folder)
    except (ConfigError, DataError, StorageError) as exc:
        print(f"node-run: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"node-run: interrupted; {folder / SUMMARY} says so", file=sys.stderr)
        sys.exit(128 + (stop.last_signal or 2))
    finally:
        logger.removeHandler(handler)
        held.close()
    if status > 128:
        print(f"node-run: interrupted; {folder / SUMMARY} says so", file=sys.stderr)
    if status:
        sys.exit(status)
