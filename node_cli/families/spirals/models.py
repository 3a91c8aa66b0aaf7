"""The spirals family's models (paper section 5): the latent ODE and the two RNN baselines.

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
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...core.checks import choice
from ...core.solve import ODEBlock

MODELS = ("latent_ode", "rnn", "rnn_dt")
CELLS = {"rnn": nn.RNN, "gru": nn.GRU}
LOG_2PI = math.log(2 * math.pi)


def rmse(pred, target) -> float:
    return torch.sqrt(((pred - target) ** 2).mean()).item()


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

        One solve for the whole batch, read at each row's times (`ODEBlock.at_rows`: the values of a solve on the
        sorted union of all times in `t`, and 0, where z0 lives). `ode` replaces the model's block (same field,
        other solver settings) for a reference solve."""
        return (ode or self.ode)(z0, t)

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
        # the mean gap between the training observations: the only time step a model without time inputs knows
        self.register_buffer("cadence", torch.ones(()))

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
        """Predictions at t_out [k] (all after t[:, -1]), rolled out by feeding back the predicted means.
        `rnn_dt` is told each gap. `rnn` knows no time: it is rolled out at the cadence it was trained on (one
        prediction per `cadence` after its last observation) and its predictions are interpolated linearly onto
        t_out, so it is asked what it learned rather than to predict at a time scale it never saw."""
        if self.time_input:
            gaps = torch.cat([t[:, 1:] - t[:, :-1], t_out[0] - t[:, -1:]], 1)
            mean, _, h = self.step(x, gaps)
            preds = [mean[:, -1:]]
            steps = torch.diff(t_out)
            for k in range(len(steps)):
                mean, _, h = self.step(preds[-1], steps[k].expand(len(x), 1), h)
                preds.append(mean)
            return torch.cat(preds, 1)
        cadence, last = float(self.cadence), t[:, -1]
        count = int(math.ceil(float((t_out[-1] - last.min()) / cadence))) + 1   # rollout points needed
        mean, _, h = self.step(x, None)
        preds = [mean[:, -1:]]
        for _ in range(count - 1):
            mean, _, h = self.step(preds[-1], None, h)
            preds.append(mean)
        values = torch.cat([x[:, -1:]] + preds, 1)                      # at last + cadence * (0, 1, ..., count)
        u = ((t_out[None, :] - last[:, None]) / cadence).clamp(0, count)   # [B, k] position on that grid
        j0 = u.floor().clamp(max=count - 1).long()
        w = (u - j0)[..., None]
        pick = lambda j: torch.gather(values, 1, j[..., None].expand(-1, -1, values.shape[-1]))  # noqa: E731
        return pick(j0) * (1 - w) + pick(j0 + 1) * w

    def reconstruct(self, x, t):
        """(times, one-step-ahead predictions) at the observed times after the first."""
        mean, _, _ = self.step(x[:, :-1], t[:, 1:] - t[:, :-1])
        return t[:, 1:], mean


def build_model(m, solver_cfg) -> nn.Module:
    choice(m.name, "model", MODELS)
    return LatentODE(m, solver_cfg) if m.name == "latent_ode" else RNNBaseline(m)
