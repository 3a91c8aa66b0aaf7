"""One configured run, start to end: `execute(cfg, out_dir) -> summary`, shared by node-run, node-bench and any
tool that trains; `configure(overrides)` composes and checks a config outside node-run's own @hydra.main."""
from __future__ import annotations

import datetime
import logging
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from . import families
from .core import stop, threads
from .core.checks import ConfigError, DataError, StorageError, io_error, one_line, resolve_device
from .core.clock import provenance
from .core.compose import compose
from .core.measure import count_parameters
from .core.rundir import CHECKPOINT, RESUMED, SUMMARY, RunDir, locked, write_json

log = logging.getLogger("node_run")
FAILED: list[str] = []        # runs of this process that did not finish with status ok (node-run's exit status)
INTERRUPTED: list[str] = []   # runs of this process that were stopped (their summary says so)


def configure(overrides: list[str]):
    """The config `overrides` compose to, checked (families.check: ConfigError if bad)."""
    cfg = compose(overrides)
    families.check(cfg)
    return cfg


def base_summary(cfg, device) -> dict:
    s = cfg.solver
    return dict(experiment=cfg.name, task=cfg.task, model=cfg.model.name, dataset=cfg.dataset.name,
                solver=dict(method=s.method, rtol=s.rtol, atol=s.atol, adjoint=s.adjoint, adjoint_norm=s.adjoint_norm,
                            max_nfe=s.get("max_nfe")),
                seed=cfg.seed, device=str(device), torch=torch.__version__)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def deterministic(on: bool, device: torch.device) -> None:
    """`deterministic=true`: PyTorch's deterministic algorithms (an op without one fails the run, saying which)."""
    torch.use_deterministic_algorithms(bool(on))
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = bool(on), False


def execute(cfg, out_dir, resume: dict | None = None, history: list | None = None) -> dict:
    """Train one configured run into `out_dir` (continuing from the checkpoint `resume`; a `history` of earlier
    resumes, rundir.resumes(), marks a continued folder, even without a checkpoint: a restart from step 0); returns
    its summary, also written to summary.json whatever happens. The folder is locked for the whole run
    (ConfigError if another process runs in it)."""
    with locked(out_dir):
        return _execute(cfg, out_dir, resume, history)


def _execute(cfg, out_dir, resume: dict | None, history: list | None) -> dict:
    from .core.train import fit

    run = RunDir(out_dir, cfg.get("logger"), cfg)
    device = resolve_device(cfg.device) if cfg.device in ("auto", "cpu", "cuda") else cfg.device
    summary = dict(base_summary(cfg, device), **provenance(device))
    if resume is not None or history is not None:
        summary["resumed"] = list(history or []) + [dict(at=_now(), from_step=resume["step"] if resume else 0,
                                                         max_steps=cfg.trainer.max_steps, epochs=cfg.trainer.epochs)]
        write_json(run.path / RESUMED, summary["resumed"])   # now: a process killed later still counts
    log.info("%s %s on %s; config:\n%s", "resuming from step %s:" % resume["step"] if resume else
             "starting again from step 0:" if history is not None else "starting:",
             cfg.name, device, OmegaConf.to_yaml(cfg))
    with stop.watch(immediate=True):   # a signal while loading stops at once; fit's steps end cleanly
        try:
            families.check(cfg)   # a no-op for a config the pre-check (or `configure`) checked in this process
            # torch threads for this run (the summary's `threads` then says what was used, and why)
            summary.update(threads.apply(cfg.get("threads", "auto"), families.get(cfg.task).threads))
            log.info("%s", threads.describe(summary))
            deterministic(cfg.get("deterministic", False), device)
            torch.manual_seed(cfg.seed)
            task = families.build(cfg, device)
            summary["params"] = count_parameters(task.model)
            summary.update(fit(cfg, task, run, device, resume=resume))
        except (ConfigError, DataError) as exc:
            summary.update(status="error", error=one_line(exc), finished=_now())
            run.write_summary(summary)
            log.error("error: %s", one_line(exc))
            raise
        except KeyboardInterrupt:
            where = f"before continuing from step {resume['step']}" if resume else "before the first training step"
            summary.update(status="interrupted", finished=_now(),
                           error=f"stopped while loading the data or building the model, {where}")
            run.write_summary(summary)
            log.warning("interrupted: %s", summary["error"])
            raise
        except OSError as exc:   # the run folder cannot be written: disk full, deleted, read-only
            unwritable(run, summary, exc)
        objective = cfg.get("objective")
        summary.update(objective=objective, objective_value=summary.get(objective), run_dir=str(run.path),
                       finished=_now())
        try:
            run.write_summary(summary)   # before the watcher hands a preemption on (submitit requeues and exits)
        except OSError as exc:
            unwritable(run, summary, exc)
        log.info("status %s after %s steps%s", summary["status"], summary["steps"],
                 f": {summary['error']}" if summary.get("error") else "")
    return summary


