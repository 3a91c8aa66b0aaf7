"""The known 2-D systems the family learns, solved at tight tolerance on a fine grid; nothing is downloaded.

| system | dy/dt | start |
|---|---|---|
| spiral | y A, A = [[-0.1, 2.0], [-2.0, -0.1]] | (2, 0) |
| cubic | y^3 A, same A (torchdiffeq's ode_demo) | (2, 0) |
| random | y A, A = randn(2, 2) / 2 drawn from dataset.seed | (2, 0) |
| linear_lv | y A, A = [[0, -b c / d], [d a / b, 0]], (a, b, c, d) = (1.5, 1, 3, 1) | (2, 0) |
| lotka_volterra | x' = a x - b x y, y' = -c y + d x y, same a..d | (1, 1) |
| switching | s(y.y0) A2 (y - y0) + s(-y.y0) B2 (y + y0), s the logistic sigmoid, y0 the start | (1, 1) |
| mlp | a fixed random network of y t: 2-25-50-10-2, no biases, ELU, weights from dataset.seed | (1, 1) at t_start |

y is a row vector (y A is torchdiffeq's `torch.mm(y, A)`); in `switching` A2 and B2 act on column vectors.
The grid is `dataset.n_points` equally spaced times over [t_start, t_stop]; the true trajectory is solved there with
torchdiffeq's dopri5 at rtol 1e-9, atol 1e-10 (`solve_true`). Observations are the truth plus Gaussian noise
(`dataset.noise_std`, from `dataset.seed`); the last `dataset.extrap` fraction of the grid is never trained on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchdiffeq
from torch import nn

SYSTEMS = ("spiral", "cubic", "random", "linear_lv", "lotka_volterra", "switching", "mlp")
SPIRAL_A = [[-0.1, 2.0], [-2.0, -0.1]]
LV = dict(a=1.5, b=1.0, c=3.0, d=1.0)
SWITCH_A2 = [[-0.1, -0.5], [0.5, -0.1]]
SWITCH_B2 = [[0.2, 1.0], [-1.0, 0.2]]
START = dict(spiral=(2.0, 0.0), cubic=(2.0, 0.0), random=(2.0, 0.0), linear_lv=(2.0, 0.0),
             lotka_volterra=(1.0, 1.0), switching=(1.0, 1.0), mlp=(1.0, 1.0))
TRUE_RTOL, TRUE_ATOL = 1e-9, 1e-10
LINEAR = ("spiral", "random", "linear_lv")


def matrix(system: str, seed: int = 0) -> torch.Tensor:
    """A of the linear systems (and of cubic): dy/dt = y A."""
    if system in ("spiral", "cubic"):
        return torch.tensor(SPIRAL_A, dtype=torch.float64)
    if system == "random":
        return torch.randn(2, 2, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64) / 2
    if system == "linear_lv":
        a, b, c, d = LV["a"], LV["b"], LV["c"], LV["d"]
        return torch.tensor([[0.0, -b * c / d], [d * a / b, 0.0]], dtype=torch.float64)
    raise ValueError(f"{system} is not linear")


class TrueField(nn.Module):
    """The true vector field f(t, y) of a system, y of shape [..., 2] (any dtype: it follows y)."""

    def __init__(self, system: str, seed: int = 0):
        super().__init__()
        self.system = system
        y0 = torch.tensor(START[system], dtype=torch.float64)
        self.register_buffer("y0", y0)
        if system in ("spiral", "cubic", "random", "linear_lv"):
            self.register_buffer("A", matrix(system, seed))
        if system == "switching":
            self.register_buffer("A2", torch.tensor(SWITCH_A2, dtype=torch.float64))
            self.register_buffer("B2", torch.tensor(SWITCH_B2, dtype=torch.float64))
        if system == "mlp":
            g = torch.Generator().manual_seed(int(seed))
            sizes = (2, 25, 50, 10, 2)
            layers = []
            for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
                lin = nn.Linear(n_in, n_out, bias=False).double()
                bound = 1.0 / n_in ** 0.5            # nn.Linear's default range, drawn from dataset.seed
                with torch.no_grad():
                    lin.weight.copy_((torch.rand(n_out, n_in, generator=g, dtype=torch.float64) * 2 - 1) * bound)
                layers += [lin] + ([nn.ELU()] if i < len(sizes) - 2 else [])
            self.net = nn.Sequential(*layers).requires_grad_(False)

    def forward(self, t, y):
        s = self.system
        if s in ("spiral", "random", "linear_lv"):
            return y @ self.A.to(y.dtype)
        if s == "cubic":
            return y ** 3 @ self.A.to(y.dtype)
        if s == "lotka_volterra":
            a, b, c, d = LV["a"], LV["b"], LV["c"], LV["d"]
            x, z = y[..., 0], y[..., 1]
            return torch.stack([a * x - b * x * z, -c * z + d * x * z], -1)
        if s == "switching":
            y0 = self.y0.to(y.dtype)
            inner = (y * y0).sum(-1, keepdim=True)
            return (torch.sigmoid(inner) * ((y - y0) @ self.A2.to(y.dtype).T)
                    + torch.sigmoid(-inner) * ((y + y0) @ self.B2.to(y.dtype).T))
        if s == "mlp":
            t = torch.as_tensor(t, dtype=torch.float64)
            return self.net((y.double() * t)).to(y.dtype)
        raise ValueError(s)


def times(d) -> torch.Tensor:
    return torch.linspace(float(d.t_start), float(d.t_stop), int(d.n_points), dtype=torch.float64)


def solve_true(system: str, seed: int, t: torch.Tensor, rtol: float = TRUE_RTOL, atol: float = TRUE_ATOL,
               y0=None) -> torch.Tensor:
    """The true trajectory [T, 2] (float64) at the times t, from the system's start (or y0) at t[0]."""
    start = torch.tensor(START[system] if y0 is None else y0, dtype=torch.float64)
    with torch.no_grad():
        return torchdiffeq.odeint(TrueField(system, seed), start, t.double(), rtol=rtol, atol=atol, method="dopri5")


@dataclass
class Trajectory:
    t: torch.Tensor          # [T] the grid
    truth: torch.Tensor      # [T, 2] the noise-free solution
    observed: torch.Tensor   # [T, 2] truth + noise (only [:n_train] is ever trained on)
    n_train: int             # grid points of the seen part; [n_train:] is the extrapolated part

    def to(self, device, dtype=torch.float32) -> "Trajectory":
        return Trajectory(self.t.to(device, dtype), self.truth.to(device, dtype), self.observed.to(device, dtype),
                          self.n_train)


def n_train(d) -> int:
    """Grid points of the seen part: all but the last `extrap` fraction (at least 2 on each side)."""
    n = int(d.n_points)
    return min(max(round(n * (1.0 - float(d.extrap))), 2), n - 1)


def generate(d) -> Trajectory:
    """The data of a `dataset` config node (float64)."""
    t = times(d)
    truth = solve_true(str(d.system), int(d.seed), t)
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(int(d.seed) + 1), dtype=torch.float64)
    return Trajectory(t, truth, truth + float(d.noise_std) * noise, n_train(d))
