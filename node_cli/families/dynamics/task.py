"""The dynamics task: fit a neural vector field to one trajectory of a known 2-D system (torchdiffeq's ode_demo).
Data: data.py; model: models.py; figures: plots.py.

Training (as ode_demo): each step draws `trainer.batch_size` random starts s in the seen part, with windows
s .. s + dataset.batch_time - 1 all inside it; the model solves each window from the observed state at s over the
window's times (shifted to start at 0: the field is autonomous) and the loss is the mean absolute error against the
observed states. One step per epoch: trainer.epochs is the number of iterations.

Evaluation: `test_mse` is the mean squared error (over points and both coordinates) on the extrapolated part, the
last `dataset.extrap` of the grid, solving from the true state at the split (the last seen grid point) against the
noise-free truth; `train_mse` the same on the seen part solving from the true start y0. Every evaluation stores the
learned trajectory and field: the frames of training.gif (kept in the checkpoint, so a resumed run's gif has them all).
"""
from __future__ import annotations

import logging

import torch
from omegaconf import ListConfig

from ...core.checks import ConfigError, choice, integer, number
from .data import SYSTEMS, TrueField, generate
from .models import ACTIVATIONS, build_model, predict

CROSSING = "crossing"     # experiment=anode_crossing: the 1-D map g(+-1) = -+1 (crossing.py)
ANNULI = "annuli"         # experiment=anode_annuli: the 2-D disk inside an annulus (annuli.py)


def grid_box(truth: torch.Tensor, margin: float = 0.25, n: int = 15) -> torch.Tensor:
    """A grid of points [n, n, 2] covering the trajectory's box plus a margin: where the fields are drawn."""
    lo, hi = truth.min(0).values, truth.max(0).values
    pad = (hi - lo).clamp_min(1e-3) * margin
    xs = torch.linspace(float(lo[0] - pad[0]), float(hi[0] + pad[0]), n)
    ys = torch.linspace(float(lo[1] - pad[1]), float(hi[1] + pad[1]), n)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack([gx, gy], -1)


class DynamicsTask:
    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        d = cfg.dataset
        self.data64 = generate(d)
        self.data = self.data64.to(device)
        logging.getLogger("node_run").info(
            "dynamics %s: %d grid points over [%g, %g], %d seen, noise_std %g (dataset.seed=%s)",
            d.system, d.n_points, d.t_start, d.t_stop, self.data.n_train, d.noise_std, d.seed)
        self.model = build_model(cfg.model, cfg.solver).to(device)
        self.batch_size = int(cfg.trainer.batch_size)
        self.batch_time = int(d.batch_time)
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        self.grid = grid_box(self.data64.truth.float()).to(device)
        self.frames: list[dict] = []      # one per evaluate call: step-free snapshots of the learned dynamics

    def steps_per_epoch(self) -> int:
        return 1

    def generators(self) -> list:
        return [self.generator]

    def batch(self):
        """ode_demo's get_batch: (y0 [B, 2], t [batch_time], y [batch_time, B, 2])."""
        last = self.data.n_train - self.batch_time          # the largest start whose window stays seen
        s = torch.randint(0, last + 1, (self.batch_size,), generator=self.generator).to(self.device)
        idx = s[None, :] + torch.arange(self.batch_time, device=self.device)[:, None]
        t = self.data.t[: self.batch_time] - self.data.t[0]
        return self.data.observed[s], t, self.data.observed[idx]

    def train_batches(self, epoch: int):
        yield self.batch()

    def loss(self, batch) -> torch.Tensor:
        y0, t, y = batch
        return (self.model(y0, t) - y).abs().mean()

    @torch.no_grad()
    def evaluate(self, limit: int | None) -> dict:
        data, k = self.data, self.data.n_train
        seen, ext = predict(self.model, data)
        self.frames.append(dict(seen=seen.cpu(), ext=ext.cpu(), field=self.model.field_at(self.grid).cpu()))
        return dict(test_mse=((ext - data.truth[k:]) ** 2).mean().item(),
                    train_mse=((seen - data.truth[:k]) ** 2).mean().item())

    def memory_batch(self):
        return self.batch()

    def state(self) -> dict:
        return dict(frames=list(self.frames))

    def load_state(self, state: dict) -> None:
        self.frames = list(state["frames"])

    def finish(self, run) -> dict:
        from .plots import field_figure, phase_figure, timeseries_figure, training_gif

        files = [phase_figure(self, run.path / "phase.png"), timeseries_figure(self, run.path / "timeseries.png"),
                 field_figure(self, run.path / "vector_field.png"), training_gif(self, run.path / "training.gif")]
        return dict(figures=[f.name for f in files], gif_frames=len(self.frames), n_train_points=self.data.n_train,
                    n_test_points=len(self.data.t) - self.data.n_train,
                    n_parameters_field=sum(p.numel() for p in self.model.parameters()),
                    mse_target="noise-free truth; test: extrapolated part solved from the true state at the split")

    def true_field(self) -> TrueField:
        d = self.cfg.dataset
        return TrueField(str(d.system), int(d.seed))


def build(cfg, device):
    if cfg.dataset.system == ANNULI:
        from .annuli import AnnuliTask
        return AnnuliTask(cfg, device)
    if cfg.dataset.system == CROSSING:
        from .crossing import CrossingTask
        return CrossingTask(cfg, device)
    return DynamicsTask(cfg, device)


def check(cfg) -> None:
    d, m = cfg.dataset, cfg.model
    choice(d.name, "dataset", ("dynamics",))
    choice(m.name, "model", ("field",))
    choice(d.system, "dataset.system", SYSTEMS + (CROSSING, ANNULI))
    integer(d.n_points, "dataset.n_points", 4)
    integer(d.seed, "dataset.seed", 0)
    number(d.t_start, "dataset.t_start")
    number(d.t_stop, "dataset.t_stop")
    if not d.t_stop > d.t_start:
        raise ConfigError(f"dataset.t_stop={d.t_stop} must be greater than dataset.t_start={d.t_start}")
    number(d.noise_std, "dataset.noise_std", 0)
    number(d.extrap, "dataset.extrap", 0, 1, strict=True)
    if d.extrap >= 1:
        raise ConfigError(f"dataset.extrap={d.extrap} is not allowed: it must be a fraction in (0, 1)")
    from .data import n_train
    integer(d.batch_time, "dataset.batch_time", 2, n_train(d),
            f" (the seen part has {n_train(d)} of dataset.n_points={d.n_points} points)")
    hidden = m.hidden
    if isinstance(hidden, (list, tuple, ListConfig)):
        if not len(hidden):
            raise ConfigError("model.hidden=[] is not allowed: give at least one hidden width, e.g. [50]")
        for h in hidden:
            integer(h, "model.hidden entry", 1)
    else:
        integer(hidden, "model.hidden", 1)
    choice(m.activation, "model.activation", tuple(ACTIVATIONS))
    integer(m.get("augment_dim", 0), "model.augment_dim", 0)
