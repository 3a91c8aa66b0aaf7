"""Backward evaluations of one adjoint pass with the default norm and with the seminorm, on trained CNF runs.

Loads each run's checkpoint and config, and for each tolerance computes the training loss on the run's fixed
memory batch, then one backward pass by the adjoint with solver.adjoint_norm=default and =seminorm: the same
model, the same batch, only the norm differs. Prints one table row per run and tolerance.

    python scripts/flows_seminorm.py outputs/flows_tables/nll_cnf_circles/0 outputs/flows_tables/kl_cnf/8
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from node_cli.core.rundir import CHECKPOINT

from node_cli.core.runs import read_checkpoint
from node_cli.core.solve import nfe
from node_cli.families.flows.task import FlowTask


def backward_nfe(cfg, state, norm: str, tol: float) -> tuple[int, int]:
    cfg = OmegaConf.merge(cfg, {"solver": {"adjoint": True, "adjoint_norm": norm, "rtol": tol, "atol": tol}})
    task = FlowTask(cfg, torch.device("cpu"))
    task.model.load_state_dict(state)
    loss = task.loss(task.memory_batch())
    f0, b0 = nfe(task.model)
    loss.backward()
    f1, b1 = nfe(task.model)
    return f0, b1 - b0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tol", type=float, nargs="+", default=[1e-3, 1e-5])
    args = parser.parse_args(argv)
    print("| run | experiment | tol | NFE-F | NFE-B default | NFE-B seminorm | saved |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        ck = read_checkpoint(run / CHECKPOINT, "evaluate")
        cfg = OmegaConf.create(ck["config"])
        if cfg.model.name != "cnf":
            continue
        label = cfg.name + (f" {cfg.dataset.target} M={cfg.model.width}" if cfg.dataset.name == "density" else "")
        for tol in args.tol:
            f, default = backward_nfe(cfg, ck["model"], "default", tol)
            _, semi = backward_nfe(cfg, ck["model"], "seminorm", tol)
            print(f"| {run} | {label} | {tol:g} | {f} | {default} | {semi} | {100 * (1 - semi / default):.1f}% |",
                  flush=True)


if __name__ == "__main__":
    main()