def unwritable(run: RunDir, summary: dict, exc: OSError):
    """End a run whose folder cannot be written: status error, the reason in its summary if that can still be
    written (the files written before stay as they were), one StorageError for the command line."""
    error = io_error(exc, run.path)
    if not run.path.is_dir():
        error += f" ({run.path} no longer exists: was it deleted while the run was running?)"
    summary.update(status="error", error=error, finished=_now())
    try:
        run.write_summary(summary)
        where = f"summary in {run.path / SUMMARY}"
    except OSError as again:
        where = f"no {SUMMARY} could be written" + (f": {io_error(again, run.path)}" if run.path.is_dir() else "")
    log.error("error: %s", error)
    raise StorageError(f"{error} ({where})") from None


def report_lines(summary: dict, out_dir) -> list[str]:
    """What node-run prints when a run ends: status, test metrics, parameters, NFE, speed, memory, folder."""
    lines = [f"node-run: {summary['experiment']} ({summary['model']}) status {summary['status']} "
             f"in {summary['wall_time']:.1f} s on {summary['device']}"]
    for key, value in summary.items():
        if key.startswith("test_") and isinstance(value, float):
            lines.append(f"  {key:<18} {value:.4f}")
    if "test_error" in summary:
        lines.append(f"  {'test accuracy':<18} {100 * (1 - summary['test_error']):.2f}%")
    lines += [f"  {'parameters':<18} {summary.get('params', 0):,}",
              f"  {'NFE-F / NFE-B':<18} {summary['nfe_forward']:.1f} / {summary['nfe_backward']:.1f} per training step"
              f"  ({summary['nfe_backward_note']})",
              f"  {'seconds per step':<18} {summary['sec_per_step']:.3f}"]
    if "activation_bytes" in summary:
        lines.append(f"  {'memory':<18} {summary['activation_bytes'] / 2**20:.2f} MiB saved for backward, "
                     f"peak {summary['peak_memory_bytes'] / 2**20:.2f} MiB ({summary['peak_memory_method']})")
    lines.append(f"  {'outputs':<18} {out_dir}")
    return lines


def exit_status(summary: dict) -> int:
    """The exit status a run's summary gives its command: 0 ok, 128 + the signal's number when it was stopped
    (130 for Ctrl-C), 1 otherwise."""
    if summary["status"] == "interrupted":
        return 128 + (stop.last_signal or 2)
    return 0 if summary["status"] == "ok" else 1


def finish(summary: dict, out_dir) -> int:
    """Print the run's report (and why it failed, if it did); return its exit status (`exit_status`)."""
    print("\n".join(report_lines(summary, out_dir)), flush=True)
    if summary["status"] not in ("ok", "interrupted"):
        kept = "last good checkpoint kept" if (Path(out_dir) / CHECKPOINT).is_file() else "no checkpoint yet"
        print(f"node-run: error: run {summary['status']}: {summary['error']} "
              f"(summary in {Path(out_dir) / SUMMARY}; {kept})", file=sys.stderr, flush=True)
    return exit_status(summary)
