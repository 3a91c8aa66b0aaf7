"""FFJORD (Grathwohl et al. 2019) with the RNODE regularisers (Finlay et al. 2020): a free-form continuous
normalizing flow.

- `ConcatSquash`: a linear layer whose output is gated and shifted by the time, (W h + b) sigmoid(a t + c) + d t,
  FFJORD's concatsquash layer; `FreeFormNet` stacks them (hidden widths, tanh or softplus between).
- `FreeFormField`: the vector field on the state (z, delta[, kinetic, jacobian]): dz/dt = f(t, z),
  d delta/dt = -tr(df/dz), and, when the regularisers are on, d kinetic/dt = |f|^2 and
  d jacobian/dt = |eps^T df/dz|^2 (RNODE: the same solve integrates them as extra states).
  The trace is `exact` (the Jacobian carried through the layers in closed form, one batched pass, or with
  `model.fast_trace=false` d vector-Jacobian products, one per coordinate as FFJORD's brute force; then the
  Jacobian term is the exact Frobenius norm |df/dz|_F^2 of the same Jacobian) or `hutchinson`: eps^T (df/dz) eps
  with one vector-Jacobian product, eps drawn once per solve (`rademacher` or `gaussian`, E[eps eps^T] = I, so the
  estimate is unbiased), and the Jacobian term is |eps^T df/dz|^2 from the same product (unbiased for |df/dz|_F^2).
- `FFJORD`: base N(0, base_std^2 I) at t = 0, data at t = t1 (a parameter with `learn_t1`, kept positive as
  t1 = softplus(s)); every solve goes through `ODEBlock` (torchdiffeq; NFE counted; the adjoint and its seminorm
  as configured). `log_prob(x)` solves back from t1 to 0; `sample(z0)` forward; `stages` as the planar CNF.
- Training objective (`loss`): `mle`, maximum likelihood through the solver (above); or flow matching, which
  never solves: `cfm` (Lipman et al. 2023; Tong et al. 2024's I-CFM) regresses the same field f(t, z) on the
  velocity of a straight path from a base point x0 to a data point x1, `otcfm` (Tong et al.'s OT-CFM) first pairs
  the batch's x0 and x1 by exact minibatch optimal transport (`ot_pairing`, POT's `ot.emd`). The path runs over
  the model's own time [0, t1] in the model's direction (base at 0, data at t1), so sampling, log-likelihood,
  figures and their NFE are those of the maximum-likelihood model, unchanged.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ...core.solve import ODEBlock
from .models import FRACTIONS, log_normal

TRACES = ("exact", "hutchinson")
LOSSES = ("mle", "cfm", "otcfm")   # model.loss: maximum likelihood, flow matching, OT flow matching
NOISES = ("rademacher", "gaussian")
ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus}


class ConcatSquash(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.gate = nn.Linear(1, n_out)
        self.shift = nn.Linear(1, n_out, bias=False)

    def forward(self, t, h):
        t = t.reshape(-1, 1).to(h.dtype)   # one time for the batch (solves) or one per point (flow matching)
        return self.linear(h) * torch.sigmoid(self.gate(t)) + self.shift(t)


class FreeFormNet(nn.Module):
    """f(t, z): ConcatSquash layers dim -> hidden... -> dim, the activation between them."""

    def __init__(self, dim: int, hidden, activation: str = "tanh"):
        super().__init__()
        sizes = [dim, *hidden, dim]
        self.layers = nn.ModuleList(ConcatSquash(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = ACTIVATIONS[activation]()

    def forward(self, t, z):
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h

    def with_jacobian(self, t, z):
        """(f(t, z) [N, d], its Jacobian transposed, (df/dz)^T [N, d, d]) in one forward pass: the Jacobian is carried
        through the layers in closed form (a concat-squash layer's is its weight scaled by its time gate, the
        activation's is diagonal) as d extra rows per point through each layer's weight, one matrix product per
        layer; ordinary autograd differentiates it like any other function of the parameters."""
        t = t.reshape(1, 1).to(z.dtype)
        h, jac = z, None
        for i, layer in enumerate(self.layers):
            gate = torch.sigmoid(layer.gate(t))                        # [1, n_out]
            h = layer.linear(h) * gate + layer.shift(t)
            if jac is None:                                            # d(first layer)/dz, the same for every point
                jac = (layer.linear.weight.T * gate).expand(len(z), -1, -1)
            else:                                                      # rows [N, d, n_in] -> [N, d, n_out]
                jac = nn.functional.linear(jac, layer.linear.weight) * gate
            if i < len(self.layers) - 1:
                if isinstance(self.act, nn.Tanh):
                    h = torch.tanh(h)
                    slope = 1 - h * h
                else:   # softplus (beta 1): its slope is the logistic function
                    slope = torch.sigmoid(h)
                    h = self.act(h)
                jac = jac * slope.unsqueeze(1)
        return h, jac


def noise_like(z: torch.Tensor, kind: str) -> torch.Tensor:
    """Hutchinson's probe: Rademacher (+-1) or standard Gaussian, E[eps eps^T] = I."""
    if kind == "rademacher":
        return torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1
    return torch.randn_like(z)


def divergence(f: torch.Tensor, z: torch.Tensor, trace: str, eps: torch.Tensor | None, create_graph: bool):
    """(tr df/dz [N], the Jacobian term [N]) at f = f(z): `exact` -> (trace, |df/dz|_F^2) from d vector-Jacobian
    products; `hutchinson` -> (eps^T J eps, |eps^T J|^2) from one."""
    if trace == "exact":
        tr = torch.zeros(len(z), dtype=z.dtype, device=z.device)
        frob = torch.zeros_like(tr)
        for i in range(z.shape[1]):
            row = torch.autograd.grad(f[:, i].sum(), z, create_graph=create_graph, retain_graph=True)[0]
            tr = tr + row[:, i]
            frob = frob + row.pow(2).sum(1)
        return tr, frob
    vjp = torch.autograd.grad(f, z, eps, create_graph=create_graph, retain_graph=True)[0]
    return (vjp * eps).sum(1), vjp.pow(2).sum(1)


OT_ITERATIONS = 1_000_000   # network-simplex iterations allowed to ot.emd (its default, 100,000, is short of 256^2)


def cfm_loss(net, x0: torch.Tensor, x1: torch.Tensor, s: torch.Tensor, noise: torch.Tensor, sigma: float,
             t1) -> torch.Tensor:
    """Conditional flow matching: at a fraction s [N] of the way along the straight path from x0 (base, t = 0) to
    x1 (data, t = t1), the point x_s = (1 - s) x0 + s x1 + sigma noise; the field at t = s t1 is regressed on the
    path's velocity in the model's time, dx/dt = (x1 - x0) / t1. Returns the batch mean of the squared error."""
    xs = (1 - s[:, None]) * x0 + s[:, None] * x1 + sigma * noise
    return (net(s * t1, xs) - (x1 - x0) / t1).pow(2).sum(1).mean()


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The permutation p pairing x0[i] with x1[p[i]] at the least total squared distance: the exact optimal
    transport plan between the two batches as uniform measures (POT's network simplex, `ot.emd`); between two
    batches of one size its optimal vertex is a permutation matrix (Birkhoff), read off row by row."""
    import ot   # the optional extra node-run[ot]; task.check_ffjord refuses model.loss=otcfm without it

    cost = (x0[:, None, :] - x1[None, :, :]).pow(2).sum(-1).detach().double().cpu().numpy()
    plan = ot.emd([], [], cost, numItermax=OT_ITERATIONS)
    return torch.as_tensor(plan.argmax(1), device=x1.device)


class FreeFormField(nn.Module):
    """The ODE on (z, delta) or (z, delta, kinetic, jacobian): see the module docstring."""

    def __init__(self, net: FreeFormNet, trace: str = "hutchinson", noise: str = "rademacher",
                 closed_form: bool = True):
        super().__init__()
        self.net = net
        self.trace, self.noise = trace, noise
        self.closed_form = closed_form   # exact trace from `net.with_jacobian` (one pass) where the net has it
        self.eps = None   # the probe of the current solve (hutchinson), set by FFJORD before each solve

    def forward(self, t, state):
        z = state[0]
        if len(state) == 1:   # samples alone, without their density (`FFJORD.generate`): dz/dt = f
            return (self.net(t, z),)
        regularise = len(state) > 2
        graph = torch.is_grad_enabled()   # inside a training solve or the adjoint's backward solve
        if self.trace == "exact" and self.closed_form and hasattr(self.net, "with_jacobian"):
            f, jac = self.net.with_jacobian(t, z)
            out = (f, -jac.diagonal(dim1=1, dim2=2).sum(1, keepdim=True))
            if regularise:
                out = out + (f.pow(2).sum(1, keepdim=True), jac.pow(2).sum((1, 2)).unsqueeze(1))
            return out
        with torch.enable_grad():
            if not (graph and z.requires_grad):   # a leaf of its own when no gradient flows back through z
                z = z.detach().requires_grad_(True)
            f = self.net(t, z)
            eps = self.eps if self.trace == "hutchinson" else None
            tr, jac = divergence(f, z, self.trace, eps, create_graph=graph)
        out = (f, -tr.unsqueeze(1))
        if regularise:
            out = out + (f.pow(2).sum(1, keepdim=True), jac.unsqueeze(1))
        return out if graph else tuple(o.detach() for o in out)


class FFJORD(nn.Module):
    def __init__(self, dim: int, hidden, activation: str, t1: float, learn_t1: bool, trace: str, noise: str,
                 base_std: float, solver_cfg, kinetic: float = 0.0, jacobian: float = 0.0, fast_trace: bool = True,
                 loss: str = "mle", fm_sigma: float = 0.0):
        super().__init__()
        self.dim, self.base_std = dim, float(base_std)
        self.kinetic, self.jacobian = float(kinetic), float(jacobian)
        self.objective, self.fm_sigma = loss, float(fm_sigma)
        self.field = FreeFormField(FreeFormNet(dim, list(hidden), activation), trace, noise, fast_trace)
        self.block = ODEBlock(self.field, solver_cfg, t1=t1)
        raw = math.log(math.expm1(float(t1)))   # softplus^-1(t1)
        self.raw_t1 = nn.Parameter(torch.tensor(raw), requires_grad=bool(learn_t1))
        self.regs: dict = {}   # the regularisers' batch means of the last solve that integrated them

    @property
    def t1(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_t1)

    @property
    def regularised(self) -> bool:
        return self.kinetic > 0 or self.jacobian > 0

    @contextlib.contextmanager
    def exact(self):
        """Solves with the exact trace (evaluation, figures), whatever the training trace."""
        saved = self.field.trace
        self.field.trace = "exact"
        try:
            yield self
        finally:
            self.field.trace = saved

    def transport(self, z: torch.Tensor, times: torch.Tensor, regularise: bool = False):
        """Solve from times[0] with delta (and the regularisers) at 0; returns the state at every time."""
        n = len(z)
        zero = torch.zeros(n, 1, dtype=z.dtype, device=z.device)
        if self.field.trace == "hutchinson":
            self.field.eps = noise_like(z, self.field.noise)
        state = (z, zero) + ((zero, zero) if regularise else ())
        return self.block(state, times.to(z.dtype))

    def _times(self, start, end, like: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.as_tensor(start, dtype=like.dtype, device=like.device).reshape(()),
                            torch.as_tensor(end, dtype=like.dtype, device=like.device).reshape(())])

    def log_prob(self, x: torch.Tensor, t=None, regularise: bool | None = None) -> torch.Tensor:
        """log density at time t (default t1) of x: solve back to t = 0, log p0(z0) - int_0^t tr. With
        `regularise` (default: when a regulariser is on and grad is enabled), also integrate |f|^2 and the
        Jacobian term over [0, t]; their batch means land in `self.regs`."""
        t = self.t1 if t is None else t
        if not torch.is_tensor(t) and t == 0:
            return log_normal(x, self.base_std)
        if regularise is None:
            regularise = self.regularised and torch.is_grad_enabled()
        out = self.transport(x, self._times(t, 0.0, x), regularise)
        if regularise:   # solved from t back to 0: the integrals over [0, t] are minus the end values
            self.regs = dict(kinetic=-out[2][-1, :, 0].mean(), jacobian=-out[3][-1, :, 0].mean())
        return log_normal(out[0][-1], self.base_std) - out[1][-1, :, 0]

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """`mle`: mean NLL, plus kinetic x int |f|^2 and jacobian x int |eps^T df/dz|^2 (batch means) when set;
        `cfm` / `otcfm`: the flow-matching loss of the data batch x (no solve)."""
        if self.objective != "mle":
            return self.flow_matching_loss(x)
        nll = -self.log_prob(x).mean()
        if not self.regularised:
            return nll
        return nll + self.kinetic * self.regs["kinetic"] + self.jacobian * self.regs["jacobian"]

    def flow_matching_loss(self, x1: torch.Tensor) -> torch.Tensor:
        """`cfm_loss` on the data batch x1 with base points x0 (`otcfm`: x1 reordered to x0 by `ot_pairing`), path
        fractions s ~ U(0, 1) and path noise, all drawn from torch's global generator (as Hutchinson's probe: the
        checkpoint keeps its state, so a resumed run draws what the uninterrupted one drew)."""
        x0 = self.base_std * torch.randn_like(x1)
        if self.objective == "otcfm":
            x1 = x1[ot_pairing(x0, x1)]
        s = torch.rand(len(x1), dtype=x1.dtype, device=x1.device)
        return cfm_loss(self.field.net, x0, x1, s, torch.randn_like(x1), self.fm_sigma, self.t1)

    def sample(self, z0: torch.Tensor):
        """Push base points z0 from t = 0 to t1: (x, log q(x))."""
        zs, ds = self.transport(z0, self._times(0.0, self.t1, z0))
        return zs[-1], log_normal(z0, self.base_std) + ds[-1, :, 0]

    def generate(self, z0: torch.Tensor) -> torch.Tensor:
        """Push base points z0 from t = 0 to t1 without their density: the solve that drawing samples costs."""
        return self.block((z0,), self._times(0.0, self.t1, z0))[0][-1]

    @torch.no_grad()
    def stages(self, z0: torch.Tensor, grid: torch.Tensor, fractions=FRACTIONS):
        """Samples and grid log-densities at each fraction of the flow time."""
        t1 = float(self.t1.detach())
        times = torch.tensor([f * t1 for f in fractions], dtype=z0.dtype, device=z0.device)
        zs, _ = self.transport(z0, times)
        return [(zs[i], self.log_prob(grid, f * t1)) for i, f in enumerate(fractions)]


def build_ffjord(cfg, dim: int = 2) -> FFJORD:
    m = cfg.model
    return FFJORD(dim, list(m.hidden), m.activation, m.t1, m.learn_t1, m.trace, m.noise, cfg.dataset.base_std,
                  cfg.solver, kinetic=m.kinetic, jacobian=m.jacobian, fast_trace=bool(m.get("fast_trace", True)),
                  loss=m.get("loss", "mle"), fm_sigma=m.get("fm_sigma", 0.0))   # .get: runs made before these keys existed
