"""Latent ODE against RNN baselines on irregularly sampled spirals (paper section 5, Table 2, Figures 8-9).

Models (`model.name`):
- `latent_ode`: a recognition RNN reads (x_i, t_i) from the last observation to the first and gives q(z0) =
  N(mean, exp(logvar)); z(t) solves dz/dt = f(z) from z0 at t = 0 (the window's start) through an `ODEBlock`;
  a decoder maps z(t) to x(t). Loss: the negative ELBO with a Gaussian likelihood of std `obs_std`.
- `rnn`: reads x_1..x_n in order and outputs a Gaussian (mean, log-variance) for the next observation; loss:
  the Gaussian negative log-likelihood of x_2..x_n. `rnn_dt`: the same, its input at step i also holds the time
  gap t_{i+1} - t_i to the observation it predicts.

Irregular times: each trajectory has its own sorted observation times. The solver takes one time grid per
call, so `LatentODE.latent_at` solves the whole batch on the sorted union of all requested times (with 0
prepended) and gathers each trajectory's own times from it. For an autonomous f and a fixed z0 this is the same
solution each trajectory would get alone (up to the adaptive solver's shared step choice).

Evaluation protocol (all three models): each test trajectory is conditioned on its own `n_obs` noisy observations
inside the window of `n_points`; the model then predicts the `n_extrap` points that follow the window, at the
shared grid times. `test_rmse` is the root-mean-squared error of those predictions against the noise-free
spiral (over trajectories, points and both coordinates). The latent ODE predicts from the posterior mean of z0;
the RNNs roll out by feeding back their predicted means (`rnn` cannot see time: one step per predicted point;
`rnn_dt` gets the true gap, first from its last observation to the first target, then the grid step).
"""
from __future__ import annotations

import math

import torch
from omegaconf import OmegaConf
from torch import nn

from .config import ConfigError, choice
from .solver import ODEBlock, nfe
from .spirals import CLOCKWISE, COUNTER_CLOCKWISE, generate, split

MODELS = ("latent_ode", "rnn", "rnn_dt")
CELLS = {"rnn": nn.RNN, "gru": nn.GRU}
LOG_2PI = math.log(2 * math.pi)
REFERENCE_RTOL = 1e-7   # the tight solve that `extrap_solver_error` compares the run's solver settings with


def gaussian_log_density(x, mean, logvar):
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def kl_to_standard_normal(mean, logvar):
    return 0.5 * (torch.exp(logvar) + mean ** 2 - 1.0 - logvar)


class Dynamics(nn.Module):
    """The latent vector field f(z): an MLP with ELU activations (autonomous: t is ignored)."""

    def __init__(self, dim: int, hidden: int, layers: int):
        super().__init__()
        sizes = [dim] + [hidden] * layers + [dim]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            mods += [nn.Linear(a, b)] + ([nn.ELU()] if i < len(sizes) - 2 else [])
        self.net = nn.Sequential(*mods)

    def forward(self, t, z):
        return self.net(z)


class LatentODE(nn.Module):
    def __init__(self, m, solver_cfg, obs_dim: int = 2):
        super().__init__()
        self.latent_dim = int(m.latent_dim)
        self.encoder = nn.RNN(obs_dim + 1, int(m.rnn_hidden), batch_first=True)
        self.to_posterior = nn.Linear(int(m.rnn_hidden), 2 * self.latent_dim)
        self.ode = ODEBlock(Dynamics(self.latent_dim, int(m.ode_hidden), int(m.ode_layers)), solver_cfg)
        self.decoder = nn.Sequential(nn.Linear(self.latent_dim, int(m.decoder_hidden)), nn.ReLU(),
                                     nn.Linear(int(m.decoder_hidden), obs_dim))
        self.obs_logvar = 2.0 * math.log(float(m.obs_std))

    def posterior(self, x, t):
        """q(z0 | observations): mean and log-variance [B, latent_dim], reading (x_i, t_i) backwards in time."""
        _, h = self.encoder(torch.cat([x, t[..., None]], -1).flip(1))
        return self.to_posterior(h[-1]).chunk(2, -1)

    def latent_at(self, z0, t, ode: ODEBlock | None = None):
        """z at each trajectory's own times: z0 [B, d], t [B, k] (non-negative) -> [B, k, d].

        One solve on the sorted union of all times in `t` (and 0, where z0 lives), then a per-row gather.
        `ode` replaces the model's block (same field, other solver settings) for a reference solve."""
        grid, where = torch.unique(torch.cat([t.new_zeros(1), t.reshape(-1)]), sorted=True, return_inverse=True)
        zs = (ode or self.ode)(z0, grid).transpose(0, 1)                  # [B, len(grid), d]
        index = where[1:].view(t.shape)[..., None].expand(-1, -1, zs.shape[-1])
        return torch.gather(zs, 1, index)

    def elbo(self, x, t, noise=None):
        """Per-trajectory ELBO [B] with one sample of z0 (`noise` ~ N(0, I), drawn here when None)."""
        mean, logvar = self.posterior(x, t)
        noise = torch.randn_like(mean) if noise is None else noise
        z0 = mean + noise * torch.exp(0.5 * logvar)
        pred = self.decoder(self.latent_at(z0, t))
        logpx = gaussian_log_density(x, pred, torch.full_like(pred, self.obs_logvar)).sum((1, 2))
        return logpx - kl_to_standard_normal(mean, logvar).sum(-1)

    def loss(self, x, t):
        return -self.elbo(x, t).mean()

    def score(self, x, t, generator) -> dict:
        noise = torch.randn(x.shape[0], self.latent_dim, generator=generator).to(x.device)
        return dict(test_elbo=self.elbo(x, t, noise).mean().item())

    def forecast(self, x, t, t_out, ode: ODEBlock | None = None):
        """Decoded x at times t_out [k] for each trajectory, from the posterior mean of z0."""
        mean, _ = self.posterior(x, t)
        return self.decoder(self.latent_at(mean, t_out.expand(len(x), -1), ode))

    def reconstruct(self, x, t):
        """(times, predictions) at the observed times, from the posterior mean."""
        mean, _ = self.posterior(x, t)
        return t, self.decoder(self.latent_at(mean, t))


