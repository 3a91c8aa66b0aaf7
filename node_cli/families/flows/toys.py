"""The standard 2-D toy densities of the FFJORD and RNODE papers, generated with torch from a seeded
`torch.Generator` (never downloaded), after the published definitions (FFJORD's `lib/toy_data.py`):

- `8gaussians`: eight Gaussians (std 0.5) centred on the circle of radius 4 at multiples of 45 degrees, the
  whole scaled by 1/1.414;
- `pinwheel`: five arms, each a Gaussian (radial std 0.3, tangential std 0.1, shifted by 1 along the radius)
  bent by an angle 0.25 exp(radius), times 2;
- `checkerboard`: uniform on the eight black squares (side 2) of a 4 x 4 board on [-4, 4]^2;
- `2spirals`: two interleaved spirals r = theta, theta = 3 pi sqrt(u), each point shifted by U[0, 0.5)^2 (the
  second arm by its negative), divided by 3, plus N(0, 0.1^2) noise;
- `rings`: four concentric circles of radii 0.75, 1.5, 2.25, 3 (a quarter of the points each), plus
  N(0, 0.08^2) noise; the angle is uniform (FFJORD places the points on an evenly spaced grid of angles, which is
  the same density as the batch grows);
- `swissroll`: sklearn's make_swiss_roll (t = 1.5 pi (1 + 2u), point (t cos t, t sin t), N(0, 1) noise) divided
  by 5, its first and third coordinates.

`data_log_density(name, x)` is the log density of the generating distribution where it is known: in closed form
(8gaussians, checkerboard) or by the midpoint rule along the curve (2spirals, rings, swissroll); None for pinwheel.
Its negative mean on the test set is the floor of `test_nll`.
"""
from __future__ import annotations

import math

import torch

from .data import curve_log_density

TOYS = ("8gaussians", "pinwheel", "checkerboard", "2spirals", "rings", "swissroll")
LIMIT = 4.5   # every toy set lies (almost) in [-4.5, 4.5]^2: the half-width of its figures


def eight_gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.double() * math.pi / 4
    centres = 4 * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return ((centres + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)) / 1.414).float()


def pinwheel(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.randint(0, 5, (n,), generator=g)
    f = torch.randn(n, 2, generator=g) * torch.tensor([0.3, 0.1])
    f[:, 0] += 1.0
    angle = 2 * math.pi * k / 5 + 0.25 * torch.exp(f[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    return 2 * torch.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], 1)


def checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g) * 2
    x2 = x2 + torch.floor(x1) % 2
    return 2 * torch.stack([x1, x2], 1)


def two_spirals(n: int, g: torch.Generator) -> torch.Tensor:
    theta = torch.sqrt(torch.rand(n, generator=g)) * 3 * math.pi
    arm = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    d = torch.stack([-torch.cos(theta) * theta, torch.sin(theta) * theta], 1) + 0.5 * torch.rand(n, 2, generator=g)
    return arm[:, None] * d / 3 + 0.1 * torch.randn(n, 2, generator=g)


RING_RADII = (0.75, 1.5, 2.25, 3.0)


def rings(n: int, g: torch.Generator) -> torch.Tensor:
    radius = torch.tensor(RING_RADII)[torch.randint(0, 4, (n,), generator=g)]
    angle = 2 * math.pi * torch.rand(n, generator=g)
    x = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return x + 0.08 * torch.randn(n, 2, generator=g)


def swissroll(n: int, g: torch.Generator) -> torch.Tensor:
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1)
    return (x + torch.randn(n, 2, generator=g)) / 5


_SAMPLERS = {"8gaussians": eight_gaussians, "pinwheel": pinwheel, "checkerboard": checkerboard,
             "2spirals": two_spirals, "rings": rings, "swissroll": swissroll}


def sample(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """n points [n, 2] of the toy set `name`, drawn from `generator`."""
    return _SAMPLERS[name](n, generator)


# ------------------------------------------------------------------------------------------ true densities
def _log_box_gauss(a, lo, hi, std):
    """log density at a of U[lo, hi) + N(0, std^2) (one coordinate), elementwise."""
    normal = torch.distributions.Normal(torch.zeros((), dtype=a.dtype), std)
    p = normal.cdf(a - lo) - normal.cdf(a - hi)
    return torch.log(p.clamp_min(1e-300)) - math.log(hi - lo)


@torch.no_grad()
def data_log_density(name: str, x: torch.Tensor, points: int = 4096):
    """log density of the generating distribution at x [N, 2] (float64 quadrature), or None if unknown."""
    x = x.double()
    u = (torch.arange(points, dtype=torch.float64) + 0.5) / points   # midpoints of [0, 1)
    if name == "8gaussians":
        angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
        centres = 4 * torch.stack([torch.cos(angle), torch.sin(angle)], 1) / 1.414
        return curve_log_density(x, centres, 0.5 / 1.414, chunk=500).float()
    if name == "checkerboard":
        cell = torch.floor(x / 2)   # squares of side 2 on [-4, 4]^2; filled where column + row is even
        inside = (x.abs() < 4).all(1) & ((cell[:, 0] + cell[:, 1]) % 2 == 0)
        return torch.where(inside, -math.log(32.0), -math.inf).float()
    if name == "rings":
        angle = 2 * math.pi * u
        circle = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        centres = torch.cat([r * circle for r in RING_RADII])
        return curve_log_density(x, centres, 0.08, chunk=500).float()
    if name == "swissroll":
        t = 1.5 * math.pi * (1 + 2 * u)
        centres = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 5
        return curve_log_density(x, centres, 0.2, chunk=500).float()
    if name == "2spirals":   # theta = 3 pi sqrt(u): midpoints in u; each point U-box + Gaussian per coordinate
        theta = torch.sqrt(u) * 3 * math.pi
        curve = torch.stack([-torch.cos(theta) * theta, torch.sin(theta) * theta], 1) / 3
        out = []
        for chunk in x.split(200):
            arms = []
            for sign in (1.0, -1.0):   # arm 2 is the negative of arm 1, its box [-0.5/3, 0)
                lo, hi = (0.0, 0.5 / 3) if sign > 0 else (-0.5 / 3, 0.0)
                a = chunk[:, None, :] - sign * curve[None]
                log_p = _log_box_gauss(a, lo, hi, 0.1).sum(2)
                arms.append(torch.logsumexp(log_p, 1) - math.log(points))
            out.append(torch.logsumexp(torch.stack(arms, 1), 1) - math.log(2))
        return torch.cat(out).float()
    return None
