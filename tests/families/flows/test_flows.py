"""2-D flows: exact log-densities of the CNF and the planar NF against brute force, invertibility, the data and
energies, bad input, and tiny end-to-end runs of every flow experiment (files, figures, summary keys)."""
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from node_cli.cli import main, precheck
from node_cli.core.checks import ConfigError
from node_cli.families.flows import data as toy2d
from node_cli.families.flows.models import FRACTIONS, CNF, PlanarField, PlanarLayer, PlanarNF, log_normal, pull, push


@pytest.fixture
def random_cnf(solver_cfg):
    """A maker of small CNFs whose flow is far from the identity (hypernetwork output weights scaled up), solved by
    dopri5 without the adjoint at rtol = atol = 1e-7 unless `kw` says otherwise."""
    def make(dtype=torch.float64, **kw):
        return _random_cnf(solver_cfg(**{"rtol": 1e-7, "atol": 1e-7, "adjoint": False, **kw}), dtype)

    return make


def _random_cnf(solver, dtype):
    torch.manual_seed(0)
    cnf = CNF(width=4, hidden=8, t1=1.0, base_std=1.0, solver_cfg=solver).to(dtype)
    with torch.no_grad():
        cnf.block.field.field.hyper.net[-1].weight.mul_(8.0)
        cnf.block.field.field.hyper.net[-1].bias.normal_(0, 1.5)
    return cnf


def random_nf(generative, depth=6, dtype=torch.float64):
    torch.manual_seed(1)
    return PlanarNF(depth, base_std=1.0, generative=generative, init_std=1.0).to(dtype)


POINTS = torch.tensor([[0.3, -0.4], [1.2, 0.8], [-1.5, 0.2], [0.0, 2.0]], dtype=torch.float64)


# ------------------------------------------------------------------------------------------ log-densities
def test_closed_form_trace_matches_autograd():
    field = PlanarField(width=5, hidden=8).double()
    z = POINTS.clone().requires_grad_(True)
    t = torch.tensor(0.3, dtype=torch.float64)
    dz, neg_trace = field(t, (z, None))
    exact = torch.stack([torch.autograd.grad(dz[i, k], z, retain_graph=True)[0][i, k]
                         for i in range(len(z)) for k in range(2)]).view(-1, 2).sum(1)
    torch.testing.assert_close(-neg_trace[:, 0], exact)


def test_cnf_density_integrates_to_one(random_cnf):
    cnf = random_cnf(dtype=torch.float32, rtol=1e-5, atol=1e-5)
    axis = torch.linspace(-7, 7, 141)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        log_p = cnf.log_prob(grid)
    mass = log_p.exp().sum().item() * (axis[1] - axis[0]).item() ** 2
    assert mass == pytest.approx(1.0, abs=0.02)
    # the flow really moves mass: the learned density is far from the base density
    assert (log_p.exp() - log_normal(grid, 1.0).exp()).abs().max().item() > 0.05


def test_cnf_log_density_matches_jacobian_determinant(random_cnf):
    cnf = random_cnf()

    def to_base(x):   # the solved map from data (t1) back to the base (t0)
        return cnf.transport(x, [cnf.t1, 0.0])[0][-1]

    for x in POINTS:
        jac = torch.autograd.functional.jacobian(lambda p: to_base(p[None])[0], x)
        brute = log_normal(to_base(x[None]), 1.0) + torch.linalg.det(jac).abs().log()
        with torch.no_grad():
            assert cnf.log_prob(x[None]).item() == pytest.approx(brute.item(), abs=1e-5)
    # and the map is far from volume-preserving, so the check has teeth
    with torch.no_grad():
        assert (cnf.log_prob(POINTS) - log_normal(to_base(POINTS), 1.0)).abs().max().item() > 0.1


