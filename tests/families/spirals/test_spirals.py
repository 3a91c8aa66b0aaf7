"""Spirals, the latent ODE and its RNN baselines: data generation, irregular-time batching, training, the CLI."""
import json
import math
import re

import pytest
import torch
from omegaconf import OmegaConf

from node_cli import cli
from node_cli.core.checks import ConfigError
from node_cli.core.rundir import RunDir, read_metrics
from node_cli.core.train import fit
from node_cli.families.spirals.data import CLOCKWISE, COUNTER_CLOCKWISE, generate, split
from node_cli.families.spirals.models import LatentODE, RNNBaseline
from node_cli.families.spirals.task import SpiralTask, check

TINY = ["dataset.n_spirals=24", "dataset.n_obs=12", "trainer.progress=false"]


@pytest.fixture
def config(compose):
    return compose


def test_generator_shapes_seeding_and_directions(config):
    d = config("experiment=spiral_latent_ode", "dataset.n_spirals=40", "dataset.n_obs=30").dataset
    data = generate(d)
    length = d.n_points + d.n_extrap
    assert data.truth.shape == data.noisy.shape == (40, length, 2) and data.times.shape == (length,)
    assert data.obs_idx.shape == (40, 30) and data.direction.shape == (40,)
    assert int((data.direction == COUNTER_CLOCKWISE).sum()) == 20       # exactly half each way
    # the noise is there and has roughly the configured std
    assert abs((data.noisy - data.truth).std().item() - d.noise_std) < 0.02
    # same seed: same data; another seed: other data
    assert torch.equal(generate(d).noisy, data.noisy)
    other = generate(OmegaConf.merge(d, {"seed": 1}))
    assert not torch.allclose(other.truth, data.truth)
    # n_obs changes only which points are kept, never the spirals or their noise
    fewer = generate(OmegaConf.merge(d, {"n_obs": 10}))
    assert torch.equal(fewer.noisy, data.noisy) and torch.equal(fewer.direction, data.direction)
    # labels match the geometry: the angle around the spiral's centre turns counter-clockwise for label 1
    centre = torch.tensor([[d.offset, 0.0], [-d.offset, 0.0]])[1 - data.direction][:, None]
    rel = data.truth - centre
    cross = rel[:, :-1, 0] * rel[:, 1:, 1] - rel[:, :-1, 1] * rel[:, 1:, 0]
    turns = torch.where(cross.mean(1) > 0, COUNTER_CLOCKWISE, CLOCKWISE)
    assert torch.equal(turns, data.direction)
    train, test = split(data, d.test_fraction)
    assert (len(train), len(test)) == (32, 8)


def test_observations_are_irregular_and_differ_between_trajectories(config):
    d = config("experiment=spiral_latent_ode", "dataset.n_spirals=20", "dataset.n_obs=30").dataset
    data = generate(d)
    x, t = data.observations()
    assert x.shape == (20, 30, 2) and t.shape == (20, 30)
    assert bool((t[:, 1:] > t[:, :-1]).all())                         # sorted, without replacement
    assert int(data.obs_idx.max()) < d.n_points                       # only inside the window
    assert len({tuple(row.tolist()) for row in data.obs_idx}) == 20   # every trajectory its own times
    gaps = torch.diff(t, dim=1)
    assert gaps.max() > 1.5 * gaps.min()                               # irregular within a trajectory
    assert torch.allclose(x, data.noisy[torch.arange(20)[:, None], data.obs_idx])


def test_latent_ode_solves_each_trajectory_at_its_own_times(config):
    cfg = config("experiment=spiral_latent_ode", "dataset.n_spirals=20", "dataset.n_obs=10",
                 "solver.rtol=1e-9", "solver.atol=1e-9")
    torch.manual_seed(0)
    model = LatentODE(cfg.model, cfg.solver)
    data = generate(cfg.dataset)
    _, t = data.observations()
    z0 = torch.randn(len(t), cfg.model.latent_dim)
    with torch.no_grad():
        batched = model.latent_at(z0, t)
        alone = []
        for i in range(len(t)):                                        # one solve per trajectory, from t = 0
            grid = torch.cat([t.new_zeros(1), t[i]]).unique()
            alone.append(model.ode(z0[i:i + 1], grid)[torch.searchsorted(grid, t[i]), 0])
        alone = torch.stack(alone)
        shared = model.latent_at(z0, t[:1].expand_as(t))               # what one grid for all would give
    assert batched.shape == (20, 10, cfg.model.latent_dim)
    assert torch.allclose(batched, alone, atol=1e-5)
    assert not torch.allclose(shared, alone, atol=1e-3)


def test_rnn_dt_sees_the_gaps_and_rnn_does_not(config):
    cfg = config("experiment=spiral_rnn_dt")
    torch.manual_seed(0)
    x, t = torch.randn(3, 8, 2), torch.sort(torch.rand(3, 8), 1).values
    stretched = t * 2
    dt_model, plain = RNNBaseline(cfg.model), RNNBaseline(config("experiment=spiral_rnn").model)
    t_out = torch.linspace(3.0, 4.0, 5)
    with torch.no_grad():
        assert plain.forecast(x, t, t_out).shape == (3, 5, 2)
        assert torch.equal(plain.nll(x, t), plain.nll(x, stretched))
        assert not torch.allclose(dt_model.nll(x, t), dt_model.nll(x, stretched))
        assert not torch.allclose(dt_model.forecast(x, t, t_out), dt_model.forecast(x, t, t_out * 2))


