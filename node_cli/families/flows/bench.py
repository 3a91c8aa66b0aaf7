"""`node-bench ffjord`: seconds per training step of FFJORD with the exact trace against Hutchinson's estimator as
the dimension d grows (FFJORD's claim: the exact trace costs d vector-Jacobian products per evaluation of the
field, Hutchinson's one, so its cost stays nearly flat in d).

For each d, two FFJORD models (model=ffjord's field, `--trace-hidden` wide, the same initial weights) are trained by
maximum likelihood on a d-dimensional mixture of 8 Gaussians (means N(0, 4 I), std 0.5, fixed seed), fresh batches
every step, with the same fixed-step solver (rk4, `--trace-solver-steps` steps over the flow time 0.5, the adjoint
solved the same way), so both make exactly the same number of field evaluations per step and the comparison is per
evaluation. The runners alternate within each repetition (ABBA order) so that a shared CPU slows both alike; the
table has the median seconds per step of each and the median of the per-repetition ratios, all in one process.
"""
from __future__ import annotations

import math
import time

import torch

from ...core.checks import ConfigError
from ...core.clock import environment, median
from ...core.meter import Count
from ...core.tables import write_table

T1 = 0.5


def mixture(d: int, n: int, generator: torch.Generator, means: torch.Tensor) -> torch.Tensor:
    k = torch.randint(0, len(means), (n,), generator=generator)
    return means[k] + 0.5 * torch.randn(n, d, generator=generator)


def add_arguments(p) -> None:
    p.add_argument("--dims", default="2,8,32,128", help="ffjord: dimensions d (default 2,8,32,128)")
    p.add_argument("--trace-reps", type=int, default=5, help="ffjord: timed repetitions per runner (default 5)")
    p.add_argument("--trace-warmup", type=int, default=1, help="ffjord: untimed repetitions first (default 1)")
    p.add_argument("--trace-batch", type=int, default=256, help="ffjord: batch size (default 256)")
    p.add_argument("--trace-hidden", type=int, default=64, help="ffjord: width of the field's 3 hidden layers "
                   "(default 64)")
    p.add_argument("--trace-solver-steps", type=int, default=4, help="ffjord: rk4 steps over the flow time "
                   "(default 4: 16 forward evaluations per step)")


def check_arguments(args, items, numbers) -> None:
    args.dims = numbers(args.dims, "dims", int)
    for key in ("trace_reps", "trace_batch", "trace_hidden", "trace_solver_steps"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')}={getattr(args, key)} is not allowed: it must be a "
                              "positive integer")
    if args.trace_warmup < 0:
        raise ConfigError("--trace-warmup must be at least 0")


class Runner:
    """One FFJORD training step as node-run makes it: the model's loss, core/train.py's optimizer."""

    def __init__(self, cfg, dim: int, trace: str, init: dict | None, device: torch.device):
        from ...core.train import make_optimizer
        from .ffjord import build_ffjord

        self.trace = trace
        self.model = build_ffjord(cfg, dim).to(device)
        self.model.field.trace = trace
        if init is not None:
            self.model.load_state_dict(init)
        self.optimizer = make_optimizer(cfg.trainer, self.model.parameters())

    def step(self, batch) -> tuple[float, int, int, float]:
        with Count(self.model) as c:
            tic = time.perf_counter()
            loss = self.model.loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            sec = time.perf_counter() - tic
        return sec, c.nfe_forward, c.nfe_backward, loss.item()


def bench_dim(args, d: int, device: torch.device, log) -> dict:
    cfg = args.configure([
        "experiment=ffjord_8gaussians", "solver=rk4", f"solver.step_size={T1 / args.trace_solver_steps}",
        f"model.t1={T1}", "model.learn_t1=false", f"model.hidden=[{args.trace_hidden},{args.trace_hidden},"
        f"{args.trace_hidden}]", f"trainer.batch_size={args.trace_batch}", f"seed={args.seed}",
        f"device={args.device}"])
    torch.manual_seed(args.seed)
    exact = Runner(cfg, d, "exact", None, device)
    hutch = Runner(cfg, d, "hutchinson", exact.model.state_dict(), device)
    gen = torch.Generator().manual_seed(args.seed)
    means = 2 * torch.randn(8, d, generator=gen)
    times = {"exact": [], "hutchinson": []}
    evals = {}
    for rep in range(args.trace_warmup + args.trace_reps):
        batch = mixture(d, args.trace_batch, gen, means).to(device)
        for r in ((exact, hutch) if rep % 2 == 0 else (hutch, exact)):
            sec, f, b, loss = r.step(batch)
            if not math.isfinite(loss):
                raise ConfigError(f"node-bench ffjord: non-finite loss at d={d} ({r.trace} trace)")
            evals[r.trace] = (f, b)
            if rep >= args.trace_warmup:
                times[r.trace].append(sec)
        log(f"  d={d}: repetition {rep + 1}/{args.trace_warmup + args.trace_reps} "
            + " ".join(f"{k}={v[-1]:.3f}s" for k, v in times.items() if v))
    ratios = [a / b for a, b in zip(times["exact"], times["hutchinson"])]
    return dict(dim=d, hidden=args.trace_hidden, batch=args.trace_batch, solver=f"rk4 x {args.trace_solver_steps}",
                nfe_forward=evals["exact"][0], nfe_backward=evals["exact"][1],
                same_nfe=evals["exact"] == evals["hutchinson"], reps=args.trace_reps,
                sec_exact=median(times["exact"]), sec_hutchinson=median(times["hutchinson"]),
                ratio=median(ratios), threads=torch.get_num_threads())


COLUMNS = [("dim", "d", "{}"), ("solver", "solver", str), ("nfe_forward", "NFE-F", "{}"),
           ("nfe_backward", "NFE-B", "{}"), ("same_nfe", "same NFE", lambda v: "yes" if v else "NO"),
           ("sec_exact", "s/step exact", "{:.4f}"), ("sec_hutchinson", "s/step Hutchinson", "{:.4f}"),
           ("ratio", "exact / Hutchinson", "{:.2f}x")]


def run(args, device, out, log) -> list[str]:
    rows = []
    for d in args.dims:
        log(f"node-bench ffjord: d={d}")
        rows.append(bench_dim(args, d, device, log))
    env = environment(args.line, device)
    h = args.trace_hidden
    header = (f"## FFJORD: seconds per training step, exact against Hutchinson trace\n"
              f"`{env['command']}` on {env['machine']} ({env['threads']} torch threads, {env['device']}), "
              f"load average at the end {env['load_average']}. A d-{h}-{h}-{h}-d concat-squash field (tanh), "
              f"batch {args.trace_batch}, mixture of 8 Gaussians in d dimensions, Adam; both runners solve with the "
              f"same fixed-step rk4 (adjoint too), so NFE is equal by construction; {args.trace_reps} timed "
              f"repetitions after {args.trace_warmup} warm-up, runners alternated; medians; the ratio is the "
              "median of the per-repetition ratios.")
    return [write_table(out, "ffjord_trace", rows, COLUMNS, header)]