def newton_preimage(f, x, iters=100):
    """The z with f(z) = x, by damped Newton steps on the residual with autograd Jacobians: a generic root-finder,
    independent of any inverse the model has; started from x itself."""
    z = x.clone()
    res = f(z) - x
    for _ in range(iters):
        if res.abs().max() < 1e-13:
            break
        step = torch.linalg.solve(torch.autograd.functional.jacobian(f, z), res)
        lam = 1.0
        while lam > 1e-6:
            trial = z - lam * step
            trial_res = f(trial) - x
            if trial_res.norm() < res.norm():
                break
            lam /= 2
        z, res = trial, trial_res
    assert res.abs().max() < 1e-12, f"Newton did not converge: residual {res.abs().max().item():.2e}"
    return z


@pytest.mark.parametrize("generative", [True, False])
def test_nf_log_density_matches_jacobian_determinant(generative):
    nf = random_nf(generative)
    forward = lambda p: push(nf.layers, p[None])[0][0]   # noqa: E731 - the layers in their forward direction
    for x in POINTS:
        if generative:   # log q(x) = log N(z) - log|det d push/dz| at the z with push(z) = x, found by Newton
            z = newton_preimage(forward, x)
            torch.testing.assert_close(forward(z), x, rtol=0, atol=1e-12)
            assert (z - x).abs().max() > 0.1                       # the flow moves this point: a real inverse
            jac = torch.autograd.functional.jacobian(forward, z)
            brute = log_normal(z[None], 1.0) - torch.linalg.det(jac).abs().log()
        else:            # log p(x) = log N(push(x)) + log|det d push/dx|
            jac = torch.autograd.functional.jacobian(forward, x)
            brute = log_normal(push(nf.layers, x[None])[0], 1.0) + torch.linalg.det(jac).abs().log()
        assert nf.log_prob(x[None]).item() == pytest.approx(brute.item(), abs=1e-6)


