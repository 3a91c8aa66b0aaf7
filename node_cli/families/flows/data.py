"""Two-dimensional toy problems for the flow experiments (paper section 4, Figures 4-6).

- Data sets for maximum likelihood, sampled fresh from a seeded `torch.Generator` (no sklearn):
  `circles` (sklearn's make_circles: radii 1 and `factor`, uniform random angles, Gaussian noise) and
  `moons` (sklearn's make_moons, shifted so its centre is at the origin).
- Energy functions U1-U4 of Rezende & Mohamed (2015, Table 1) for density matching: the target is
  p(z) = exp(-U(z)) / Z. U2-U4 do not depend on z1 except through a bounded wiggle, so exp(-U) has infinite
  mass along z1; like the 2015 paper's plots we keep the square |z1| <= 4 by adding a soft wall
  0.5 * ((|z1| - 4)_+ / 0.3)^2 to every target (U1's mass lies well inside it). `log_normalizer` computes log Z
  by quadrature on a fine grid, so the KL divergence can be reported exactly rather than up to a constant.
"""
from __future__ import annotations

import math

import torch

DATASETS = ("circles", "moons")
TARGETS = ("u1", "u2", "u3", "u4")
WALL, WALL_WIDTH = 4.0, 0.3


def curve(name: str, u: torch.Tensor, first: torch.Tensor | bool, factor: float = 0.5) -> torch.Tensor:
    """Noise-free points of a data set's curves: u in [0, 1) runs along a curve, `first` picks the outer circle
    (circles) or the upper moon (moons). The samplers and the true data density both place points with it."""
    if name == "circles":
        angle = 2 * math.pi * u
        radius = torch.where(torch.as_tensor(first), 1.0, factor)
        return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)
    angle = math.pi * u
    first = torch.as_tensor(first)
    x = torch.where(first, torch.cos(angle), 1 - torch.cos(angle)) - 0.5
    y = torch.where(first, torch.sin(angle), 0.5 - torch.sin(angle)) - 0.25
    return torch.stack([x, y], 1)


def circles(n: int, generator: torch.Generator, noise: float = 0.06, factor: float = 0.5) -> torch.Tensor:
    """Two concentric circles (radii 1 and `factor`), half the points on each, plus N(0, noise^2) noise."""
    u = torch.rand(n, generator=generator)
    x = curve("circles", u, torch.rand(n, generator=generator) < 0.5, factor)
    return x + noise * torch.randn(n, 2, generator=generator)


def moons(n: int, generator: torch.Generator, noise: float = 0.06, factor: float = 0.5) -> torch.Tensor:
    """Two interleaving half circles of radius 1 (sklearn's make_moons) centred at the origin, plus noise."""
    u = torch.rand(n, generator=generator)
    x = curve("moons", u, torch.rand(n, generator=generator) < 0.5)
    return x + noise * torch.randn(n, 2, generator=generator)


def sample_data(name: str, n: int, generator: torch.Generator, noise: float, factor: float = 0.5) -> torch.Tensor:
    return {"circles": circles, "moons": moons}[name](n, generator, noise, factor)


def _w1(z):
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def _w2(z):
    return 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)


def _w3(z):
    return 3 * torch.sigmoid((z[:, 0] - 1) / 0.3)


def _u1(z):
    ring = 0.5 * ((z.norm(dim=1) - 2) / 0.4) ** 2
    modes = torch.stack([-0.5 * ((z[:, 0] - 2) / 0.6) ** 2, -0.5 * ((z[:, 0] + 2) / 0.6) ** 2], 1)
    return ring - torch.logsumexp(modes, 1)


def _u2(z):
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2


def _u3(z):
    a = -0.5 * ((z[:, 1] - _w1(z)) / 0.35) ** 2
    b = -0.5 * ((z[:, 1] - _w1(z) + _w2(z)) / 0.35) ** 2
    return -torch.logsumexp(torch.stack([a, b], 1), 1)


def _u4(z):
    a = -0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2
    b = -0.5 * ((z[:, 1] - _w1(z) + _w3(z)) / 0.35) ** 2
    return -torch.logsumexp(torch.stack([a, b], 1), 1)


_ENERGIES = {"u1": _u1, "u2": _u2, "u3": _u3, "u4": _u4}


def energy(name: str, z: torch.Tensor) -> torch.Tensor:
    """U(z) for z [N, 2]: the Rezende & Mohamed energy plus the soft wall at |z1| = 4."""
    wall = 0.5 * (torch.relu(z[:, 0].abs() - WALL) / WALL_WIDTH) ** 2
    return _ENERGIES[name](z) + wall


@torch.no_grad()
def log_normalizer(name: str, half_width: float = 7.0, points: int = 1401) -> float:
    """log Z = log of the integral of exp(-U) over R^2, by the midpoint rule on [-half_width, half_width]^2."""
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    cell = (axis[1] - axis[0]).item() ** 2
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    neg_u = -energy(name, torch.stack([xx.reshape(-1), yy.reshape(-1)], 1))
    return (torch.logsumexp(neg_u, 0) + math.log(cell)).item()


@torch.no_grad()
def data_log_density(name: str, x: torch.Tensor, noise: float, factor: float = 0.5, angles: int = 4096) -> torch.Tensor:
    """log density of the generating distribution at x [N, 2] (the curves convolved with the noise), by the
    midpoint rule over the curve's angle: -mean of it on a test set is the best test NLL any model can reach."""
    if noise <= 0:
        raise ValueError("the data density is singular without noise")
    x = x.double()
    u = (torch.arange(angles, dtype=torch.float64) + 0.5) / angles
    centres = torch.cat([curve(name, u, True, factor), curve(name, u, False, factor)])
    return curve_log_density(x, centres, noise).float()


def curve_log_density(x: torch.Tensor, centres: torch.Tensor, std: float, chunk: int = 1000) -> torch.Tensor:
    """log of the mean over the points `centres` [M, 2] of N(x; c, std^2 I), at x [N, 2], `chunk` rows at a time:
    the density of points on a curve (sampled densely) plus Gaussian noise."""
    out = []
    for part in x.split(chunk):
        log_n = -0.5 * torch.cdist(part, centres).pow(2) / std ** 2 - math.log(2 * math.pi * std ** 2)
        out.append(torch.logsumexp(log_n, 1) - math.log(len(centres)))
    return torch.cat(out)
