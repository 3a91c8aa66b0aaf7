"""The spirals task: the latent ODE against RNN baselines on irregularly sampled spirals (paper section 5,
Table 2, Figures 8-9). Models: models.py; data: data.py; figures: plots.py.

Evaluation protocol (all three models): each test trajectory is conditioned on its own `n_obs` noisy observations
inside the window of `n_points`; the model then predicts the `n_extrap` points that follow the window, at the
shared grid times. `test_rmse` is the root-mean-squared error of those predictions against the noise-free
spiral (over trajectories, points and both coordinates). The latent ODE predicts from the posterior mean of z0;
the RNNs roll out by feeding back their predicted means (`rnn` cannot see time: one step per predicted point;
`rnn_dt` gets the true gap, first from its last observation to the first target, then the grid step).

Training: an epoch is one pass over the training split in batches of `trainer.batch_size` (full batch by default:
one iteration per epoch).
"""
from __future__ import annotations

import logging
import math

import torch
from omegaconf import OmegaConf

from ...core.checks import ConfigError, choice, integer, number, positive
from ...core.solve import ODEBlock
from .data import CLOCKWISE, COUNTER_CLOCKWISE, generate, split
from .models import CELLS, MODELS, LatentODE, RNNBaseline, build_model, rmse

REFERENCE_RTOL = 1e-7   # the tight solve that `extrap_solver_error` compares the run's solver settings with


class SpiralTask:
    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        d = cfg.dataset
        train, test = split(generate(d), d.test_fraction)
        logging.getLogger("node_run").info(
            "spirals generated from dataset.seed=%s: %d train / %d test trajectories, %d of %d window points observed",
            d.seed, len(train), len(test), d.n_obs, d.n_points)
        self.train, self.test = train.to(device), test.to(device)
        self.train_x, self.train_t = self.train.observations()
        self.model = build_model(cfg.model, cfg.solver).to(device)
        if isinstance(self.model, RNNBaseline):   # the time step the plain RNN learns: its data's mean gap
            self.model.cadence.fill_(training_cadence(self.train_t))
        self.batch_size = min(int(cfg.trainer.batch_size), len(self.train))
        self.generator = torch.Generator().manual_seed(int(cfg.seed))

    def steps_per_epoch(self) -> int:
        """One pass over the training split: a single iteration at full batch (the default)."""
        return math.ceil(len(self.train) / self.batch_size)

    def generators(self) -> list:
        return [self.generator]

    def train_batches(self, epoch: int):
        if self.batch_size >= len(self.train):
            yield self.train_x, self.train_t
            return
        order = torch.randperm(len(self.train), generator=self.generator).to(self.device)
        for idx in order.split(self.batch_size):
            yield self.train_x[idx], self.train_t[idx]

    def loss(self, batch) -> torch.Tensor:
        return self.model.loss(*batch)

    @torch.no_grad()
    def evaluate(self, limit: int | None) -> dict:
        self.model.eval()
        test = self.test if limit is None else self.test.subset(slice(0, limit))
        x, t = test.observations()
        t_ext, truth = test.extrapolation()
        result = self.model.score(x, t, torch.Generator().manual_seed(int(self.cfg.seed)))
        pred = self.model.forecast(x, t, t_ext)
        t_rec, rec = self.model.reconstruct(x, t)
        idx = torch.searchsorted(test.times, t_rec.contiguous())
        rec_truth = torch.gather(test.truth, 1, idx[..., None].expand(-1, -1, 2))
        self.model.train()
        per_traj = ((pred - truth) ** 2).mean((1, 2))                     # MSE of each trajectory

        def rmse_of(direction):   # RMSE over the trajectories turning one way (None if there are none)
            mse = per_traj[test.direction == direction]
            return mse.mean().sqrt().item() if len(mse) else None

        return dict(test_rmse=rmse(pred, truth), **result, test_recon_rmse=rmse(rec, rec_truth),
                    test_rmse_clockwise=rmse_of(CLOCKWISE), test_rmse_counter_clockwise=rmse_of(COUNTER_CLOCKWISE),
                    test_rmse_median=per_traj.sqrt().median().item(),
                    **horizons(pred, truth), test_rmse_traj_mean=per_traj.sqrt().mean().item(),
                    test_rmse_hold_last=rmse(hold_last(x, truth), truth),
                    test_rmse_window=self.window_rmse(test, x, t),
                    test_trajectories=len(test))

    @torch.no_grad()
    def window_rmse(self, test, x, t):
        """RMSE against the clean spiral at all n_points window times, for a model that predicts at any time
        (the latent ODE); None for the RNNs, which predict only at their observation times (test_recon_rmse)."""
        if not isinstance(self.model, LatentODE):
            return None
        window = test.times[: test.n_points]
        return rmse(self.model.forecast(x, t, window), test.truth[:, : test.n_points])

    def memory_batch(self):
        return self.train_x[: self.batch_size], self.train_t[: self.batch_size]

    def finish(self, run) -> dict:
        from .plots import latent_figure, spirals_figure

        files = [spirals_figure(self, run.path / "spirals.png")]
        extra = {}
        if isinstance(self.model, LatentODE):
            files.append(latent_figure(self, run.path / "latent.png"))
            extra = self.solver_error()
        d = self.cfg.dataset
        return dict(figures=[f.name for f in files], n_obs=int(d.n_obs), n_train=len(self.train),
                    n_test=len(self.test), rmse_target="noise-free spiral at the n_extrap points after the window",
                    **extra)

    @torch.no_grad()
    def solver_error(self, rtol: float = REFERENCE_RTOL) -> dict:
        """How far the run's solver settings are from a tight reference solve on the test extrapolation:
        the RMS difference of the two predictions (small against test_rmse: the tolerance is not the limit)."""
        x, t = self.test.observations()
        t_ext, _ = self.test.extrapolation()
        ref = ODEBlock(self.model.ode.vector_field, OmegaConf.merge(
            self.cfg.solver, dict(method="dopri5", rtol=rtol, atol=rtol / 10, adjoint=False, max_num_steps=None)))
        self.model.eval()
        pred = self.model.forecast(x, t, t_ext)
        exact = self.model.forecast(x, t, t_ext, ode=ref)
        self.model.train()
        return dict(extrap_solver_error=rmse(pred, exact), extrap_solver_error_reference=f"dopri5 rtol {rtol:g}",
                    extrap_nfe_forward_reference=ref.nfe_forward)


