"""The dynamics family's figures, written into each run's folder: phase.png, timeseries.png, vector_field.png and
training.gif (a frame per evaluation, matplotlib.animation's PillowWriter)."""
from __future__ import annotations

import torch

from .models import predict


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def trajectories(task) -> dict:
    """What phase.png and timeseries.png draw: the grid t, the noise-free truth, the observations of the seen
    part, and the learned trajectory (the seen part from y0, then the extrapolated part from the true state at the
    split), all [T, 2] numpy arrays except t [T]; `split` is the first extrapolated index."""
    task.model.eval()
    seen, ext = predict(task.model, task.data)
    task.model.train()
    data = task.data
    return dict(t=data.t.cpu().numpy(), truth=data.truth.cpu().numpy(),
                observed=data.observed[: data.n_train].cpu().numpy(),
                learned=torch.cat([seen, ext]).cpu().numpy(), split=data.n_train)


def _title(task) -> str:
    c = task.cfg
    return (f"{c.name}: {c.dataset.system}, field 2-{'-'.join(map(str, c.model.hidden if not isinstance(c.model.hidden, int) else [c.model.hidden]))}-2 "
            f"{c.model.activation}" + (f" +{c.model.augment_dim} aug" if c.model.get("augment_dim") else ""))


def phase_figure(task, path):
    plt = _plt()
    tr = trajectories(task)
    k = tr["split"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(tr["truth"][:k, 0], tr["truth"][:k, 1], color="0.5", lw=2, label="truth (seen)")
    ax.plot(tr["truth"][k - 1:, 0], tr["truth"][k - 1:, 1], color="0.5", lw=2, ls="--", label="truth (extrapolated)")
    if task.cfg.dataset.noise_std > 0:
        ax.scatter(tr["observed"][:, 0], tr["observed"][:, 1], s=2, color="k", alpha=0.3, label="observations")
    ax.plot(tr["learned"][:k, 0], tr["learned"][:k, 1], color="tab:blue", lw=1.2, label="learned (from y0)")
    ax.plot(tr["learned"][k:, 0], tr["learned"][k:, 1], color="tab:red", lw=1.2, label="learned (from the split)")
    ax.set_xlabel("y1")
    ax.set_ylabel("y2")
    ax.legend(fontsize=7)
    ax.set_title(_title(task), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeseries_figure(task, path):
    plt = _plt()
    tr = trajectories(task)
    t, k = tr["t"], tr["split"]
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for i, ax in enumerate(axes):
        ax.plot(t, tr["truth"][:, i], color="0.5", lw=2, label="truth")
        ax.plot(t, tr["learned"][:, i], color="tab:blue", lw=1.2, label="learned")
        ax.axvspan(t[k - 1], t[-1], color="tab:red", alpha=0.1, label="extrapolated (never trained on)")
        ax.set_ylabel(f"y{i + 1}")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("t")
    axes[0].set_title(_title(task), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def fields(task) -> dict:
    """The grid [n, n, 2] and the learned and true fields on it (numpy). A time-dependent true field (mlp) is
    drawn at t_stop."""
    grid = task.grid
    learned = task.model.field_at(grid)
    true = task.true_field().to(grid.device)(torch.tensor(float(task.cfg.dataset.t_stop)), grid.double()).float()
    return dict(grid=grid.cpu().numpy(), learned=learned.cpu().numpy(), true=true.cpu().numpy())


def field_figure(task, path):
    plt = _plt()
    f = fields(task)
    tr = trajectories(task)
    g = f["grid"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharex=True, sharey=True)
    for ax, key, title in zip(axes, ("learned", "true"), ("learned field", "true field")):
        v = f[key]
        ax.quiver(g[..., 0], g[..., 1], v[..., 0], v[..., 1], color="tab:blue" if key == "learned" else "0.3")
        ax.plot(tr["truth"][:, 0], tr["truth"][:, 1], color="tab:orange", lw=1, label="true trajectory")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("y1")
    axes[0].set_ylabel("y2")
    axes[0].legend(fontsize=7)
    fig.suptitle(_title(task), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_gif(task, path, fps: int = 4):
    """One frame per evaluation of the run (task.frames, across resumes): the learned trajectory and field over the
    truth."""
    plt = _plt()
    from matplotlib.animation import FuncAnimation, PillowWriter

    frames, g = task.frames, task.grid.cpu().numpy()
    truth = task.data.truth.cpu().numpy()
    every = task.cfg.trainer.eval_every
    fig, ax = plt.subplots(figsize=(5, 5))

    def draw(i):
        ax.clear()
        fr = frames[i]
        v = fr["field"].numpy()
        ax.quiver(g[..., 0], g[..., 1], v[..., 0], v[..., 1], color="0.6")
        ax.plot(truth[:, 0], truth[:, 1], color="k", lw=1.5, label="truth")
        learned = torch.cat([fr["seen"], fr["ext"]]).numpy()
        ax.plot(learned[:, 0], learned[:, 1], color="tab:blue", lw=1.2, label="learned")
        ax.set_xlim(g[..., 0].min(), g[..., 0].max())
        ax.set_ylim(g[..., 1].min(), g[..., 1].max())
        ax.legend(fontsize=7, loc="upper right")
        last = i == len(frames) - 1
        ax.set_title(f"evaluation {i + 1}/{len(frames)}" + (" (final)" if last else
                                                             (f", step {(i + 1) * every}" if every else "")), fontsize=9)

    anim = FuncAnimation(fig, draw, frames=len(frames))
    anim.save(path, writer=PillowWriter(fps=fps), dpi=80)
    plt.close(fig)
    return path
