"""The dynamics family: each system's data against its closed form or an independent solve, the evaluation
protocol against an independent computation, bad input, and a tiny run of each experiment with its figures."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torchdiffeq
from omegaconf import OmegaConf

from node_cli.core.checks import ConfigError
from node_cli.core.solve import ODEBlock
from node_cli.families.dynamics.data import LINEAR, LV, START, SYSTEMS, TrueField, generate, matrix
from node_cli.families.dynamics.models import DynamicsModel
from node_cli.families.dynamics.plots import trajectories
from node_cli.families.dynamics.task import DynamicsTask, check

SMALL = ["dataset.n_points=200", "trainer.progress=false"]


@pytest.mark.parametrize("system", LINEAR)
def test_linear_systems_match_the_matrix_exponential(compose, system):
    d = compose(f"experiment=dynamics_{system}", "dataset.n_points=300").dataset
    data = generate(d)
    A = matrix(system, d.seed)
    y0 = torch.tensor(START[system], dtype=torch.float64)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(A * (t - data.t[0])) for t in data.t])
    assert data.truth.shape == (300, 2) and data.t[0] == d.t_start and data.t[-1] == d.t_stop
    assert ((data.truth - exact).norm(dim=1) / exact.norm(dim=1)).max() < 1e-7, system
    assert exact.abs().max() > 0.5                        # not a trajectory that has died out


def test_each_systems_field_has_its_published_parameters():
    assert torch.equal(matrix("spiral"), torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64))
    assert torch.equal(matrix("linear_lv"), torch.tensor([[0.0, -3.0], [1.5, 0.0]], dtype=torch.float64))
    assert torch.equal(matrix("random", 3), torch.randn(2, 2, generator=torch.Generator().manual_seed(3),
                                                         dtype=torch.float64) / 2)
    assert not torch.equal(matrix("random", 3), matrix("random", 4))
    y = torch.tensor([[0.7, -1.3]], dtype=torch.float64)
    assert torch.allclose(TrueField("cubic")(0.0, y), y ** 3 @ matrix("cubic"))
    x, z = 0.7, -1.3
    assert torch.allclose(TrueField("lotka_volterra")(0.0, y)[0],
                          torch.tensor([1.5 * x - x * z, -3 * z + x * z], dtype=torch.float64))
    y0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    A2 = torch.tensor([[-0.1, -0.5], [0.5, -0.1]], dtype=torch.float64)
    B2 = torch.tensor([[0.2, 1.0], [-1.0, 0.2]], dtype=torch.float64)
    s = torch.sigmoid((y[0] * y0).sum())
    assert torch.allclose(TrueField("switching")(0.0, y)[0], s * A2 @ (y[0] - y0) + (1 - s) * B2 @ (y[0] + y0))
    net = TrueField("mlp", 0).net
    assert [m.weight.shape for m in net if isinstance(m, torch.nn.Linear)] == [(25, 2), (50, 25), (10, 50), (2, 10)]
    assert all(m.bias is None for m in net if isinstance(m, torch.nn.Linear))
    assert torch.allclose(TrueField("mlp", 0)(2.0, y), net(2.0 * y))      # a network of y t
    assert not torch.equal(TrueField("mlp", 1).net[0].weight, net[0].weight)


def test_lotka_volterra_conserves_its_first_integral(compose):
    data = generate(compose("experiment=dynamics_lotka_volterra").dataset)
    a, b, c, d = LV["a"], LV["b"], LV["c"], LV["d"]
    x, y = data.truth[:, 0], data.truth[:, 1]
    V = d * x - c * torch.log(x) + b * y - a * torch.log(y)
    assert (V - V[0]).abs().max() < 1e-7
    assert x.max() - x.min() > 0.5                        # it does oscillate


@pytest.mark.parametrize("system", ["cubic", "switching", "mlp"])
def test_nonlinear_systems_match_a_solve_at_another_tolerance_and_method(compose, system):
    d = compose(f"experiment=dynamics_{system}", "dataset.n_points=200").dataset
    data = generate(d)
    ref = torchdiffeq.odeint(TrueField(system, d.seed), torch.tensor(START[system], dtype=torch.float64),
                             data.t, method="dopri8", rtol=1e-12, atol=1e-12)
    assert (data.truth - ref).abs().max() < 1e-6
    assert data.truth.std(0).min() > 0.05                 # it moves in both coordinates


def test_noise_and_split(compose):
    d = compose("experiment=dynamics_spiral", "dataset.noise_std=0.1", "dataset.n_points=500").dataset
    data = generate(d)
    assert data.n_train == 400
    assert abs((data.observed - data.truth).std().item() - 0.1) < 0.01
    assert torch.equal(generate(d).observed, data.observed)
    clean = generate(OmegaConf.merge(d, dict(noise_std=0.0)))
    assert torch.equal(clean.observed, clean.truth) and torch.equal(clean.truth, data.truth)


def test_training_windows_never_touch_the_extrapolated_part(compose):
    cfg = compose("experiment=dynamics_spiral", *SMALL, "dataset.batch_time=10", "trainer.batch_size=500")
    task = DynamicsTask(cfg, torch.device("cpu"))
    y0, t, y = task.batch()
    assert y0.shape == (500, 2) and t.shape == (10,) and y.shape == (10, 500, 2)
    seen = task.data.observed[: task.data.n_train]
    # every window point is a seen point, and the windows reach the last seen point at most
    dist = torch.cdist(y.reshape(-1, 2), task.data.observed).argmin(1)
    assert int(dist.max()) == task.data.n_train - 1 and int(dist.min()) == 0
    assert torch.equal(y[0], y0) and torch.isin(y0, seen).all()


def test_test_mse_of_the_true_field_is_zero_and_matches_an_independent_computation(compose, solver_cfg):
    cfg = compose("experiment=dynamics_switching", *SMALL)
    task = DynamicsTask(cfg, torch.device("cpu"))
    exact = solver_cfg(rtol=1e-8, atol=1e-9, adjoint=False)
    task.model.ode = ODEBlock(task.true_field(), exact)
    result = task.evaluate(None)
    assert result["test_mse"] < 1e-10 and result["train_mse"] < 1e-10
    # an untrained field: test_mse is the MSE of its own solve from the true state at the split
    task = DynamicsTask(cfg, torch.device("cpu"))
    result = task.evaluate(None)
    k, data, field = task.data.n_train, task.data, task.model.ode.field.field
    with torch.no_grad():
        ext = torchdiffeq.odeint(field, data.truth[k - 1], data.t[k - 1:], rtol=1e-7, atol=1e-9)[1:]
        seen = torchdiffeq.odeint(field, data.truth[0], data.t[:k], rtol=1e-7, atol=1e-9)
    assert math.isclose(result["test_mse"], ((ext - data.truth[k:]) ** 2).mean().item(), rel_tol=1e-3)
    assert math.isclose(result["train_mse"], ((seen - data.truth[:k]) ** 2).mean().item(), rel_tol=1e-3)
    assert result["test_mse"] > 1e-3 and len(task.frames) == 1


def test_the_field_shapes_and_augmentation(compose, solver_cfg):
    m = compose("experiment=dynamics_mlp", "model.hidden=[150,50,50]").model
    model = DynamicsModel(m, solver_cfg(adjoint=False))
    assert sum(p.numel() for p in model.parameters()) == (2 * 150 + 150) + (150 * 50 + 50) + (50 * 50 + 50) + (50 * 2 + 2)
    aug = DynamicsModel(OmegaConf.merge(m, dict(hidden=[50], augment_dim=3)), solver_cfg(adjoint=False))
    assert sum(p.numel() for p in aug.parameters()) == (5 * 50 + 50) + (50 * 5 + 5)
    y = aug(torch.randn(7, 2), torch.linspace(0, 1, 4))
    assert y.shape == (4, 7, 2) and aug.field_at(torch.zeros(3, 3, 2)).shape == (3, 3, 2)


@pytest.mark.parametrize("override, message", [
    ("dataset.system=pendulum", r"unknown dataset.system 'pendulum'; accepted: spiral, cubic"),
    ("dataset.noise_std=-0.1", r"dataset.noise_std=-0.1 is not allowed: it must be a number >= 0"),
    ("dataset.extrap=1.5", r"dataset.extrap=1.5 is not allowed"),
    ("dataset.batch_time=900", r"dataset.batch_time=900 is not allowed: .*seen part has 800"),
    ("model.activation=sine", r"unknown model.activation 'sine'"),
    ("model.hidden=[]", r"model.hidden=\[\] is not allowed"),
    ("model.augment_dim=-1", r"model.augment_dim=-1 is not allowed"),
])
def test_bad_input_is_one_line(compose, node_run, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        check(compose("experiment=dynamics_spiral", override))
    assert "\n" not in str(err.value)


def test_bad_input_from_the_cli_is_one_line(node_run, tmp_path):
    out = node_run("experiment=dynamics_spiral", "dataset.system=pendulum", f"hydra.run.dir={tmp_path}/r")
    assert out.returncode != 0
    assert "unknown dataset.system 'pendulum'" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("system", SYSTEMS)
def test_a_tiny_run_of_each_experiment_writes_every_figure(node_run, tmp_path, assert_png, system):
    run_dir = tmp_path / system
    out = node_run(f"experiment=dynamics_{system}", "trainer=quick", "trainer.max_steps=6", "trainer.eval_every=2",
                   "dataset.n_points=120", "trainer.progress=false", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 6 and math.isfinite(summary["test_mse"])
    assert summary["objective"] == "test_mse" and summary["objective_value"] == summary["test_mse"]
    for name in ("phase.png", "timeseries.png", "vector_field.png"):
        assert_png(run_dir / name)
    evaluations = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [row for row in evaluations if "test_mse" in row]
    assert len(evaluations) == 3                          # after steps 2 and 4, and the final one
    from PIL import Image
    with Image.open(run_dir / "training.gif") as gif:
        assert gif.n_frames == len(evaluations) == summary["gif_frames"]
        assert gif.size[0] >= 200 and gif.size[1] >= 200
    if system == "spiral":      # node-report's section: the systems x fields table and the copied phase figure
        import subprocess
        import sys
        rep = subprocess.run([sys.executable, "-c", "import sys; from node_cli.report.cli import main; "
                              "sys.exit(main(sys.argv[1:]))", str(tmp_path), "--out", str(tmp_path / "report")],
                             capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert rep.returncode == 0, rep.stderr[-3000:]
        md = (tmp_path / "report" / "report.md").read_text()
        section = md[md.index("## Dynamics"):]
        row = next(line for line in section.splitlines() if line.startswith("| spiral | 2-50-2 tanh |"))
        assert row.split("|")[3].strip() == format(summary["test_mse"], ".3g")
        copied = [f for f in (tmp_path / "report").iterdir() if f.name.startswith("dynamics_spiral_")]
        assert len(copied) == 1 and copied[0].read_bytes() == (run_dir / "phase.png").read_bytes()


def test_the_phase_plot_draws_the_true_and_the_learned_trajectories(compose, solver_cfg):
    cfg = compose("experiment=dynamics_spiral", *SMALL)
    task = DynamicsTask(cfg, torch.device("cpu"))
    tr = trajectories(task)
    k = task.data.n_train
    with torch.no_grad():
        seen = task.model(task.data.truth[0], task.data.t[:k])
        ext = task.model(task.data.truth[k - 1], task.data.t[k - 1:])[1:]
    assert np.allclose(tr["learned"], torch.cat([seen, ext]).numpy(), atol=1e-6)
    assert np.allclose(tr["truth"], task.data.truth.numpy()) and tr["split"] == k
    # the true field, not the learned one, gives the truth
    task.model.ode = ODEBlock(task.true_field(), solver_cfg(rtol=1e-8, atol=1e-9, adjoint=False))
    assert np.abs(trajectories(task)["learned"] - tr["truth"]).max() < 1e-4


def test_anode_crossing_plain_cannot_fit_and_augmented_does(node_run, tmp_path, assert_png):
    """g(1) = -1, g(-1) = 1: a plain neural ODE's trajectories cannot cross (MSE stays near 1), one augmented
    channel lets them pass each other (MSE near 0), at the same small budget."""
    results = {}
    for aug in (0, 1):
        run_dir = tmp_path / f"aug{aug}"
        out = node_run("experiment=anode_crossing", f"model.augment_dim={aug}", "trainer.epochs=60",
                       "trainer.eval_every=30", "trainer.progress=false", f"hydra.run.dir={run_dir}")
        assert out.returncode == 0, out.stderr[-3000:]
        results[aug] = json.loads((run_dir / "summary.json").read_text())
        assert_png(run_dir / "trajectories.png")
    plain, augmented = results[0], results[1]
    assert plain["test_mse"] > 0.9                                    # the order of 1 and -1 is kept
    assert plain["x1_from_plus_one"] >= plain["x1_from_minus_one"]
    assert augmented["test_mse"] < 0.01
    assert augmented["x1_from_plus_one"] < 0 < augmented["x1_from_minus_one"]
    # the augmented field maps 2 -> 2 (hidden 32): (2*32 + 32) + (32*2 + 2) parameters, the plain one 1 -> 1
    assert augmented["n_parameters_field"] == 162 and plain["n_parameters_field"] == (32 + 32) + (32 + 1)


def test_anode_annuli_plain_flow_cannot_separate_and_augmented_does(node_run, tmp_path, assert_png):
    """The 2-D version: after 200 full-batch steps the plain flow is still far from the labels (it would have to
    tear the plane), the augmented one is close; both write the before/after figure."""
    from node_cli.families.dynamics.annuli import sample

    x, y = sample(100, torch.Generator().manual_seed(0))
    r = x.norm(dim=1)
    assert torch.all((y < 0) == (r <= 0.5)) and torch.all((r[y > 0] >= 1.0) & (r[y > 0] <= 1.5))
    mse = {}
    for aug in (0, 1):
        out = tmp_path / f"a{aug}"
        res = node_run("experiment=anode_annuli", f"model.augment_dim={aug}", "trainer.epochs=200",
                       "trainer.eval_every=100", "trainer.progress=false", f"hydra.run.dir={out}")
        assert res.returncode == 0, res.stderr
        summary = json.loads((out / "summary.json").read_text())
        mse[aug] = summary["test_mse"]
        assert_png(out / "annuli.png")
    assert mse[0] > 0.3 and mse[1] < 0.1 and mse[1] < mse[0] / 5