def training_cadence(t: torch.Tensor) -> float:
    """The mean gap between consecutive observation times of the training trajectories t [N, n_obs]."""
    return torch.diff(t, dim=1).mean().item()


def hold_last(x: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The calibration forecast: each trajectory's last observation, held at every target time."""
    return x[:, -1:].expand(-1, truth.shape[1], -1)


HORIZONS = (10, 25, 50)


def horizons(pred: torch.Tensor, truth: torch.Tensor) -> dict:
    """test_rmse_hN: the RMSE over the first N extrapolated points (None where there are fewer)."""
    return {f"test_rmse_h{n}": rmse(pred[:, :n], truth[:, :n]) if truth.shape[1] >= n else None for n in HORIZONS}


def check(cfg) -> None:
    d, m = cfg.dataset, cfg.model
    choice(d.name, "dataset", ("spirals",))
    choice(m.name, "model", MODELS)
    for key in ("n_spirals", "n_points", "n_extrap", "n_total"):
        integer(d[key], f"dataset.{key}", 1)
    integer(d.seed, "dataset.seed", 0)
    low = 1 if m.name == "latent_ode" else 2
    why = "" if low == 1 else f"; the {m.name} baseline predicts each observation from the ones before it"
    integer(d.n_obs, "dataset.n_obs", low, int(d.n_points), f" (dataset.n_points={d.n_points}{why})")
    if d.n_total < 2 * d.n_points + d.n_extrap:
        raise ConfigError(f"dataset.n_total={d.n_total} is too small: windows of n_points + n_extrap start at "
                          f"least n_points into the grid, so it must be >= {2 * d.n_points + d.n_extrap}")
    for key in ("t_start", "t_stop", "a", "b", "offset"):
        number(d[key], f"dataset.{key}")
    if not d.t_stop > d.t_start:
        raise ConfigError(f"dataset.t_stop={d.t_stop} must be greater than dataset.t_start={d.t_start}")
    if d.t_start < 0 or d.b <= 0:
        raise ConfigError("dataset.t_start must be >= 0 and dataset.b > 0 (the spirals' radius formulas)")
    number(d.noise_std, "dataset.noise_std", 0)
    number(d.test_fraction, "dataset.test_fraction", 0, 1, strict=True)
    n_test = d.n_spirals - round(d.n_spirals * (1.0 - d.test_fraction))
    if n_test < 1 or n_test >= d.n_spirals:
        raise ConfigError(f"dataset.test_fraction={d.test_fraction} leaves an empty split of "
                          f"{d.n_spirals} spirals; both train and test need at least one")
    if m.name == "latent_ode":
        for key in ("latent_dim", "rnn_hidden", "ode_hidden", "decoder_hidden"):
            integer(m[key], f"model.{key}", 1)
        integer(m.ode_layers, "model.ode_layers", 0)
        positive(m.obs_std, "model.obs_std")
    else:
        integer(m.hidden, "model.hidden", 1)
        choice(m.cell, "model.cell", tuple(CELLS))
