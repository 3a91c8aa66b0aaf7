"""The flows family's models (paper section 4); both give exact log-densities.

- `CNF`: dz/dt = (1/M) sum_i u_i(t) tanh(w_i(t)^T z + b_i(t)), the parameters made by a small hypernetwork of t
  (the reference example's CNF; the 1/M is the example's mean over units, i.e. u_i scaled by 1/M). Alongside z
  it integrates d log p/dt = -tr(df/dz), with the trace in closed form for the whole batch:
  tr = (1/M) sum_i tanh'(w_i^T z + b_i) u_i^T w_i. Every solve goes through `ODEBlock`.
- `PlanarNF`: K planar layers z' = z + u_hat tanh(w^T z + b) (Rezende & Mohamed 2015), with u_hat the usual
  reparametrisation that keeps w^T u_hat >= -1, so that every layer is invertible; each layer changes log p by
  -log|1 + u_hat^T psi(z)|, psi(z) = tanh'(w^T z + b) w. A layer is inverted exactly by solving the scalar
  equation for w^T z by bisection (used for samples and figures, never for training).
  For maximum likelihood the layers map data to the base (the direction in which the density is exact and
  cheap); for density matching they map the base to the target (the direction in which samples are).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...core.solve import ODEBlock

MODELS = ("cnf", "nf")
FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)   # fractions of the flow shown by `stages` (Figures 5-6)


def log_normal(z: torch.Tensor, std: float) -> torch.Tensor:
    """log N(z; 0, std^2 I) for z [N, d]."""
    d = z.shape[1]
    return -0.5 * (z / std).pow(2).sum(1) - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)


class HyperNet(nn.Module):
    """t -> (W [M, 2], b [M], U [M, 2]) through two tanh layers; U is gated by a sigmoid as in the example."""

    def __init__(self, width: int, hidden: int, dim: int = 2):
        super().__init__()
        self.width, self.dim = width, dim
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 3 * width * dim + width))

    def forward(self, t: torch.Tensor):
        p = self.net(t.reshape(1, 1).to(self.net[0].weight.dtype)).reshape(-1)
        m, d = self.width, self.dim
        w, u, g, b = p[:m * d].view(m, d), p[m * d:2 * m * d].view(m, d), p[2 * m * d:3 * m * d].view(m, d), p[3 * m * d:]
        return w, b, u * torch.sigmoid(g)


class PlanarField(nn.Module):
    """The CNF's vector field on the state (z, delta): returns (f(t, z), -tr df/dz)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.width = width
        self.hyper = HyperNet(width, hidden)

    def forward(self, t, state):
        z = state[0]
        w, b, u = self.hyper(t)
        h = torch.tanh(z @ w.T + b)                                  # [N, M]
        dz = h @ u / self.width                                      # [N, 2]
        trace = (1 - h * h) @ (w * u).sum(1) / self.width            # [N]: sum_i tanh'(a_i) u_i.w_i / M
        return dz, -trace.unsqueeze(1)


class CNF(nn.Module):
    def __init__(self, width: int, hidden: int, t1: float, base_std: float, solver_cfg):
        super().__init__()
        self.t1, self.base_std = float(t1), float(base_std)
        self.block = ODEBlock(PlanarField(width, hidden), solver_cfg, t1=t1)

    def transport(self, z: torch.Tensor, times):
        """Solve (z, delta) from times[0] with delta = 0; returns z and delta = -int tr at every time."""
        t = torch.as_tensor(times, dtype=z.dtype, device=z.device)
        return self.block((z, torch.zeros(len(z), 1, dtype=z.dtype, device=z.device)), t)

    def sample(self, z0: torch.Tensor):
        """Push base points z0 from t=0 to t1: (x, log q(x))."""
        zs, ds = self.transport(z0, [0.0, self.t1])
        return zs[-1], log_normal(z0, self.base_std) + ds[-1, :, 0]

    def log_prob(self, x: torch.Tensor, t: float | None = None) -> torch.Tensor:
        """log density at time t (default t1) of x: solve back to t=0, log p0(z0) - int_0^t tr."""
        t = self.t1 if t is None else t
        if t == 0:
            return log_normal(x, self.base_std)
        zs, ds = self.transport(x, [t, 0.0])
        return log_normal(zs[-1], self.base_std) - ds[-1, :, 0]

    @torch.no_grad()
    def stages(self, z0: torch.Tensor, grid: torch.Tensor, fractions=FRACTIONS):
        """Samples and grid log-densities at each fraction of the flow time."""
        zs, _ = self.transport(z0, [f * self.t1 for f in fractions])
        return [(zs[i], self.log_prob(grid, f * self.t1)) for i, f in enumerate(fractions)]


