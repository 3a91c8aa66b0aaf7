"""Where a training step's time goes, by counts that do not depend on the machine's load: the ATen ops and the
autograd nodes of one step of node-run (its light graph on and off) and of the family's reference loop
(`node-bench reference`), from torch.profiler, with the ops that occur most and their self CPU time.

    OMP_NUM_THREADS=1 python scripts/profile_step.py dynamics dynamics_cubic
    OMP_NUM_THREADS=1 python scripts/profile_step.py spirals spiral_latent_ode --steps 3
    OMP_NUM_THREADS=1 python scripts/profile_step.py dynamics dynamics_cubic solver.first_step_grad=false

Extra arguments are node-run config overrides. The self times are what the profiler measured on this machine
(loaded or not); the counts are the same on any machine.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from node_cli.bench import reference
from node_cli.core import fastrk
from node_cli.core.train import make_optimizer
from node_cli.experiment import configure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("family")
    p.add_argument("row")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(1)
    loop = reference.loops()[args.family][args.row](lambda o: configure(list(o) + args.overrides),
                                                    torch.device("cpu"), 0, 3 * (args.steps + 1))
    node = reference.node_step(loop.task, make_optimizer(loop.cfg.trainer, loop.task.model.parameters()))
    found, batches = {}, iter(loop.batches)
    for label, step, light in (("node-run", node, True), ("node-run, LIGHT_GRAPH off", node, False),
                               ("reference", loop.step, True)):
        fastrk.LIGHT_GRAPH = light
        step(next(batches))                                       # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step(next(batches))
        found[label] = {e.key: (e.count / args.steps, e.self_cpu_time_total / args.steps)
                        for e in prof.key_averages()}
    fastrk.LIGHT_GRAPH = True
    print(f"{args.row}, per training step (mean of {args.steps}), {torch.get_num_threads()} thread")
    for label, ops in found.items():
        aten = sum(c for k, (c, _) in ops.items() if k.startswith("aten::"))
        nodes = sum(c for k, (c, _) in ops.items() if k.startswith("autograd::engine::evaluate_function"))
        print(f"  {label}: {aten:.0f} ATen ops, {nodes:.0f} autograd nodes run by the backward")
    labels = list(found)
    print("\ncalls per step (" + " | ".join(labels) + "), node-run's self CPU µs per step, name")
    for key, (count, us) in sorted(found[labels[0]].items(), key=lambda kv: -kv[1][1])[:args.top]:
        counts = " | ".join(f"{found[lb].get(key, (0, 0))[0]:6.0f}" for lb in labels)
        print(f"  {counts}  {us:8.0f}  {key[:80]}")


if __name__ == "__main__":
    main()
