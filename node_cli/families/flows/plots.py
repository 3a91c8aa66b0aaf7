"""The flows family's figures, written into each run's folder: the learned density beside the target
(density.png) and the flow from base to data at several fractions of its time or layers (flow.png, Figures 5-6)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from . import toys  # noqa: E402
from .models import FRACTIONS  # noqa: E402

PLOT_LIMIT = {"circles": 1.5, "moons": 1.75, "density": 4.5, **{name: toys.LIMIT for name in toys.TOYS}}


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
    loss = m.get("loss", "mle")   # flow matching trains without a trace: say the objective instead
    size = (f"M={m.width}" if m.name == "cnf" else f"K={m.depth}" if m.name == "nf" else
            f"{'-'.join(map(str, m.hidden))}, " + (f"{m.trace} trace" if loss == "mle" else f"trained by {loss}")
            + (f", kinetic {m.kinetic:g}, jacobian {m.jacobian:g}" if m.kinetic or m.jacobian else ""))
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
    unit = "of the layers" if task.cfg.model.name == "nf" else "of the flow time"
    fig, axes = plt.subplots(2, len(FRACTIONS), figsize=(2.2 * len(FRACTIONS), 4.6))
    for i, (f, (x, log_p)) in enumerate(zip(FRACTIONS, stages)):
        _show_samples(axes[0, i], x, limit, f"samples {round(100 * f)}%")
        _show_density(axes[1, i], log_p, limit, points, f"density {round(100 * f)}%")
    fig.suptitle(f"{_title(task)}: base to data, fractions {unit}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
