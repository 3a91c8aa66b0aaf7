"""The spirals family's evaluation: the hold-last calibration, the horizon and spread RMSEs, and the plain RNN
rolled out at the cadence it was trained on."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from node_cli.families.spirals.models import RNNBaseline
from node_cli.families.spirals.task import hold_last, horizons, training_cadence


def test_hold_last_repeats_the_last_observation_and_is_exact_on_a_constant_path():
    x = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[5.0, 5.0], [7.0, -1.0]]])        # [B=2, n_obs=2, 2]
    truth = torch.tensor([[[2.0, 3.0]] * 4, [[7.0, -1.0]] * 4])                       # stays where it was seen
    held = hold_last(x, truth)
    assert held.shape == truth.shape and torch.equal(held, truth)                    # RMSE 0 on this trajectory
    moved = truth + torch.tensor([0.0, 1.0])                                          # every point 1 away in y
    assert torch.sqrt(((hold_last(x, moved) - moved) ** 2).mean()).item() == pytest.approx(math.sqrt(0.5))


def test_horizon_rmses_against_a_hand_computation():
    truth = torch.zeros(1, 60, 2)
    pred = torch.zeros(1, 60, 2)
    pred[0, :10, 0] = 1.0          # error 1 in x on the first 10 points
    pred[0, 10:25, 0] = 2.0        # error 2 on the next 15
    out = horizons(pred, truth)
    # over (points x 2 coordinates): h10: 10 squared errors of 1 among 20 values; h25: + 15 of 4 among 50
    assert out["test_rmse_h10"] == pytest.approx(math.sqrt(10 / 20))
    assert out["test_rmse_h25"] == pytest.approx(math.sqrt((10 + 60) / 50))
    assert out["test_rmse_h50"] == pytest.approx(math.sqrt((10 + 60) / 100))
    assert horizons(pred[:, :20], truth[:, :20])["test_rmse_h25"] is None          # fewer points than the horizon


class Drift(RNNBaseline):
    """An RNN-shaped model whose one-step prediction is its input plus (1, 0): one unit per step it takes."""

    def step(self, x, gaps, h=None):
        return x + torch.tensor([1.0, 0.0]), torch.zeros_like(x), h


def test_the_plain_rnn_is_rolled_out_at_its_training_cadence_and_interpolated():
    t_train = torch.tensor([[0.0, 0.3, 0.6, 0.9], [0.0, 0.2, 0.4, 0.6]])
    assert training_cadence(t_train) == pytest.approx(0.25)                          # mean of the 6 gaps
    model = Drift(OmegaConf.create(dict(name="rnn", cell="rnn", hidden=3)))
    model.cadence.fill_(0.25)
    x = torch.tensor([[[0.0, 0.0], [4.0, 2.0]]])                                    # last observation at t = 1
    t = torch.tensor([[0.5, 1.0]])
    t_out = torch.tensor([1.125, 1.5, 2.0])
    pred = model.forecast(x, t, t_out)
    # one step per 0.25 after t = 1: x = 4 + (t - 1) / 0.25, linear in between; y stays 2
    expected = torch.tensor([[[4.5, 2.0], [6.0, 2.0], [8.0, 2.0]]])
    torch.testing.assert_close(pred, expected)
    model.time_input = True                                                         # rnn_dt: one step per target
    assert model.forecast(x, t, t_out)[0, :, 0].tolist() == [5.0, 6.0, 7.0]


def test_table2_spread():
    from pathlib import Path

    from node_cli.core.runs import Run
    from node_cli.families.spirals.report import spread

    runs = [Run(Path(f"r{i}"), summary={"test_rmse": v}) for i, v in enumerate((1.0, 2.0, 3.0))]
    assert spread(runs, "test_rmse") == pytest.approx(1.0)                   # sample sd of 1, 2, 3
    assert spread(runs[:1], "test_rmse") is None


def test_table2_comparisons_pair_seeds_and_say_which_ordering_is_established(tmp_path):
    """Three seeds on one data set: the latent ODE 0.2 below the RNN on every seed (established, paired, zero
    spread of the differences), and against the time-gap RNN once above, once below (not established)."""
    from pathlib import Path

    from node_cli.core.page import Page
    from node_cli.core.runs import Run
    from node_cli.families.spirals.report import comparisons

    def runs(model, rmse):
        return [Run(Path(f"{model}{s}"), cfg={"seed": s, "dataset": {"seed": 0}, "model": {"name": model}},
                    summary={"test_rmse": v, "test_rmse_traj_mean": v / 2, "test_rmse_h10": 0.1,
                             "test_rmse_hold_last": 2.3, "device_name": "cpu X", "threads": 1}, status="ok")
                for s, v in enumerate(rmse)]

    cells = {("latent_ode", 30): runs("latent_ode", (0.5, 0.9, 0.7)), ("rnn", 30): runs("rnn", (0.7, 1.1, 0.9)),
             ("rnn_dt", 30): runs("rnn_dt", (0.3, 1.2, 0.8))}
    page = Page(tmp_path, [tmp_path], [], [], lambda r: None, lambda r: True)
    comparisons(page, cells, [30])
    rows = {tuple(line.split(" | ")[1:4]): line for line in page.md if line.startswith("| 30/100")}
    rnn = rows[("Latent ODE", "RNN", "test_rmse")]
    assert "-0.2000 [-0.2000, -0.2000]" in rnn and "established: A lower (interval below 0; paired, n = 3)" in rnn
    assert "0.7000 ± 0.2000 (3 seeds)" in rnn
    gaps = rows[("Latent ODE", "RNN + time gaps", "test_rmse")]   # differences 0.2, -0.3, -0.1
    assert "not established: the interval includes 0" in gaps
    assert ("Latent ODE", "RNN", "test_rmse_traj_mean") in rows and ("Latent ODE", "RNN", "test_rmse_h10") in rows
    hold = rows[("Latent ODE", "hold the last observation", "test_rmse vs test_rmse_hold_last")]
    assert "-1.6000" in hold and "established" in hold
    assert any("cpu X; threads 1" in line and "seeds 0, 1, 2" in line for line in page.md)