class RNNBaseline(nn.Module):
    def __init__(self, m, obs_dim: int = 2):
        super().__init__()
        self.time_input = m.name == "rnn_dt"
        self.rnn = CELLS[m.cell](obs_dim + int(self.time_input), int(m.hidden), batch_first=True)
        self.head = nn.Linear(int(m.hidden), 2 * obs_dim)

    def step(self, x, gaps, h=None):
        """x [B, k, 2], gaps [B, k] (time to the next observation) -> next-point mean, logvar, hidden state."""
        inp = torch.cat([x, gaps[..., None]], -1) if self.time_input else x
        out, h = self.rnn(inp, h)
        mean, logvar = self.head(out).chunk(2, -1)
        return mean, logvar, h

    def nll(self, x, t):
        """Per-trajectory Gaussian NLL [B] of x_2..x_n, each predicted from the observations before it."""
        mean, logvar, _ = self.step(x[:, :-1], t[:, 1:] - t[:, :-1])
        return -gaussian_log_density(x[:, 1:], mean, logvar).sum((1, 2))

    def loss(self, x, t):
        return self.nll(x, t).mean()

    def score(self, x, t, generator) -> dict:
        return dict(test_nll=self.nll(x, t).mean().item())

    def forecast(self, x, t, t_out):
        """Roll out past the last observation: predictions at t_out [k] (all after t[:, -1])."""
        gaps = torch.cat([t[:, 1:] - t[:, :-1], t_out[0] - t[:, -1:]], 1)
        mean, _, h = self.step(x, gaps)
        preds = [mean[:, -1:]]
        steps = torch.diff(t_out)
        for k in range(len(steps)):
            mean, _, h = self.step(preds[-1], steps[k].expand(len(x), 1), h)
            preds.append(mean)
        return torch.cat(preds, 1)

    def reconstruct(self, x, t):
        """(times, one-step-ahead predictions) at the observed times after the first."""
        mean, _, _ = self.step(x[:, :-1], t[:, 1:] - t[:, :-1])
        return t[:, 1:], mean


def build_model(m, solver_cfg) -> nn.Module:
    choice(m.name, "model", MODELS)
    return LatentODE(m, solver_cfg) if m.name == "latent_ode" else RNNBaseline(m)


def rmse(pred, target) -> float:
    return torch.sqrt(((pred - target) ** 2).mean()).item()


