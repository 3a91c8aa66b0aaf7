"""Plain loops written the way the flows' reference scripts write them, for `node-bench reference`.

- `cnf_circles`: torchdiffeq's `examples/cnf.py`: the CNF field computes its hypernetwork's (W, B, U), the units
  as a batched matmul over a repeated z, the mean over units, and the trace by one `autograd.grad` per dimension
  (`trace_df_dz`); `odeint` (no adjoint) called directly on (z, log p) from t1 to 0 at rtol = atol = 1e-5, the
  base's log-density from `MultivariateNormal`, Adam lr 1e-3.
- `ffjord_8gaussians`: FFJORD's `train_toy.py` with the exact trace: its `ODEfunc` (Python evaluation counter,
  grad enabled on y and t inside, the brute-force trace `divergence_bf`: one `autograd.grad` with create_graph
  per dimension), `odeint_adjoint` called directly, the learned end time, Adam lr 1e-3 with weight decay 1e-5.
Both on node-run's field architecture (node-run's hypernetwork / concat-squash layers, copied weights) and batches,
at node-run's tolerances.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from ..base import ReferenceLoop
from .models import log_normal


def trace_df_dz(f, z):
    """cnf.py's trace: one autograd.grad per dimension."""
    sum_diag = 0.
    for i in range(z.shape[1]):
        sum_diag += torch.autograd.grad(f[:, i].sum(), z, create_graph=True)[0].contiguous()[:, i].contiguous()
    return sum_diag.contiguous()


class CNF(nn.Module):
    """cnf.py's CNF on node-run's hypernetwork (t -> w [M, 2], b [M], u [M, 2])."""

    def __init__(self, hyper_net: nn.Module, width: int):
        super().__init__()
        self.hyper_net, self.width = hyper_net, width
        self.nfe = 0

    def forward(self, t, states):
        self.nfe += 1
        z = states[0]
        batchsize = z.shape[0]
        with torch.set_grad_enabled(True):
            z.requires_grad_(True)
            w, b, u = self.hyper_net(t)
            W, B, U = w.view(self.width, 2, 1), b.view(self.width, 1, 1), u.view(self.width, 1, 2)
            Z = torch.unsqueeze(z, 0).repeat(self.width, 1, 1)
            h = torch.tanh(torch.matmul(Z, W) + B)
            dz_dt = torch.matmul(h, U).mean(0)
            dlogp_z_dt = -trace_df_dz(dz_dt, z).view(batchsize, 1)
        return (dz_dt, dlogp_z_dt)


def cnf_loop(configure, device, seed: int, n_batches: int) -> ReferenceLoop:
    from .task import FlowTask

    cfg = configure(["experiment=cnf_circles", f"seed={seed}", f"device={device.type}"])
    torch.manual_seed(seed)
    task = FlowTask(cfg, device)
    batches = [next(iter(task.train_batches(0))) for _ in range(n_batches)]
    func = CNF(copy.deepcopy(task.model.block.vector_field.hyper), int(cfg.model.width))
    optimizer = torch.optim.Adam(func.parameters(), lr=1e-3)
    std = float(cfg.dataset.base_std)
    p_z0 = torch.distributions.MultivariateNormal(loc=torch.zeros(2, device=device),
                                                  covariance_matrix=std ** 2 * torch.eye(2, device=device))
    t0, t1 = 0.0, float(cfg.model.t1)

    def step(x):
        optimizer.zero_grad()
        logp_diff_t1 = torch.zeros(x.shape[0], 1).type(torch.float32).to(device)
        z_t, logp_diff_t = odeint(func, (x, logp_diff_t1), torch.tensor([t1, t0]).type(torch.float32).to(device),
                                  atol=1e-5, rtol=1e-5, method="dopri5")
        z_t0, logp_diff_t0 = z_t[-1], logp_diff_t[-1]
        logp_x = p_z0.log_prob(z_t0).to(device) - logp_diff_t0.view(-1)
        loss = -logp_x.mean(0)
        nfe_forward, func.nfe = func.nfe, 0
        loss.backward()
        optimizer.step()
        nfe_backward, func.nfe = func.nfe, 0
        return loss.item(), nfe_forward, nfe_backward

    return ReferenceLoop(cfg, task, batches, step, "cnf.py: odeint without adjoint, trace by d autograd.grad, "
                         "Adam 1e-3 (node-run: closed-form trace" + (", adjoint)" if cfg.solver.adjoint else ")"))


def divergence_bf(dx, y, **unused_kwargs):
    """FFJORD's brute-force trace: one autograd.grad (create_graph) per dimension."""
    sum_diag = 0.
    for i in range(y.shape[1]):
        sum_diag += torch.autograd.grad(dx[:, i].sum(), y, create_graph=True)[0].contiguous()[:, i].contiguous()
    return sum_diag.contiguous()


class ODEfunc(nn.Module):
    """FFJORD's ODEfunc with the brute-force divergence, on node-run's concat-squash network."""

    def __init__(self, diffeq: nn.Module):
        super().__init__()
        self.diffeq = diffeq
        self._num_evals = 0

    def forward(self, t, states):
        y = states[0]
        self._num_evals += 1
        t = t.type_as(y)
        batchsize = y.shape[0]
        with torch.set_grad_enabled(True):
            y.requires_grad_(True)
            t.requires_grad_(True)
            dy = self.diffeq(t, y)
            divergence = divergence_bf(dy, y).view(batchsize, 1)
        return tuple([dy, -divergence])


def ffjord_loop(configure, device, seed: int, n_batches: int) -> ReferenceLoop:
    from .task import FlowTask

    cfg = configure(["experiment=ffjord_8gaussians", "model.trace=exact", f"seed={seed}", f"device={device.type}"])
    torch.manual_seed(seed)
    task = FlowTask(cfg, device)
    batches = [next(iter(task.train_batches(0))) for _ in range(n_batches)]
    node = task.model
    func = ODEfunc(copy.deepcopy(node.field.net))
    raw_t1 = nn.Parameter(node.raw_t1.detach().clone(), requires_grad=node.raw_t1.requires_grad)
    optimizer = torch.optim.Adam([*func.parameters(), raw_t1], lr=1e-3, weight_decay=1e-5)
    s = cfg.solver

    def step(x):
        optimizer.zero_grad()
        zero = torch.zeros(x.shape[0], 1).to(x)
        end_time = nn.functional.softplus(raw_t1)
        integration_times = torch.stack([end_time, torch.zeros_like(end_time)]).to(x)
        z_t, delta_logp_t = odeint_adjoint(func, (x, zero), integration_times, atol=float(s.atol),
                                           rtol=float(s.rtol), method=str(s.method))
        logpx = log_normal(z_t[-1], node.base_std) - delta_logp_t[-1].view(-1)
        loss = -torch.mean(logpx)
        nfe_forward, func._num_evals = func._num_evals, 0
        loss.backward()
        optimizer.step()
        nfe_backward, func._num_evals = func._num_evals, 0
        return loss.item(), nfe_forward, nfe_backward

    return ReferenceLoop(cfg, task, batches, step, "FFJORD train_toy.py: odeint_adjoint, brute-force exact trace "
                         "(d autograd.grad), learned end time, Adam 1e-3 wd 1e-5")


def loops() -> dict:
    return {"cnf_circles": cnf_loop, "ffjord_8gaussians": ffjord_loop}
