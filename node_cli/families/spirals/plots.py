"""The spirals family's figures, written into each run's folder: Figure 8 (reconstruction and extrapolation) and
Figure 9 (latent trajectories)."""
from __future__ import annotations

import torch

from .data import COUNTER_CLOCKWISE
from .models import LatentODE, rmse


@torch.no_grad()
def spirals_figure(task, path):
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
def latent_figure(task, path, count: int = 100):
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
