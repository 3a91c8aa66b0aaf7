"""A plain loop written the way torchdiffeq's `examples/latent_ode.py` writes it, for `node-bench reference`.

latent_ode.py's loop body (zero_grad, q(z0) from the recognition network, z0 = eps * exp(logvar / 2) + mean,
`odeint` called directly on the latent field, decode, Gaussian log-likelihood and analytic KL, backward, Adam
lr 1e-2 step) with a Python NFE counter, on node-run's model (its encoder, decoder and field layers, copied
weights) and batches, at node-run's tolerances. The irregular times are solved on their sorted union, as node-run's
model does (latent_ode.py's spirals share one time grid).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torchdiffeq import odeint

from ..base import ReferenceLoop


class LatentODEfunc(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.nfe = 0

    def forward(self, t, x):
        self.nfe += 1
        return self.net(x)


def log_normal_pdf(x, mean, logvar):
    const = torch.from_numpy(np.array([2. * np.pi])).float().to(x.device)
    const = torch.log(const)
    return -.5 * (const + logvar + (x - mean) ** 2. / torch.exp(logvar))


def normal_kl(mu1, lv1, mu2, lv2):
    v1, v2 = torch.exp(lv1), torch.exp(lv2)
    lstd1, lstd2 = lv1 / 2., lv2 / 2.
    kl = lstd2 - lstd1 + ((v1 + (mu1 - mu2) ** 2.) / (2. * v2)) - .5
    return kl


def loop(configure, device, seed: int, n_batches: int) -> ReferenceLoop:
    from .task import SpiralTask

    cfg = configure(["experiment=spiral_latent_ode", f"seed={seed}", f"device={device.type}"])
    torch.manual_seed(seed)
    task = SpiralTask(cfg, device)
    batches = [next(iter(task.train_batches(i))) for i in range(n_batches)]
    model = copy.deepcopy(task.model)
    func = LatentODEfunc(model.ode.vector_field.net)
    params = [p for n, p in model.named_parameters() if not n.startswith("ode.")] + list(func.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    s = cfg.solver
    noise_std = float(cfg.model.obs_std)

    def step(batch):
        samp_trajs, samp_ts = batch
        optimizer.zero_grad()
        qz0_mean, qz0_logvar = model.posterior(samp_trajs, samp_ts)
        epsilon = torch.randn(qz0_mean.size()).to(device)
        z0 = epsilon * torch.exp(.5 * qz0_logvar) + qz0_mean
        grid, where = torch.unique(torch.cat([samp_ts.new_zeros(1), samp_ts.reshape(-1)]), sorted=True,
                                   return_inverse=True)
        pred_z = odeint(func, z0, grid, rtol=float(s.rtol), atol=float(s.atol), method=str(s.method)).permute(1, 0, 2)
        pred_z = torch.gather(pred_z, 1, where[1:].view(samp_ts.shape)[..., None].expand(-1, -1, pred_z.shape[-1]))
        pred_x = model.decoder(pred_z)
        noise_logvar = 2. * np.log(noise_std)
        noise_logvar = torch.zeros(pred_x.size()).to(device) + noise_logvar
        logpx = log_normal_pdf(samp_trajs, pred_x, noise_logvar).sum(-1).sum(-1)
        pz0_mean = pz0_logvar = torch.zeros(z0.size()).to(device)
        analytic_kl = normal_kl(qz0_mean, qz0_logvar, pz0_mean, pz0_logvar).sum(-1)
        loss = torch.mean(-logpx + analytic_kl, dim=0)
        nfe_forward, func.nfe = func.nfe, 0
        loss.backward()
        optimizer.step()
        nfe_backward, func.nfe = func.nfe, 0
        return loss.item(), nfe_forward, nfe_backward

    return ReferenceLoop(cfg, task, batches, step,
                         "latent_ode.py: odeint, backprop through dopri5, Adam 1e-2, node-run's encoder and decoder")


def loops() -> dict:
    return {"spiral_latent_ode": loop}