def test_cnf_density_at_intermediate_times_is_normalised_and_starts_at_the_base(random_cnf):
    cnf = random_cnf(dtype=torch.float32, rtol=1e-5, atol=1e-5)
    axis = torch.linspace(-6, 6, 241)                               # fine enough for the peaked late stages
    cell = (axis[1] - axis[0]).item() ** 2
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    z0 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    stages = cnf.stages(z0, grid)
    assert len(stages) == len(FRACTIONS)
    torch.testing.assert_close(stages[0][0], z0)
    torch.testing.assert_close(stages[0][1], log_normal(grid, 1.0))
    for f, (x, log_p) in zip(FRACTIONS, stages):
        density = log_p.exp()
        assert density.sum().item() * cell == pytest.approx(1.0, abs=0.01), f"mass at fraction {f}"
        # the density is that of the samples pushed to the same time: the grid's mean is theirs (MC error ~0.015)
        torch.testing.assert_close((density[:, None] * grid).sum(0) * cell, x.mean(0), rtol=0, atol=0.05)
    # the stages really differ: the flow moves mass between the base and the end
    assert all((b[1].exp() - a[1].exp()).abs().max() > 0.1 for a, b in zip(stages, stages[1:]))
    with torch.no_grad():
        torch.testing.assert_close(stages[-1][0], cnf.sample(z0)[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(stages[-1][1], cnf.log_prob(grid), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ invertibility
def test_planar_layer_constraint_keeps_it_invertible():
    layer = PlanarLayer().double()
    with torch.no_grad():
        layer.w.copy_(torch.tensor([0.7, -0.2]))
        layer.u.copy_(-4.0 * layer.w / (layer.w @ layer.w))   # w.u = -4: not invertible without the constraint
        layer.b.fill_(0.3)
    assert (layer.w @ layer.u).item() == pytest.approx(-4.0)
    assert (layer.w @ layer.u_hat()).item() > -1
    z = 6 * torch.rand(2000, 2, dtype=torch.float64) - 3
    with torch.no_grad():
        y, logdet = layer(z)
        assert torch.isfinite(logdet).all()
        assert (1 + (1 - torch.tanh(z @ layer.w + layer.b) ** 2) * (layer.w @ layer.u_hat()) > 0).all()
        torch.testing.assert_close(layer.inverse(y), z, rtol=0, atol=1e-9)


def test_nf_stays_invertible_after_aggressive_training():
    nf = random_nf(generative=True, depth=8, dtype=torch.float32)
    opt = torch.optim.Adam(nf.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        x, log_q = nf.sample(torch.randn(128, 2, generator=g))
        loss = (log_q + toy2d.energy("u3", x)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for layer in nf.layers:
        assert (layer.w @ layer.u_hat()).item() > -1
    z = torch.randn(500, 2, generator=g)
    with torch.no_grad():
        x, log_q = nf.sample(z)
        assert torch.isfinite(log_q).all()
        torch.testing.assert_close(pull(nf.layers, x)[0], z, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ round trips
def test_cnf_sample_then_log_density_round_trip(random_cnf):
    cnf = random_cnf(dtype=torch.float32, rtol=1e-6, atol=1e-6)
    z0 = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, log_q = cnf.sample(z0)
        torch.testing.assert_close(cnf.log_prob(x), log_q, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(cnf.transport(x, [1.0, 0.0])[0][-1], z0, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("generative", [True, False])
def test_nf_sample_then_log_density_round_trip(generative):
    nf = random_nf(generative)
    z0 = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, log_q = nf.sample(z0)
        assert (x - z0).abs().max() > 0.1
        torch.testing.assert_close(nf.log_prob(x), log_q, rtol=1e-7, atol=1e-7)


def test_cnf_adjoint_gradient_matches_backprop(random_cnf):
    x = toy2d.circles(64, torch.Generator().manual_seed(0)).double()
    grads = []
    for adjoint_norm, adjoint in [("default", False), ("default", True), ("seminorm", True)]:
        cnf = random_cnf(adjoint=adjoint, adjoint_norm=adjoint_norm, rtol=1e-8, atol=1e-8)
        (-cnf.log_prob(x).mean()).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in cnf.parameters()]))
        assert (cnf.block.nfe_backward > 0) == adjoint
    assert grads[0].abs().max() > 1e-2
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[2], grads[0], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ data, energies
def test_data_generators_are_seeded_and_shaped():
    a = toy2d.circles(4000, torch.Generator().manual_seed(3), noise=0.0)
    b = toy2d.circles(4000, torch.Generator().manual_seed(3), noise=0.0)
    assert torch.equal(a, b) and a.shape == (4000, 2)
    radii = a.norm(dim=1)
    assert torch.allclose(radii[radii > 0.75], torch.tensor(1.0)) and torch.allclose(radii[radii < 0.75], torch.tensor(0.5))
    assert 0.45 < (radii > 0.75).float().mean() < 0.55
    m = toy2d.moons(4000, torch.Generator().manual_seed(3), noise=0.0)
    assert m.mean(0).abs().max() < 0.1          # centred
    assert not torch.equal(m, toy2d.moons(4000, torch.Generator().manual_seed(4), noise=0.0))


def test_energies_at_known_points_and_normalisers():
    z = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    assert toy2d.energy("u1", z)[0].item() == pytest.approx(0.0, abs=1e-6)        # on the ring, at a mode
    assert toy2d.energy("u2", z)[1].item() == pytest.approx(0.0, abs=1e-6)        # on the sine: z2 = sin(pi/2)
    assert toy2d.energy("u2", torch.tensor([[6.0, 0.0]])).item() == pytest.approx(0.5 * (2 / 0.3) ** 2)  # wall
    for name in toy2d.TARGETS:   # quadrature has converged: a coarser, smaller grid gives the same log Z
        assert toy2d.log_normalizer(name) == pytest.approx(toy2d.log_normalizer(name, 6.0, 301), abs=2e-3)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args, message", [
    (["experiment=density_cnf", "dataset.target=u5"], "unknown dataset.target 'u5'"),
    (["experiment=cnf_circles", "dataset=mnist"], "unknown dataset 'mnist'"),
    (["experiment=cnf_circles", "dataset=spirals"], "unknown dataset 'spirals'"),
    (["experiment=density_cnf", "model.width=0"], "model.width=0 is not allowed"),
    (["experiment=nf_moons", "model.depth=0"], "model.depth=0 is not allowed"),
    (["experiment=density_nf", "model.depth=2.5"], "model.depth=2.5 is not allowed"),
    (["experiment=cnf_moons", "trainer.max_steps=null"], "trainer.max_steps must be set"),
    (["-m", "experiment=density_cnf", "model.width=2,0"], "model.width=0 is not allowed"),
])
def test_bad_input_is_one_clear_error(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        precheck(args)


def test_bad_input_from_the_command_line_exits_non_zero(node_run, tmp_path):
    out = node_run("experiment=density_nf", "dataset.target=banana", f"hydra.run.dir={tmp_path}/r")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "node-run: error: unknown dataset.target 'banana'; accepted: u1, u2, u3, u4"]
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------ end to end
TINY = ["trainer.max_steps=3", "trainer.eval_every=2", "trainer.eval_limit=50", "trainer.batch_size=64",
        "dataset.test_size=100", "trainer.progress=false", "solver.rtol=1e-3", "solver.atol=1e-3"]


@pytest.mark.parametrize("experiment, extra, metric", [
    ("cnf_circles", ["model.width=8", "solver.adjoint_norm=seminorm", "model.eval_tol=1e-3"], "test_nll"),
    ("cnf_moons", ["model.width=8", "solver.adjoint=false", "model.eval_tol=null"], "test_nll"),
    ("nf_circles", ["model.depth=8"], "test_nll"),
    ("nf_moons", ["model.depth=8"], "test_nll"),
    ("density_cnf", ["model.width=4", "dataset.target=u3", "model.eval_tol=1e-3"], "test_kl"),
    ("density_nf", ["model.depth=4", "dataset.target=u4"], "test_kl"),
])
def test_tiny_run_writes_its_files_and_figures(tmp_path, assert_png, experiment, extra, metric):
    out = tmp_path / "run"
    main([f"experiment={experiment}", *TINY, *extra, f"hydra.run.dir={out}"])
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "ok" and s["steps"] == 3 and s["task"] == "flows"
    assert math.isfinite(s[metric]) and s["test_examples"] == 100
    assert sorted(s["figures"]) == ["density.png", "flow.png"]
    for name in s["figures"]:
        assert_png(out / name, min_height=200, min_width=400)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3] and rows[-1]["final"]
    cfg = OmegaConf.load(out / ".hydra" / "config.yaml")
    assert cfg.task == "flows" and cfg.name == experiment
    if experiment.startswith(("cnf", "density_cnf")):
        assert s["nfe_forward"] > 0 and cfg.model.width == int(extra[0].split("=")[1])
        assert (s["nfe_backward"] > 0) == cfg.solver.adjoint
    else:
        assert s["nfe_forward"] == 0 and s["nfe_backward"] == 0 and cfg.model.depth == int(extra[0].split("=")[1])
    if metric == "test_kl":
        assert s["test_kl"] == pytest.approx(s["test_kl_unnormalized"] + s["log_z"])
        assert cfg.dataset.target == extra[1].split("=")[1]
        assert s["test_kl"] > 0    # a true KL divergence, far from zero after three steps


def test_width_sweep_is_a_hydra_multirun(tmp_path):
    main(["-m", "experiment=density_cnf", "model.width=2,3", *TINY, "trainer.max_steps=2", "model.eval_tol=1e-3",
          f"hydra.sweep.dir={tmp_path}/sweep"])
    widths = []
    for job in sorted((tmp_path / "sweep").glob("[0-9]*")):
        assert json.loads((job / "summary.json").read_text())["status"] == "ok"
        widths.append(OmegaConf.load(job / ".hydra" / "config.yaml").model.width)
    assert widths == [2, 3]


def test_true_data_density_is_normalised_and_is_the_nll_floor():
    axis = torch.linspace(-2.5, 2.5, 101)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    for name in toy2d.DATASETS:
        density = toy2d.data_log_density(name, grid, noise=0.1, angles=256).exp()
        assert density.sum().item() * (axis[1] - axis[0]).item() ** 2 == pytest.approx(1.0, abs=1e-3)
        x = toy2d.sample_data(name, 3000, torch.Generator().manual_seed(0), noise=0.1)
        floor = -toy2d.data_log_density(name, x, noise=0.1, angles=256).mean()
        wrong = -toy2d.data_log_density(name, x, noise=0.2, angles=256).mean()   # a mismatched density is worse
        assert floor < wrong - 0.1