class SpiralTask:
    def __init__(self, cfg, device: torch.device):
        check(cfg)
        self.cfg, self.device = cfg, device
        train, test = split(generate(cfg.dataset), cfg.dataset.test_fraction)
        self.train, self.test = train.to(device), test.to(device)
        self.train_x, self.train_t = self.train.observations()
        self.model = build_model(cfg.model, cfg.solver).to(device)
        self.batch_size = min(int(cfg.trainer.batch_size), len(self.train))
        self.generator = torch.Generator().manual_seed(int(cfg.seed))

    def steps_per_epoch(self) -> int:
        """Full-batch training: an epoch is one iteration. When trainer.max_steps is set it is the iteration
        count whatever trainer.epochs says (trainer=quick: epochs 1, max_steps 200 -> 200 iterations)."""
        t = self.cfg.trainer
        return max(1, math.ceil(t.max_steps / t.epochs)) if t.max_steps else 1

    def train_batches(self, epoch: int):
        for _ in range(self.steps_per_epoch()):
            if self.batch_size >= len(self.train):
                yield self.train_x, self.train_t
            else:
                idx = torch.randperm(len(self.train), generator=self.generator)[: self.batch_size].to(self.device)
                yield self.train_x[idx], self.train_t[idx]

    def loss(self, batch) -> torch.Tensor:
        return self.model.loss(*batch)

    @torch.no_grad()
    def evaluate(self, limit: int | None) -> dict:
        self.model.eval()
        test = self.test if limit is None else self.test.subset(slice(0, limit))
        x, t = test.observations()
        t_ext, truth = test.extrapolation()
        f0, _ = nfe(self.model)
        result = self.model.score(x, t, torch.Generator().manual_seed(int(self.cfg.seed)))
        pred = self.model.forecast(x, t, t_ext)
        t_rec, rec = self.model.reconstruct(x, t)
        f1, _ = nfe(self.model)
        idx = torch.searchsorted(test.times, t_rec.contiguous())
        rec_truth = torch.gather(test.truth, 1, idx[..., None].expand(-1, -1, 2))
        self.model.train()
        per_traj = ((pred - truth) ** 2).mean((1, 2))                     # MSE of each trajectory

        def rmse_of(direction):   # RMSE over the trajectories turning one way (None if there are none)
            mse = per_traj[test.direction == direction]
            return mse.mean().sqrt().item() if len(mse) else None

        return dict(test_rmse=rmse(pred, truth), **result, test_recon_rmse=rmse(rec, rec_truth),
                    test_rmse_clockwise=rmse_of(CLOCKWISE), test_rmse_counter_clockwise=rmse_of(COUNTER_CLOCKWISE),
                    test_rmse_median=per_traj.sqrt().median().item(),
                    test_trajectories=len(test), eval_nfe_forward=f1 - f0)

    def memory_batch(self):
        return self.train_x[: self.batch_size], self.train_t[: self.batch_size]

    def finish(self, run) -> dict:
        files = [spirals_figure(self, run.path / "spirals.png")]
        extra = {}
        if isinstance(self.model, LatentODE):
            files.append(latent_figure(self, run.path / "latent.png"))
            extra = self.solver_error()
        d = self.cfg.dataset
        return dict(figures=[f.name for f in files], n_obs=int(d.n_obs), n_train=len(self.train),
                    n_test=len(self.test), rmse_target="noise-free spiral at the n_extrap points after the window",
                    **extra)

    @torch.no_grad()
    def solver_error(self, rtol: float = REFERENCE_RTOL) -> dict:
        """How far the run's solver settings are from a tight reference solve on the test extrapolation:
        the RMS difference of the two predictions (small against test_rmse: the tolerance is not the limit)."""
        x, t = self.test.observations()
        t_ext, _ = self.test.extrapolation()
        ref = ODEBlock(self.model.ode.field.field, OmegaConf.merge(
            self.cfg.solver, dict(method="dopri5", rtol=rtol, atol=rtol / 10, adjoint=False, max_num_steps=None)))
        self.model.eval()
        pred = self.model.forecast(x, t, t_ext)
        exact = self.model.forecast(x, t, t_ext, ode=ref)
        self.model.train()
        return dict(extrap_solver_error=rmse(pred, exact), extrap_solver_error_reference=f"dopri5 rtol {rtol:g}",
                    extrap_nfe_forward_reference=ref.nfe_forward)


