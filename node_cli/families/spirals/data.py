"""The spiral data set of the paper's section 5 (Table 2), generated from a seed, never downloaded.

Shapes follow the reference example (torchdiffeq `examples/latent_ode.py`): two Archimedean-like spirals on a fine
grid of `n_total` times over [t_start, t_stop],
- counter-clockwise: theta = t,                   r = a + b * theta,        centre (+offset, 0);
- clockwise:         theta = t_stop + 1 - t,      r = a + 50 * b / theta,   centre (-offset, 0).
Both turn at unit angular speed. Each of the `n_spirals` trajectories is exactly half one direction, half the
other (shuffled), and starts at its own random grid index in [n_points, n_total - n_points - n_extrap]. It has
`n_points` equally spaced points (the observation window) followed by `n_extrap` more (the extrapolation target).
Times are relative to the trajectory's start: every trajectory lives on the same relative grid
`times = arange(n_points + n_extrap) * dt`, dt = (t_stop - t_start) / (n_total - 1).

Observations are the window's points plus Gaussian noise (`noise_std`); each trajectory keeps `n_obs` of them,
chosen at random without replacement (sorted in time), so observation times are irregular and differ between
trajectories. The subsets come from their own random stream: changing n_obs never changes the spirals or
the noise, so every n_obs sees the same data set.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CLOCKWISE, COUNTER_CLOCKWISE = 0, 1


@dataclass
class Spirals:
    truth: torch.Tensor      # [N, n_points + n_extrap, 2] noise-free positions
    noisy: torch.Tensor      # [N, n_points + n_extrap, 2] truth + noise (only the window's are ever observed)
    times: torch.Tensor      # [n_points + n_extrap] relative times, shared grid
    obs_idx: torch.Tensor    # [N, n_obs] sorted indices into the window: the kept observations
    direction: torch.Tensor  # [N] 0 clockwise, 1 counter-clockwise
    n_points: int

    def __len__(self) -> int:
        return len(self.truth)

    def subset(self, idx) -> "Spirals":
        return Spirals(self.truth[idx], self.noisy[idx], self.times, self.obs_idx[idx], self.direction[idx],
                       self.n_points)

    def to(self, device) -> "Spirals":
        return Spirals(self.truth.to(device), self.noisy.to(device), self.times.to(device),
                       self.obs_idx.to(device), self.direction.to(device), self.n_points)

    # what a model may see: the kept noisy observations and their own times
    def observations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [N, n_obs, 2], t [N, n_obs]): each trajectory's observed points at its own times."""
        x = torch.gather(self.noisy, 1, self.obs_idx[..., None].expand(-1, -1, 2))
        return x, self.times[self.obs_idx]

    # what a model is scored on: the noise-free spiral after the window
    def extrapolation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(t [n_extrap], truth [N, n_extrap, 2]): the prediction targets."""
        return self.times[self.n_points:], self.truth[:, self.n_points:]


def spiral_curves(d) -> tuple[torch.Tensor, torch.Tensor]:
    """The two noise-free spirals on the fine grid: (clockwise, counter-clockwise), each [n_total, 2], float64."""
    t = torch.linspace(float(d.t_start), float(d.t_stop), int(d.n_total), dtype=torch.float64)
    theta_cw = float(d.t_stop) + 1.0 - t
    r_cw = d.a + 50.0 * d.b / theta_cw
    cw = torch.stack([r_cw * torch.cos(theta_cw) - d.offset, r_cw * torch.sin(theta_cw)], 1)
    r_cc = d.a + d.b * t
    cc = torch.stack([r_cc * torch.cos(t) + d.offset, r_cc * torch.sin(t)], 1)
    return cw, cc


def generate(d) -> Spirals:
    """All `d.n_spirals` trajectories from the `dataset` config node `d` (seeded by d.seed)."""
    n, p, e, total = int(d.n_spirals), int(d.n_points), int(d.n_extrap), int(d.n_total)
    length = p + e
    first, last = p, total - length   # start indices allowed (as the reference: not too near the centre)
    if last < first:
        raise ValueError(f"dataset.n_total={total} is too small for n_points + n_extrap = {length} after "
                         f"a margin of n_points; it must be at least {2 * p + e}")
    gen = torch.Generator().manual_seed(int(d.seed))
    direction = torch.zeros(n, dtype=torch.long)
    direction[: n // 2] = COUNTER_CLOCKWISE
    direction = direction[torch.randperm(n, generator=gen)]
    start = torch.randint(first, last + 1, (n,), generator=gen)
    cw, cc = spiral_curves(d)
    curves = torch.stack([cw, cc])                                    # [2, n_total, 2]
    rows = start[:, None] + torch.arange(length)                      # [N, length]
    truth = curves[direction[:, None], rows]                          # [N, length, 2]
    noisy = truth + float(d.noise_std) * torch.randn(truth.shape, generator=gen, dtype=torch.float64)
    dt = (float(d.t_stop) - float(d.t_start)) / (total - 1)
    times = torch.arange(length, dtype=torch.float64) * dt

    keep = torch.Generator().manual_seed(int(d.seed) + 1)             # own stream: n_obs never changes the data
    obs_idx = torch.rand(n, p, generator=keep).argsort(1)[:, : int(d.n_obs)].sort(1).values
    return Spirals(truth.float(), noisy.float(), times.float(), obs_idx, direction, p)


def split(data: Spirals, test_fraction: float) -> tuple[Spirals, Spirals]:
    """Train and test splits: the first round(N * (1 - test_fraction)) trajectories train, the rest test
    (directions are already shuffled)."""
    n_train = round(len(data) * (1.0 - float(test_fraction)))
    return data.subset(slice(0, n_train)), data.subset(slice(n_train, None))
