"""Continuous normalizing flows against planar normalizing flows in 2-D (paper section 4, Figures 4-6).

Models (both give exact log-densities):
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

Objectives (`dataset.name`): `circles` / `moons` train by maximum likelihood on fresh samples each step and report
`test_nll` (nats) on a fixed held-out set, beside `test_nll_data`, the NLL of the true generating density on the
same points (the floor); `density` fits exp(-U) for `dataset.target` in u1..u4 by minimising
KL(q||p) = E_q[log q + U] + log Z and reports `test_kl` on a fixed set of base samples (log Z by quadrature, so
the KL is exact up to Monte Carlo error, `test_kl_stderr`; `test_kl_unnormalized` is E_q[log q + U] alone).
A run is one epoch of `trainer.max_steps` fresh batches. The CNF's evaluations and figures solve at
rtol = atol = `model.eval_tol`, whatever tolerance it trained with.
"""
from __future__ import annotations

import contextlib
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from . import toy2d  # noqa: E402
from .config import ConfigError, choice, positive  # noqa: E402
from .solver import ODEBlock, nfe  # noqa: E402

MODELS = ("cnf", "nf")
DATASETS = toy2d.DATASETS + ("density",)
FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
EVAL_CHUNK = 5000
PLOT_LIMIT = {"circles": 1.5, "moons": 1.75, "density": 4.5}


def log_normal(z: torch.Tensor, std: float) -> torch.Tensor:
    """log N(z; 0, std^2 I) for z [N, 2]."""
    return -0.5 * (z / std).pow(2).sum(1) - 2 * math.log(std) - math.log(2 * math.pi)


# ----------------------------------------------------------------------------------------------- CNF
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


# ------------------------------------------------------------------------------------------ the task
def build_model(cfg, generative: bool) -> nn.Module:
    m = cfg.model
    if m.name == "cnf":
        return CNF(m.width, m.hidden, m.t1, cfg.dataset.base_std, cfg.solver)
    return PlanarNF(m.depth, cfg.dataset.base_std, generative, m.get("init_std", 0.1))


class FlowTask:
    def __init__(self, cfg, device: torch.device):
        check(cfg)
        d = cfg.dataset
        self.cfg, self.device = cfg, device
        self.density = d.name == "density"
        self.batch_size = cfg.trainer.batch_size
        self.steps = cfg.trainer.max_steps
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.model = build_model(cfg, generative=self.density).to(device)
        test_gen = torch.Generator().manual_seed(d.test_seed)
        self.test = self._draw(d.test_size, test_gen)
        self.fixed = self._draw(self.batch_size, torch.Generator().manual_seed(d.test_seed + 1))
        self.log_z = toy2d.log_normalizer(d.target) if self.density else None
        if not self.density:   # -log of the true data density on the test set: the floor of test_nll
            self.data_nll = -toy2d.data_log_density(d.name, self.test.cpu(), d.noise, d.get("factor", 0.5))

    def _draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Data points (maximum likelihood) or base points (density matching)."""
        d = self.cfg.dataset
        if self.density:
            x = d.base_std * torch.randn(n, 2, generator=generator)
        else:
            x = toy2d.sample_data(d.name, n, generator, d.noise, d.get("factor", 0.5))
        return x.to(self.device)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return toy2d.energy(self.cfg.dataset.target, x)

    def steps_per_epoch(self) -> int:
        return self.steps   # fresh samples every step: the whole run is one epoch of trainer.max_steps batches

    def train_batches(self, epoch: int):
        for _ in range(self.steps):
            yield self._draw(self.batch_size, self.generator)

    def loss(self, batch) -> torch.Tensor:
        if self.density:
            x, log_q = self.model.sample(batch)
            return (log_q + self.energy(x)).mean()
        return -self.model.log_prob(batch).mean()

    @contextlib.contextmanager
    def eval_solver(self):
        """Evaluations and figures solve at rtol = atol = model.eval_tol (when set), whatever training used."""
        block = getattr(self.model, "block", None)
        tol = self.cfg.model.get("eval_tol")
        with contextlib.nullcontext() if block is None or tol is None else block.tolerance(tol):
            yield

    @torch.no_grad()
    def evaluate(self, limit: int | None) -> dict:
        self.model.eval()
        n = len(self.test) if limit is None else min(limit, len(self.test))
        values, chunks = [], 0
        f0, _ = nfe(self.model)
        with self.eval_solver():
            for i in range(0, n, EVAL_CHUNK):
                batch = self.test[i:min(i + EVAL_CHUNK, n)]
                if self.density:   # log q(x) + U(x) at x = flow(z0): E_q of it is KL(q||p) - log Z
                    x, log_q = self.model.sample(batch)
                    values.append(log_q + self.energy(x))
                else:              # -log p(x) on held-out data
                    values.append(-self.model.log_prob(batch))
                chunks += 1
        f1, _ = nfe(self.model)
        self.model.train()
        v = torch.cat(values).double()
        mean, stderr = v.mean().item(), (v.std() / math.sqrt(n)).item() if n > 1 else float("nan")
        out = dict(test_examples=n, eval_nfe_forward=(f1 - f0) / chunks)
        if self.density:
            out.update(test_kl=mean + self.log_z, test_kl_stderr=stderr, test_kl_unnormalized=mean, log_z=self.log_z)
        else:
            out.update(test_nll=mean, test_nll_stderr=stderr, test_nll_data=self.data_nll[:n].mean().item())
        return out

    def memory_batch(self):
        return self.fixed

    def finish(self, run) -> dict:
        self.model.eval()
        with self.eval_solver():
            files = [plot_density(self, run.path / "density.png"), plot_stages(self, run.path / "flow.png")]
        self.model.train()
        return dict(figures=[f.name for f in files])


def build(cfg, device: torch.device) -> FlowTask:
    return FlowTask(cfg, device)


# ------------------------------------------------------------------------------------------- figures
def _grid(limit: float, points: int, device):
    axis = torch.linspace(-limit, limit, points, device=device)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)


def _show_density(ax, log_p: torch.Tensor, limit: float, points: int, title: str):
    ax.imshow(log_p.exp().reshape(points, points).cpu().numpy(), origin="lower", cmap="viridis",
              extent=(-limit, limit, -limit, limit))
    _style(ax, limit, title)


def _show_samples(ax, x: torch.Tensor, limit: float, title: str):
    x = x.cpu().numpy()
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4, color="tab:blue")
    _style(ax, limit, title)


def _style(ax, limit, title):
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def _title(task) -> str:
    m = task.cfg.model
    size = f"M={m.width}" if m.name == "cnf" else f"K={m.depth}"
    what = f"target {task.cfg.dataset.target.upper()}" if task.density else task.cfg.dataset.name
    return f"{m.name.upper()} ({size}), {what}"


def _plot_inputs(task, points: int, samples: int):
    """The plot's half-width, a points x points grid over it, and fixed base samples (seed 0)."""
    limit = PLOT_LIMIT[task.cfg.dataset.name]
    gen = torch.Generator().manual_seed(0)
    z0 = (task.cfg.dataset.base_std * torch.randn(samples, 2, generator=gen)).to(task.device)
    return limit, _grid(limit, points, task.device), z0


