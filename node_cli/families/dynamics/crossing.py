"""`experiment=anode_crossing` (augmented neural ODEs, Dupont et al. 2019): the 1-D map g(1) = -1, g(-1) = 1.

A neural ODE's flow x(0) -> x(1) is a homeomorphism of the line: the trajectories from 1 and -1 cannot cross, so
x(1) from 1 stays above x(1) from -1 and the mean squared error of the map is at least 1 (both at 0). With
`model.augment_dim=1` the state is (x, a) with a(0) = 0 and the trajectories pass each other in the plane: the error
can reach 0. Training: full batch of the two points, MSE at t = 1; `test_mse` is that MSE (the objective).
Figure: trajectories.png, x(t) over [0, 1] from starts in [-1, 1] (the two data points bold).
"""
from __future__ import annotations

import torch

from .models import build_model


class CrossingTask:
    """A fixed full batch (`self.x`, `self.y`) fitted by the mean squared error of `predict(x)` (annuli.py's task
    is the same with another data set and a readout)."""

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        self.x = torch.tensor([[1.0], [-1.0]], device=device)
        self.y = -self.x
        self.t = torch.tensor([0.0, 1.0], device=device)
        self.model = build_model(cfg.model, cfg.solver, dim=1).to(device)
        self.batch_size = 2
        self.frames: list = []

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.t)[-1]

    def steps_per_epoch(self) -> int:
        return 1

    def generators(self) -> list:
        return []

    def train_batches(self, epoch: int):
        yield self.x, self.y

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        return ((self.predict(x) - y) ** 2).mean()

    @torch.no_grad()
    def evaluate(self, limit: int | None) -> dict:
        out = self.predict(self.x)
        return dict(test_mse=((out - self.y) ** 2).mean().item(), x1_from_plus_one=out[0, 0].item(),
                    x1_from_minus_one=out[1, 0].item())

    def memory_batch(self):
        return self.x, self.y

    @torch.no_grad()
    def paths(self, n: int = 11, points: int = 50):
        """(t [points], x [points, n]): trajectories from n starts evenly in [-1, 1] (first and last: the data)."""
        t = torch.linspace(0, 1, points, device=self.device)
        starts = torch.linspace(-1, 1, n, device=self.device)[:, None]
        return t.cpu(), self.model(starts, t)[..., 0].cpu()

    def finish(self, run) -> dict:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t, x = self.paths()
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        for i in range(x.shape[1]):
            bold = i in (0, x.shape[1] - 1)
            ax.plot(t, x[:, i], color=("tab:red" if i == 0 else "tab:blue") if bold else "0.6", lw=2 if bold else 0.8)
        ax.scatter([1, 1], [1, -1], marker="x", color="k", zorder=3, label="targets g(-1) = 1, g(1) = -1")
        aug = int(self.cfg.model.get("augment_dim", 0) or 0)
        ev = self.evaluate(None)
        ax.set_title(f"{'augmented (+' + str(aug) + ')' if aug else 'plain'} neural ODE: MSE {ev['test_mse']:.3g}",
                     fontsize=9)
        ax.set_xlabel("t")
        ax.set_ylabel("x(t)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run.path / "trajectories.png", dpi=110)
        plt.close(fig)
        return dict(figures=["trajectories.png"],
                    n_parameters_field=sum(p.numel() for p in self.model.parameters()))
