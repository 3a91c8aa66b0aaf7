"""A plain loop written the way torchdiffeq's `examples/ode_demo.py` writes it, for `node-bench reference`.

ode_demo's loop body (zero_grad, a batch of windows, `odeint` called directly on the field module, mean absolute
error, backward, RMSprop lr 1e-3 step) on node-run's field (the same MLP layers, copied weights: ode_demo's own
field would be net(y**3)), with a Python NFE counter, at node-run's tolerances and on node-run's batches.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torchdiffeq import odeint

from ..base import ReferenceLoop


class ODEFunc(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.net(y)


def loop(configure, device, seed: int, n_batches: int, experiment: str = "dynamics_cubic") -> ReferenceLoop:
    from .task import build

    cfg = configure([f"experiment={experiment}", f"seed={seed}", f"device={device.type}"])
    torch.manual_seed(seed)
    task = build(cfg, device)
    batches = [task.batch() for _ in range(n_batches)]
    func = ODEFunc(copy.deepcopy(task.model.ode.vector_field.net))
    optimizer = torch.optim.RMSprop(func.parameters(), lr=1e-3)
    s = cfg.solver

    def step(batch):
        optimizer.zero_grad()
        batch_y0, batch_t, batch_y = batch
        pred_y = odeint(func, batch_y0, batch_t, rtol=float(s.rtol), atol=float(s.atol), method=str(s.method))
        loss = torch.mean(torch.abs(pred_y - batch_y))
        nfe_forward, func.nfe = func.nfe, 0
        loss.backward()
        optimizer.step()
        nfe_backward, func.nfe = func.nfe, 0
        return loss.item(), nfe_forward, nfe_backward

    return ReferenceLoop(cfg, task, batches, step, "ode_demo.py: odeint, backprop through dopri5, RMSprop 1e-3")


def loops() -> dict:
    return {"dynamics_cubic": loop}