@torch.no_grad()
def plot_density(task, path, points: int = 120, samples: int = 2000):
    """Target (density, or data samples) beside the learned density and samples from the model."""
    limit, grid, z0 = _plot_inputs(task, points, samples)
    x, _ = task.model.sample(z0)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    if task.density:
        log_target = -task.energy(grid) - task.log_z
        _show_density(axes[0], log_target, limit, points, "target exp(-U)/Z")
    else:
        _show_samples(axes[0], task.test[:samples], limit, "data (test set)")
    _show_density(axes[1], task.model.log_prob(grid), limit, points, "learned density")
    _show_samples(axes[2], x, limit, "samples")
    fig.suptitle(_title(task))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def plot_stages(task, path, points: int = 100, samples: int = 2000):
    """Figures 5-6: samples (top) and density (bottom) from the base (0%) to the data (100%) of the flow."""
    limit, grid, z0 = _plot_inputs(task, points, samples)
    stages = task.model.stages(z0, grid)
    unit = "of the flow time" if task.cfg.model.name == "cnf" else "of the layers"
    fig, axes = plt.subplots(2, len(FRACTIONS), figsize=(2.2 * len(FRACTIONS), 4.6))
    for i, (f, (x, log_p)) in enumerate(zip(FRACTIONS, stages)):
        _show_samples(axes[0, i], x, limit, f"samples {round(100 * f)}%")
        _show_density(axes[1, i], log_p, limit, points, f"density {round(100 * f)}%")
    fig.suptitle(f"{_title(task)}: base to data, fractions {unit}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------- validation
def _at_least(value, key: str, low, integer: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = f"an integer >= {low}" if integer else f"a number >= {low}"
        raise ConfigError(f"{key}={value!r} is not allowed: it must be {kind}")



def check(cfg) -> None:
    m, d, t = cfg.model, cfg.dataset, cfg.trainer
    choice(m.name, "model", MODELS)
    choice(d.name, "dataset", DATASETS)
    if m.name == "cnf":
        _at_least(m.get("width"), "model.width", 1, integer=True)
        _at_least(m.get("hidden"), "model.hidden", 1, integer=True)
        positive(m.get("t1"), "model.t1")
        if m.get("eval_tol") is not None:
            positive(m.get("eval_tol"), "model.eval_tol")
    else:
        _at_least(m.get("depth"), "model.depth", 1, integer=True)
    if d.name == "density":
        choice(d.get("target"), "dataset.target", toy2d.TARGETS)
    else:
        positive(d.get("noise"), "dataset.noise")
    positive(d.get("base_std"), "dataset.base_std")
    _at_least(d.get("test_size"), "dataset.test_size", 1, integer=True)
    _at_least(d.get("test_seed"), "dataset.test_seed", 0, integer=True)
    if not t.max_steps:
        raise ConfigError("trainer.max_steps must be set for flow experiments: they draw fresh samples every "
                          "step, so the run length is trainer.max_steps, not epochs")
    if list(t.milestones):
        raise ConfigError("trainer.milestones are epochs, and a flow run is one epoch of trainer.max_steps fresh "
                          "batches: set trainer.milestones=[] (trainer.schedule=cosine decays the lr every step)")
