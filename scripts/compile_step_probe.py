"""Does torch.compile of one adaptive Runge-Kutta step body pay on this machine? (issue 27, `solver.compile`)

The step body of dopri5 (its 6 new stage evaluations of the field, the stage sums and the error estimate) on a
2-50-2 tanh field (dynamics_cubic's), batch 20, float32, chained over STEPS steps with the Python-side step control
(one host read of the error ratio per step, as torchdiffeq's loop does), then one backward through all of them
(backprop through the solver, no adjoint). Eager: node-run's fast path (`fastrk._fast_runge_kutta_step`, one
autograd node per stage sum). Compiled: the same arithmetic in one function, torch.compile'd once for the shape
(dt a 0-dim tensor, so one graph serves every step size). The two are timed alternately in one process; the
figure is the median of per-repetition ratios.

    OMP_NUM_THREADS=1 python scripts/compile_step_probe.py [--reps 200] [--steps 10] [--mode default]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn
from torchdiffeq._impl.dopri5 import _DORMAND_PRINCE_SHAMPINE_TABLEAU as TABLEAU

from node_cli.core import fastrk


def field_mlp():
    net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))
    for lin in (net[0], net[2]):
        nn.init.normal_(lin.weight, std=0.1)
        nn.init.zeros_(lin.bias)
    return net


def make_body(net):
    """One dopri5 step body: y1, f1 (= k_6, first same as last), error estimate; dt a 0-dim tensor."""
    beta = [row.tolist() for row in TABLEAU.beta]
    c_error = TABLEAU.c_error.tolist()

    def body(y0, f0, dt):
        ks = [f0]
        yi = y0
        for row in beta:
            acc = None
            for c, k in zip(row, ks):
                if c != 0.0:
                    term = k * (c * dt)
                    acc = term if acc is None else acc + term
            yi = y0 + acc
            ks.append(net(yi))
        err = None
        for c, k in zip(c_error, ks):
            if c != 0.0:
                term = k.detach() * (c * dt)
                err = term if err is None else err + term
        return yi, ks[-1], err
    return body


def error_ratio(err, y0, y1, rtol=1e-5, atol=1e-6):
    with torch.no_grad():
        tol = torch.maximum(y0.abs(), y1.abs()) * rtol + atol
        return float((err / tol).pow(2).mean().sqrt())


def run_eager(net, y0, dts, tableau):
    func = lambda t, y, perturb=None: net(y)   # noqa: E731 - the field, as torchdiffeq's wrapper calls it
    y, f = y0, net(y0)
    t = torch.zeros(())
    for dt in dts:
        y1, f1, err, _ = fastrk._fast_runge_kutta_step(func, y, f, t, dt, t + dt, tableau)
        error_ratio(err, y, y1)
        y, f, t = y1, f1, t + dt
    y.pow(2).sum().backward()


def run_compiled(step, net, y0, dts):
    y, f = y0, net(y0)
    for dt in dts:
        y1, f1, err = step(y, f, dt)
        error_ratio(err, y, y1)
        y, f = y1, f1
    y.pow(2).sum().backward()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--mode", default="default")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = field_mlp()
    y0 = torch.randn(20, 2)
    tableau = TABLEAU   # float32 copy as a solve makes it
    tableau = type(tableau)(*(x.to(torch.float32) if torch.is_tensor(x) else [b.to(torch.float32) for b in x]
                              for x in (tableau.alpha, tableau.beta, tableau.c_sol, tableau.c_error)))
    dts = [torch.tensor(0.01 + 0.001 * i) for i in range(a.steps)]
    body = make_body(net)
    step = torch.compile(body, dynamic=False, fullgraph=True, mode=None if a.mode == "default" else a.mode)

    # correctness: same values and gradients as the eager fast path (to float rounding)
    grads = []
    for fn in (lambda: run_eager(net, y0, dts, tableau), lambda: run_compiled(step, net, y0, dts)):
        net.zero_grad()
        start = time.perf_counter()
        fn()
        grads.append((time.perf_counter() - start, [q.grad.clone() for q in net.parameters()]))
    compile_s = grads[1][0]
    diff = max(float((ge - gc).abs().max() / ge.abs().max()) for ge, gc in zip(grads[0][1], grads[1][1]))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}, load {os.getloadavg()[0]:.2f}")
    print(f"first compiled call (compile forward+backward included): {compile_s:.2f} s; "
          f"max relative gradient difference vs eager: {diff:.2e}")

    for _ in range(20):   # warm-up
        run_eager(net, y0, dts, tableau)
        run_compiled(step, net, y0, dts)
    eager, comp, ratios = [], [], []
    for r in range(a.reps):
        order = [0, 1] if r % 2 == 0 else [1, 0]
        t = [0.0, 0.0]
        for which in order:
            start = time.perf_counter()
            run_eager(net, y0, dts, tableau) if which == 0 else run_compiled(step, net, y0, dts)
            t[which] = time.perf_counter() - start
        eager.append(t[0])
        comp.append(t[1])
        ratios.append(t[0] / t[1])
    per = 1e6 / a.steps
    print(f"per step (forward+backward, {a.steps} steps per solve, {a.reps} alternated reps): "
          f"eager {statistics.median(eager) * per:.0f} us, compiled {statistics.median(comp) * per:.0f} us, "
          f"median ratio eager/compiled {statistics.median(ratios):.2f} "
          f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.2f}-{statistics.quantiles(ratios, n=4)[2]:.2f})")
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