@torch.no_grad()
def spirals_figure(task: SpiralTask, path):
    """Figure 8: a few test spirals (two per direction): truth, observations, reconstruction, extrapolation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test, model, p = task.test, task.model, task.test.n_points
    picks = [i for d in (0, 1) for i in (test.direction == d).nonzero().flatten()[:2].tolist()]
    sub = test.subset(torch.tensor(picks, device=task.device))
    x, t = sub.observations()
    t_ext, _ = sub.extrapolation()
    model.eval()
    if isinstance(model, LatentODE):
        t_rec, rec = sub.times[:p].expand(len(sub), -1), model.forecast(x, t, sub.times[:p])
    else:
        t_rec, rec = model.reconstruct(x, t)
    ext = model.forecast(x, t, t_ext)
    model.train()
    fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), 4.2), squeeze=False)
    for k, ax in enumerate(axes[0]):
        truth, obs, r, e = (a[k].cpu() for a in (sub.truth, x, rec, ext))
        ax.plot(truth[:p, 0], truth[:p, 1], color="0.6", lw=1.5, label="truth (window)")
        ax.plot(truth[p:, 0], truth[p:, 1], color="0.6", lw=1.5, ls="--", label="truth (future)")
        ax.scatter(obs[:, 0], obs[:, 1], s=8, color="k", zorder=3, label=f"observations ({len(obs)})")
        ax.plot(r[:, 0], r[:, 1], color="tab:blue", lw=1.5, label="reconstruction")
        ax.plot(e[:, 0], e[:, 1], color="tab:red", lw=1.5, label="extrapolation")
        ax.set_title(("counter-clockwise" if sub.direction[k] == COUNTER_CLOCKWISE else "clockwise")
                     + f", RMSE {rmse(e, truth[p:]):.3f}", fontsize=9)
        ax.set_aspect("equal", "datalim")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{task.cfg.name} ({task.cfg.model.name}), {task.cfg.dataset.n_obs}/{p} observations")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@torch.no_grad()
def latent_figure(task: SpiralTask, path, count: int = 100):
    """Figure 9: latent trajectories z(t) of test spirals (posterior mean z0, window and future), projected on
    their first two principal components, coloured by the spiral's direction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test, model = task.test.subset(slice(0, count)), task.model
    x, t = test.observations()
    mean, _ = model.posterior(x, t)
    z = model.latent_at(mean, test.times.expand(len(test), -1))        # [B, T, d]
    flat = z.reshape(-1, z.shape[-1])
    centre = flat.mean(0)
    _, _, v = torch.linalg.svd(flat - centre, full_matrices=False)
    proj = ((z - centre) @ v[:2].T).cpu()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colours = {0: "tab:blue", 1: "tab:red"}
    for k in range(len(test)):
        d = int(test.direction[k])
        ax.plot(proj[k, :, 0], proj[k, :, 1], color=colours[d], lw=0.7, alpha=0.7,
                label=("counter-clockwise" if d == COUNTER_CLOCKWISE else "clockwise"))
        ax.scatter(proj[k, :1, 0], proj[k, :1, 1], color=colours[d], s=6)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_xlabel("latent PC 1")
    ax.set_ylabel("latent PC 2")
    ax.set_title(f"latent trajectories of {len(test)} test spirals (dots: t = 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build(cfg, device):
    return SpiralTask(cfg, device)


def _int_in(value, key: str, low: int, high: int | None = None, why: str = "") -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        accepted = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"
        raise ConfigError(f"{key}={value!r} is not allowed: it must be {accepted}{why}")


def _number(value, key: str, low: float, high: float | None = None, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"{'>' if strict else '>='} {low}" + (f" and < {high}" if high is not None else "")
        raise ConfigError(f"{key}={value!r} is not allowed: it must be a number {bound}")


def check(cfg) -> None:
    d, m = cfg.dataset, cfg.model
    choice(d.name, "dataset", ("spirals",))
    choice(m.name, "model", MODELS)
    for key in ("n_spirals", "n_points", "n_extrap", "n_total"):
        _int_in(d[key], f"dataset.{key}", 1)
    _int_in(d.seed, "dataset.seed", 0)
    low = 1 if m.name == "latent_ode" else 2
    why = "" if low == 1 else f"; the {m.name} baseline predicts each observation from the ones before it"
    _int_in(d.n_obs, "dataset.n_obs", low, int(d.n_points), f" (dataset.n_points={d.n_points}{why})")
    if d.n_total < 2 * d.n_points + d.n_extrap:
        raise ConfigError(f"dataset.n_total={d.n_total} is too small: windows of n_points + n_extrap start at "
                          f"least n_points into the grid, so it must be >= {2 * d.n_points + d.n_extrap}")
    for key in ("t_start", "t_stop", "a", "b", "offset"):
        _number(d[key], f"dataset.{key}", -math.inf)
    if not d.t_stop > d.t_start:
        raise ConfigError(f"dataset.t_stop={d.t_stop} must be greater than dataset.t_start={d.t_start}")
    if d.t_start < 0 or d.b <= 0:
        raise ConfigError("dataset.t_start must be >= 0 and dataset.b > 0 (the spirals' radius formulas)")
    _number(d.noise_std, "dataset.noise_std", 0.0)
    _number(d.test_fraction, "dataset.test_fraction", 0.0, 1.0, strict=True)
    n_test = d.n_spirals - round(d.n_spirals * (1.0 - d.test_fraction))
    if n_test < 1 or n_test >= d.n_spirals:
        raise ConfigError(f"dataset.test_fraction={d.test_fraction} leaves an empty split of "
                          f"{d.n_spirals} spirals; both train and test need at least one")
    if m.name == "latent_ode":
        for key in ("latent_dim", "rnn_hidden", "ode_hidden", "decoder_hidden"):
            _int_in(m[key], f"model.{key}", 1)
        _int_in(m.ode_layers, "model.ode_layers", 0)
        _number(m.obs_std, "model.obs_std", 0.0, strict=True)
    else:
        _int_in(m.hidden, "model.hidden", 1)
        choice(m.cell, "model.cell", tuple(CELLS))
