"""One configured run, start to end: `execute(cfg, out_dir) -> summary`, shared by node-run, node-bench and any
tool that trains; `configure(overrides)` composes and checks a config outside node-run's own @hydra.main."""
from __future__ import annotations

import torch

from . import families
from .core.checks import ConfigError, DataError, one_line, resolve_device, validate
from .core.compose import compose
from .core.measure import count_parameters
from .core.rundir import RunDir


def configure(overrides: list[str]):
    """The config `overrides` compose to, after the shared checks and its family's own (ConfigError if bad)."""
    cfg = compose(overrides)
    validate(cfg)
    families.check(cfg)
    return cfg


def base_summary(cfg, device) -> dict:
    s = cfg.solver
    return dict(experiment=cfg.name, task=cfg.task, model=cfg.model.name, dataset=cfg.dataset.name,
                solver=dict(method=s.method, rtol=s.rtol, atol=s.atol, adjoint=s.adjoint, adjoint_norm=s.adjoint_norm),
                seed=cfg.seed, device=str(device), torch=torch.__version__)


def execute(cfg, out_dir) -> dict:
    """Train one configured run into `out_dir`; returns its summary (also written to summary.json)."""
    from .core.train import fit

    run = RunDir(out_dir)
    device = resolve_device(cfg.device) if cfg.device in ("auto", "cpu", "cuda") else cfg.device
    summary = base_summary(cfg, device)
    try:
        validate(cfg)
        families.check(cfg)
        torch.manual_seed(cfg.seed)
        task = families.build(cfg, device)
        summary["params"] = count_parameters(task.model)
        summary.update(fit(cfg, task, run, device))
    except (ConfigError, DataError) as exc:
        summary.update(status="error", error=one_line(exc))
        run.write_summary(summary)
        raise
    summary["run_dir"] = str(run.path)
    run.write_summary(summary)
    return summary


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
