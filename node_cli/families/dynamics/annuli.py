"""`experiment=anode_annuli` (augmented neural ODEs, Dupont et al. 2019, their figure 1 in 2-D): points in the disk
|x| <= 0.5 are labelled -1, points in the annulus 1 <= |x| <= 1.5 are labelled +1; a neural ODE flow over t in [0, 1]
followed by a linear readout must map them to their labels. The flow of a plain neural ODE is a homeomorphism of
the plane: it cannot carry the disk out through the annulus, so a linear readout cannot separate them and the
error stays high. With `model.augment_dim=1` the flow moves in 3-D (its projection on the plane is no longer a
homeomorphism) and the classes come apart. Training: full batch of 256 points, MSE to the labels; `test_mse` on 512
other points (the objective) and `test_accuracy` (sign of the output). Figure: annuli.png, the points before and
after the flow.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .crossing import CrossingTask
from .models import build_model

INNER, OUTER = (0.0, 0.5), (1.0, 1.5)


def sample(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n points, half in the disk (label -1), half in the annulus (label +1), radii and angles uniform."""
    inner = torch.arange(n) < n // 2
    u = torch.rand(n, generator=generator)
    r = torch.where(inner, INNER[0] + u * (INNER[1] - INNER[0]), OUTER[0] + u * (OUTER[1] - OUTER[0]))
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], 1)
    return x, torch.where(inner, -1.0, 1.0)


class AnnuliTask(CrossingTask):
    """The crossing task's full-batch training on the annuli data, with a linear readout after the flow."""

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        gen = torch.Generator().manual_seed(int(cfg.dataset.seed))
        self.x, self.y = (v.to(device) for v in sample(256, gen))
        self.test_x, self.test_y = (v.to(device) for v in sample(512, gen))
        self.t = torch.tensor([0.0, 1.0], device=device)
        self.model = nn.ModuleDict(dict(flow=build_model(cfg.model, cfg.solver, dim=2), readout=nn.Linear(2, 1)))
        self.model.to(device)
        self.batch_size = len(self.x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model["readout"](self.model["flow"](x, self.t)[-1]).squeeze(-1)

    @torch.no_grad()
    def evaluate(self, limit: int | None) -> dict:
        out = self.predict(self.test_x)
        return dict(test_mse=((out - self.test_y) ** 2).mean().item(),
                    test_accuracy=(out.sign() == self.test_y).float().mean().item())

    def finish(self, run) -> dict:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with torch.no_grad():
            moved = self.model["flow"](self.test_x, self.t)[-1].cpu()
        x, y = self.test_x.cpu(), self.test_y.cpu()
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
        for ax, points, title in ((axes[0], x, "data: disk -1, annulus +1"), (axes[1], moved, "after the flow (t = 1)")):
            ax.scatter(points[:, 0], points[:, 1], c=["tab:red" if v < 0 else "tab:blue" for v in y], s=6)
            ax.set_aspect("equal", "datalim")
            ax.set_title(title, fontsize=9)
        aug = int(self.cfg.model.get("augment_dim", 0) or 0)
        ev = self.evaluate(None)
        fig.suptitle(f"{'augmented (+' + str(aug) + ')' if aug else 'plain'} neural ODE: test MSE {ev['test_mse']:.3g}, "
                     f"accuracy {ev['test_accuracy']:.1%}", fontsize=10)
        fig.tight_layout()
        fig.savefig(run.path / "annuli.png", dpi=110)
        plt.close(fig)
        return dict(figures=["annuli.png"])
