"""node-run's training step under two sets of config overrides, timed alternately in one process (A B B A ...)
on the same batches from the same initial weights: the fair way to compare a speed option on a loaded machine
(two `node-bench reference` runs compare only through their reference loops, and move by +-0.2x between runs).

    OMP_NUM_THREADS=1 python scripts/step_ab.py dynamics dynamics_cubic --b solver.compile=true
    OMP_NUM_THREADS=1 python scripts/step_ab.py dynamics dynamics_cubic --a solver.first_step_grad=false \\
        --b "solver.first_step_grad=false solver.compile=true"

The family and row are those of `node-bench reference` (its batches and node-run step). Prints each side's median
seconds per step, NFE per step, the median of the per-step ratios A/B (>1: B is faster) and its quartiles, and
the seconds of the first (warm-up) step of each side, where a compiled step pays its compilation.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from node_cli.bench import reference
from node_cli.core.train import make_optimizer
from node_cli.experiment import configure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("family")
    p.add_argument("row")
    p.add_argument("--a", default="", help="config overrides of side A, space-separated (default: none)")
    p.add_argument("--b", default="", help="config overrides of side B")
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    sides = {}
    for key, overrides in (("A", args.a.split()), ("B", args.b.split())):
        loop = reference.loops()[args.family][args.row](lambda o, extra=overrides: configure(list(o) + extra),
                                                        torch.device("cpu"), 0, args.warmup + args.reps)
        sides[key] = (loop, reference.node_step(loop.task, make_optimizer(loop.cfg.trainer,
                                                                           loop.task.model.parameters())))
    batches = sides["A"][0].batches   # the same seed: the same batches and initial weights on both sides
    sec, nfe, first = {"A": [], "B": []}, {"A": [], "B": []}, {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.2f}; "
          f"A: {args.a or 'defaults'}; B: {args.b or 'defaults'}", flush=True)
    for rep in range(args.warmup + args.reps):
        for key in (("A", "B") if rep % 2 == 0 else ("B", "A")):
            torch.manual_seed(rep)
            tic = time.perf_counter()
            _, f, b = sides[key][1](batches[rep])
            elapsed = time.perf_counter() - tic
            first.setdefault(key, elapsed)
            if rep >= args.warmup:
                sec[key].append(elapsed)
                nfe[key].append(f + b)
    ratios = [a / b for a, b in zip(sec["A"], sec["B"])]
    q = statistics.quantiles(ratios, n=4)
    for key in ("A", "B"):
        print(f"{key}: {statistics.median(sec[key]):.5f} s/step, NFE {statistics.median(nfe[key]):g}, first step "
              f"{first[key]:.2f} s")
    print(f"A/B per step: median {statistics.median(ratios):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}), "
          f"{args.reps} alternated steps; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