# ------------------------------------------------------------------------------------------------ NF
class PlanarLayer(nn.Module):
    def __init__(self, init_std: float = 0.1):
        super().__init__()
        self.u = nn.Parameter(init_std * torch.randn(2))
        self.w = nn.Parameter(init_std * torch.randn(2))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> torch.Tensor:
        """u + [m(w.u) - w.u] w/|w|^2 with m(x) = -1 + softplus(x): then w.u_hat = m(w.u) > -1."""
        wu = self.w @ self.u
        return self.u + (nn.functional.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w + 1e-12)

    def forward(self, z: torch.Tensor):
        """(z + u_hat tanh(w.z + b), log|1 + u_hat.psi(z)|)."""
        u = self.u_hat()
        h = torch.tanh(z @ self.w + self.b)
        return z + h.unsqueeze(1) * u, torch.log((1 + (1 - h * h) * (self.w @ u)).abs())

    @torch.no_grad()
    def inverse(self, y: torch.Tensor, iters: int = 60) -> torch.Tensor:
        """The z with forward(z) = y: a = w.z + b solves a + c tanh(a) = w.y + b (c = w.u_hat > -1, increasing in
        a), found by bisection on [s - |c|, s + |c|], then z = y - u_hat tanh(a)."""
        u = self.u_hat()
        c, s = self.w @ u, y @ self.w + self.b
        lo, hi = s - c.abs() - 1e-6, s + c.abs() + 1e-6
        for _ in range(iters):
            mid = (lo + hi) / 2
            above = mid + c * torch.tanh(mid) > s
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        return y - torch.tanh((lo + hi) / 2).unsqueeze(1) * u


def push(layers, z):
    """Apply `layers` in order: (output, sum of log|det|)."""
    total = torch.zeros(len(z), dtype=z.dtype, device=z.device)
    for layer in layers:
        z, logdet = layer(z)
        total = total + logdet
    return z, total


@torch.no_grad()
def pull(layers, y):
    """Invert `layers` (last first): (input, sum of log|det| of the forward layers at the recovered points)."""
    for layer in reversed(list(layers)):
        y = layer.inverse(y)
    return y, push(layers, y)[1]


class PlanarNF(nn.Module):
    """K planar layers; `generative`: the layers map base to data (density matching), else data to base."""

    def __init__(self, depth: int, base_std: float, generative: bool, init_std: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(PlanarLayer(init_std) for _ in range(depth))
        self.base_std, self.generative = float(base_std), generative

    def sample(self, z0: torch.Tensor):
        if self.generative:
            x, logdet = push(self.layers, z0)
            return x, log_normal(z0, self.base_std) - logdet
        x, logdet = pull(self.layers, z0)
        return x, log_normal(z0, self.base_std) + logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if self.generative:
            z, logdet = pull(self.layers, x)
            return log_normal(z, self.base_std) - logdet
        z, logdet = push(self.layers, x)
        return log_normal(z, self.base_std) + logdet

    @torch.no_grad()
    def stages(self, z0: torch.Tensor, grid: torch.Tensor, fractions=FRACTIONS):
        """Samples and grid log-densities after round(f K) of the K generative steps."""
        k, out = len(self.layers), []
        for f in fractions:
            j = round(f * k)
            if self.generative:
                first = self.layers[:j]
                x = push(first, z0)[0]
                z, logdet = pull(first, grid)
                out.append((x, log_normal(z, self.base_std) - logdet))
            else:   # generative step i is the inverse of layer K-1-i: the first j steps invert layers[K-j:]
                last = self.layers[k - j:]
                x = pull(last, z0)[0]
                z, logdet = push(last, grid)
                out.append((x, log_normal(z, self.base_std) + logdet))
        return out


def build_model(cfg, generative: bool) -> nn.Module:
    m = cfg.model
    if m.name == "cnf":
        return CNF(m.width, m.hidden, m.t1, cfg.dataset.base_std, cfg.solver)
    return PlanarNF(m.depth, cfg.dataset.base_std, generative, m.get("init_std", 0.1))