@pytest.mark.parametrize("experiment", ["spiral_latent_ode", "spiral_rnn"])
def test_training_loss_decreases_on_a_tiny_data_set(config, experiment):
    cfg = config(f"experiment={experiment}", *TINY, "trainer=quick")
    torch.manual_seed(0)
    task = SpiralTask(cfg, torch.device("cpu"))
    optimizer = torch.optim.Adam(task.model.parameters(), lr=1e-2)
    batch = next(iter(task.train_batches(0)))
    assert batch[0].shape[0] == len(task.train)                        # full batch
    losses = []
    for _ in range(15):
        torch.manual_seed(1)                                           # same z0 noise each step: a fair comparison
        loss = task.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_an_epoch_is_one_pass_over_the_training_split(config):
    full = SpiralTask(config("experiment=spiral_latent_ode", *TINY), torch.device("cpu"))
    assert full.steps_per_epoch() == 1 and full.cfg.trainer.epochs == 2000       # full batch: one step an epoch
    task = SpiralTask(config("experiment=spiral_rnn", *TINY, "trainer.batch_size=5"), torch.device("cpu"))
    n_train = len(task.train)
    assert task.steps_per_epoch() == math.ceil(n_train / 5) > 1
    batches = list(task.train_batches(0))
    assert len(batches) == task.steps_per_epoch() and sum(len(x) for x, _ in batches) == n_train


@pytest.mark.parametrize("budget, steps", [
    (["trainer.max_steps=6"], 6),                                  # max_steps: the run's length in optimizer steps
    (["trainer.max_steps=null", "trainer.epochs=3"], None),        # else epochs passes over the training split
])
def test_run_length_is_max_steps_else_epochs(config, tmp_path, budget, steps):
    cfg = config("experiment=spiral_rnn", *TINY, "trainer=quick", "trainer.batch_size=5", "trainer.eval_every=null",
                 *budget)
    torch.manual_seed(0)
    task = SpiralTask(cfg, torch.device("cpu"))
    per_epoch = task.steps_per_epoch()
    calls = []
    loss = task.loss
    task.loss = lambda batch: calls.append(len(batch[0])) or loss(batch)
    summary = fit(cfg, task, RunDir(tmp_path), torch.device("cpu"))
    memory_calls = 2                                               # measure_memory: activation bytes, then peak
    expected = steps or 3 * per_epoch
    assert summary["status"] == "ok" and summary["steps"] == expected == len(calls) - memory_calls
    assert summary["epochs"] == expected // per_epoch
    assert read_metrics(tmp_path)[-1]["step"] == expected


@pytest.mark.parametrize("override, message", [
    ("dataset.n_obs=0", "dataset.n_obs=0 is not allowed: it must be an integer in 1..100"),
    ("dataset.n_obs=101", "dataset.n_obs=101 is not allowed: it must be an integer in 1..100"),
    ("model=odenet", "unknown model 'odenet'; accepted: latent_ode, rnn, rnn_dt"),
    ("dataset.test_fraction=1.5", "dataset.test_fraction=1.5 is not allowed"),
])
def test_bad_input_is_one_clear_line(config, tmp_path, capsys, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check(config("experiment=spiral_latent_ode", override))
    with pytest.raises(SystemExit) as exc:
        cli.main(["experiment=spiral_latent_ode", override, f"hydra.run.dir={tmp_path / 'run'}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("node-run: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_rnn_needs_two_observations(config):
    with pytest.raises(ConfigError, match="dataset.n_obs=1 is not allowed"):
        check(config("experiment=spiral_rnn", "dataset.n_obs=1"))
    check(config("experiment=spiral_latent_ode", "dataset.n_obs=1"))   # the latent ODE can take one


@pytest.mark.parametrize("experiment, figures, metric", [
    ("spiral_latent_ode", ["spirals.png", "latent.png"], "test_elbo"),
    ("spiral_rnn", ["spirals.png"], "test_nll"),
    ("spiral_rnn_dt", ["spirals.png"], "test_nll"),
])
def test_tiny_end_to_end_run_writes_its_files(config, tmp_path, assert_png, experiment, figures, metric):
    out = tmp_path / experiment
    cli.main([f"experiment={experiment}", *TINY, "trainer=quick", "trainer.max_steps=4", "trainer.eval_every=2",
              f"hydra.run.dir={out}"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["task"] == "spirals" and summary["steps"] == 4
    for key in ("test_rmse", metric, "test_recon_rmse", "nfe_forward", "nfe_backward", "activation_bytes"):
        assert isinstance(summary[key], float | int), key
    assert summary["test_rmse"] > 0 and summary["n_obs"] == 12 and summary["figures"] == figures
    assert (summary["nfe_forward"] > 0) == (experiment == "spiral_latent_ode")
    if experiment == "spiral_latent_ode":                              # the tolerance check against rtol 1e-7
        assert 0 <= summary["extrap_solver_error"] < 0.1 and summary["extrap_nfe_forward_reference"] > 0
    assert summary["test_rmse_clockwise"] > 0 and summary["test_rmse_counter_clockwise"] > 0
    for name in figures:
        assert_png(out / name, min_height=300, min_width=300)
    assert not (out / "latent.png").exists() or experiment == "spiral_latent_ode"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[-1])["final"] is True
