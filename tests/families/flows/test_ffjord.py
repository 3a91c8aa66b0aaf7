"""FFJORD in the flows family: the toy generators, Hutchinson's trace estimator against the brute-force Jacobian,
the exact log-density against a brute-force change of variables, the RNODE regularisers (zero field, linear field in
closed form), the adjoint, bad input, tiny runs of every ffjord_* experiment, node-bench ffjord and the report."""
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from node_cli.cli import main, precheck
from node_cli.core.checks import ConfigError
from node_cli.core.compose import options
from node_cli.families.flows import toys
from node_cli.families.flows.ffjord import FFJORD, FreeFormField, FreeFormNet, divergence, log_normal, noise_like
from node_cli.families.flows.task import FlowTask

POINTS = torch.tensor([[0.3, -0.4], [1.2, 0.8], [-1.5, 0.2], [0.0, 2.0]], dtype=torch.float64)


def make_ffjord(solver_cfg, trace="exact", dim=2, kinetic=0.0, jacobian=0.0, scale=3.0, **solver):
    """A small FFJORD in float64 whose field is far from zero (weights scaled up), dopri5 without the adjoint at
    rtol = atol = 1e-8 unless `solver` says otherwise."""
    torch.manual_seed(0)
    cfg = solver_cfg(**{"rtol": 1e-8, "atol": 1e-8, "adjoint": False, **solver})
    model = FFJORD(dim, [16, 16], "tanh", 1.0, False, trace, "rademacher", 1.0, cfg, kinetic, jacobian).double()
    with torch.no_grad():
        for layer in model.field.net.layers:
            layer.linear.weight.mul_(scale)
    return model


def brute_jacobian(net, t, z):
    """df/dz at every point [N, d, d], one point at a time with torch.autograd.functional.jacobian."""
    return torch.stack([torch.autograd.functional.jacobian(lambda p: net(t, p[None])[0], p) for p in z])


# ------------------------------------------------------------------------------------------ data
@pytest.mark.parametrize("name", toys.TOYS)
def test_toy_generators_are_seeded_shaped_and_inside_the_plot(name):
    a = toys.sample(name, 3000, torch.Generator().manual_seed(5))
    b = toys.sample(name, 3000, torch.Generator().manual_seed(5))
    c = toys.sample(name, 3000, torch.Generator().manual_seed(6))
    assert a.shape == (3000, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a.abs() < toys.LIMIT + 0.5).float().mean() > 0.99
    assert a.std(0).min() > 0.5                      # spread over the plane, not collapsed


def test_true_toy_densities_are_normalised_and_are_the_nll_floor():
    axis = torch.linspace(-5, 5, 161, dtype=torch.float64)
    cell = (axis[1] - axis[0]).item() ** 2
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    for name in ("8gaussians", "checkerboard", "2spirals", "rings", "swissroll"):
        mass = toys.data_log_density(name, grid, points=256).double().exp().sum().item() * cell
        assert mass == pytest.approx(1.0, abs=0.03), name
        x = toys.sample(name, 1000, torch.Generator().manual_seed(0))
        floor = -toys.data_log_density(name, x, points=256).mean()
        assert torch.isfinite(floor), name           # every sample lies in the support
        assert floor < -log_normal(x, 2.0).mean() - 0.3, name   # far better than a broad Gaussian
    assert toys.data_log_density("pinwheel", grid) is None
    assert -toys.data_log_density("checkerboard", torch.tensor([[1.0, 1.0]])).item() == pytest.approx(math.log(32))


def test_the_test_set_is_fixed_whatever_the_seed(compose):
    tasks = [FlowTask(compose("experiment=ffjord_pinwheel", f"seed={s}", "dataset.test_size=300"), torch.device("cpu"))
             for s in (0, 1)]
    assert tasks[0].test.shape == (300, 2) and torch.equal(tasks[0].test, tasks[1].test)
    assert tasks[0].data_nll is None                  # pinwheel's density is not known
    first = [next(iter(t.train_batches(0))) for t in tasks]
    assert first[0].shape == (256, 2) and not torch.equal(first[0], first[1])   # training data follow the seed
    task = FlowTask(compose("experiment=ffjord_rings", "dataset.test_size=300"), torch.device("cpu"))
    assert task.data_nll.shape == (300,) and 2 < task.data_nll.mean() < 3.5


# ------------------------------------------------------------------------------------------ trace
def test_exact_divergence_is_the_brute_force_trace_and_frobenius_norm():
    torch.manual_seed(0)
    net = FreeFormNet(3, [8, 8], "softplus").double()
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.4, dtype=torch.float64)
    jac = brute_jacobian(net, t, z.detach())
    tr, frob = divergence(net(t, z), z, "exact", None, create_graph=False)
    torch.testing.assert_close(tr, jac.diagonal(dim1=1, dim2=2).sum(1))
    torch.testing.assert_close(frob, jac.pow(2).sum((1, 2)))


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_the_trace_and_the_jacobian_norm(noise):
    torch.manual_seed(1)
    dim, draws = 4, 20000
    net = FreeFormNet(dim, [16], "tanh").double()
    with torch.no_grad():
        net.layers[0].linear.weight.mul_(3)
    z0 = torch.randn(3, dim, dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64)
    jac = brute_jacobian(net, t, z0)
    exact_tr, exact_frob = jac.diagonal(dim1=1, dim2=2).sum(1), jac.pow(2).sum((1, 2))
    z = z0.repeat(draws, 1).requires_grad_(True)     # every point `draws` times, each with its own probe
    eps = noise_like(z, noise)
    if noise == "rademacher":
        assert set(eps.unique().tolist()) == {-1.0, 1.0}
    tr, frob = divergence(net(t, z), z, "hutchinson", eps, create_graph=False)
    for est, exact in ((tr, exact_tr), (frob, exact_frob)):
        est = est.view(draws, len(z0))
        se = est.std(0) / math.sqrt(draws)
        assert ((est.mean(0) - exact).abs() < 4 * se + 1e-9).all(), (est.mean(0), exact, se)
    assert tr.view(draws, -1).std(0).min() > 0.01   # a real estimate, with variance (else the check has no teeth)


# ------------------------------------------------------------------------------------------ log-density
def test_exact_log_density_matches_the_change_of_variables(solver_cfg):
    model = make_ffjord(solver_cfg)
    t1 = float(model.t1)

    def to_base(x):
        return model.transport(x, torch.tensor([t1, 0.0], dtype=x.dtype))[0][-1]

    for x in POINTS:
        jac = torch.autograd.functional.jacobian(lambda p: to_base(p[None])[0], x)
        brute = log_normal(to_base(x[None]), 1.0) + torch.linalg.det(jac).abs().log()
        with torch.no_grad():
            assert model.log_prob(x[None]).item() == pytest.approx(brute.item(), abs=1e-6)
    with torch.no_grad():   # the flow is far from volume-preserving, so the check has teeth
        assert (model.log_prob(POINTS) - log_normal(to_base(POINTS), 1.0)).abs().max().item() > 0.1
        x, log_q = model.sample(POINTS)                            # and sampling is its inverse
        torch.testing.assert_close(model.log_prob(x), log_q, rtol=1e-6, atol=1e-6)


def test_hutchinson_training_loss_is_unbiased_for_the_exact_one(solver_cfg):
    exact = make_ffjord(solver_cfg, "exact", scale=2.0, rtol=1e-6, atol=1e-6)
    hutch = make_ffjord(solver_cfg, "hutchinson", scale=2.0, rtol=1e-6, atol=1e-6)
    x = POINTS.repeat(500, 1)
    with torch.no_grad():
        ref = exact.log_prob(POINTS)
        est = hutch.log_prob(x).view(500, len(POINTS))
    se = est.std(0) / math.sqrt(500)
    assert (est.std(0) > 1e-3).all() and ((est.mean(0) - ref).abs() < 4 * se).all()


# ------------------------------------------------------------------------------------------ regularisers
def test_regularisers_vanish_for_a_zero_field(solver_cfg):
    model = make_ffjord(solver_cfg, "hutchinson", kinetic=1.0, jacobian=1.0)
    with torch.no_grad():
        for p in model.field.net.parameters():
            p.zero_()
    loss = model.loss(POINTS)
    assert model.regs["kinetic"].item() == 0 and model.regs["jacobian"].item() == 0
    assert loss.item() == pytest.approx(-log_normal(POINTS, 1.0).mean().item())


class Linear(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = torch.nn.Parameter(a)

    def forward(self, t, z):
        return z @ self.a.T


@pytest.mark.parametrize("trace, adjoint", [("exact", False), ("exact", True), ("hutchinson", True)])
def test_regularisers_of_a_linear_field_in_closed_form(solver_cfg, trace, adjoint):
    """f(z) = A z with A = [[a, -b], [b, a]]: solving back from x at t1, |z(t)| = e^{a(t - t1)} |x|, so
    int_0^t1 |f|^2 dt = (a^2 + b^2) |x|^2 (1 - e^{-2 a t1}) / (2a); |eps^T A|^2 = (a^2 + b^2) |eps|^2, which is
    |A|_F^2 = 2 (a^2 + b^2) for every Rademacher probe, so the Jacobian term is 2 (a^2 + b^2) t1; tr A = 2a."""
    a, b, t1 = 0.7, 1.3, 1.0
    model = make_ffjord(solver_cfg, trace, kinetic=0.1, jacobian=0.2, adjoint=adjoint)
    model.field.net = Linear(torch.tensor([[a, -b], [b, a]], dtype=torch.float64))
    loss = model.loss(POINTS)
    sq = POINTS.pow(2).sum(1)
    kinetic = ((a * a + b * b) * sq * (1 - math.exp(-2 * a * t1)) / (2 * a)).mean()
    jacobian = 2 * (a * a + b * b) * t1
    log_p = log_normal(torch.linalg.matrix_exp(-torch.tensor([[a, -b], [b, a]], dtype=torch.float64) * t1)
                       .matmul(POINTS.T).T, 1.0) - 2 * a * t1
    assert model.regs["kinetic"].item() == pytest.approx(kinetic.item(), rel=1e-6)
    assert model.regs["jacobian"].item() == pytest.approx(jacobian, rel=1e-6)
    assert loss.item() == pytest.approx((-log_p.mean() + 0.1 * kinetic + 0.2 * jacobian).item(), rel=1e-6)
    if trace == "hutchinson":   # its gradient in A is right only in expectation (d eps^T A eps / dA = eps eps^T)
        return
    loss.backward()   # d loss / d A by the adjoint or by backprop, against autograd of the closed form
    A = torch.tensor([[a, -b], [b, a]], dtype=torch.float64, requires_grad=True)
    z0 = torch.linalg.matrix_exp(-A * t1).matmul(POINTS.T).T
    zt = lambda s: torch.linalg.matrix_exp(A * (s - t1)).matmul(POINTS.T).T   # noqa: E731
    grid = torch.linspace(0, t1, 2001, dtype=torch.float64)                # trapezoid rule in time
    kin = torch.stack([(zt(s) @ A.T).pow(2).sum(1).mean() for s in grid])
    kin = ((kin[1:] + kin[:-1]) / 2).sum() * (t1 / 2000)
    ref = -(log_normal(z0, 1.0) - torch.diagonal(A).sum() * t1).mean() + 0.1 * kin + 0.2 * A.pow(2).sum() * t1
    ref.backward()
    torch.testing.assert_close(model.field.net.a.grad, A.grad, rtol=1e-4, atol=1e-6)


def test_adjoint_and_seminorm_gradients_match_backprop_with_regularisers(solver_cfg):
    x = toys.sample("8gaussians", 32, torch.Generator().manual_seed(0)).double() / 2
    grads = []
    for adjoint, norm in [(False, "default"), (True, "default"), (True, "seminorm")]:
        model = make_ffjord(solver_cfg, "exact", kinetic=0.1, jacobian=0.1, scale=1.5, adjoint=adjoint,
                            adjoint_norm=norm, rtol=1e-8, atol=1e-8)
        model.loss(x).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.field.parameters()]))
        assert (model.block.nfe_backward > 0) == adjoint
    assert grads[0].abs().max() > 1e-2
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[2], grads[0], rtol=1e-4, atol=1e-6)


def test_learnable_flow_time_gets_a_gradient(solver_cfg):
    torch.manual_seed(0)
    for adjoint in (False, True):
        model = FFJORD(2, [8], "tanh", 0.5, True, "exact", "rademacher", 1.0,
                       solver_cfg(adjoint=adjoint, rtol=1e-6, atol=1e-6), 0.1, 0.0).double()
        assert float(model.t1.detach()) == pytest.approx(0.5)
        model.loss(POINTS).backward()
        assert model.raw_t1.grad is not None and model.raw_t1.grad.abs() > 0


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args, message", [
    (["model.trace=sparse"], "unknown model.trace 'sparse'; accepted: exact, hutchinson"),
    (["model.noise=uniform"], "unknown model.noise 'uniform'; accepted: rademacher, gaussian"),
    (["model.activation=relu"], "unknown model.activation 'relu'; accepted: tanh, softplus"),
    (["model.hidden=[]"], "model.hidden=[] is not allowed"),
    (["model.hidden=64"], "model.hidden=64 is not allowed: it must be a non-empty list"),
    (["model.hidden=[64,0]"], "model.hidden entry=0 is not allowed"),
    (["model.kinetic=-0.1"], "model.kinetic=-0.1 is not allowed: it must be a number >= 0"),
    (["model.jacobian=null"], "model.jacobian=None is not allowed"),
    (["model.learn_t1=1"], "model.learn_t1=1 is not allowed: it must be true or false"),
    (["model.t1=0"], "model.t1=0 is not allowed"),
    (["model.eval_tol=0"], "model.eval_tol=0 is not allowed"),
    (["dataset=density"], "model=ffjord trains by maximum likelihood"),
    (["dataset=spirals"], "unknown dataset 'spirals'"),
])
def test_bad_ffjord_input_is_one_clear_error(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")) as err:
        precheck(["experiment=ffjord_rings", *args])
    assert "\n" not in str(err.value)


def test_bad_key_from_the_command_line_exits_2_before_any_folder(node_run, tmp_path):
    out = node_run("experiment=ffjord_swissroll", "model.trace=sketchy", f"hydra.run.dir={tmp_path}/r")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "node-run: error: unknown model.trace 'sketchy'; accepted: exact, hutchinson"]
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------ end to end
TINY = ["trainer.max_steps=3", "trainer.eval_every=2", "trainer.eval_limit=50", "trainer.batch_size=32",
        "dataset.test_size=60", "trainer.progress=false", "solver.rtol=1e-3", "solver.atol=1e-3",
        "model.eval_tol=1e-3", "model.hidden=[8,8]"]
EXPERIMENTS = {   # every ffjord_* experiment, each with another corner of the settings
    "ffjord_8gaussians": ["model.kinetic=0.1", "model.jacobian=0.1"],
    "ffjord_pinwheel": ["model.trace=exact", "model.activation=softplus"],
    "ffjord_checkerboard": ["model.noise=gaussian", "solver.adjoint_norm=seminorm"],
    "ffjord_2spirals": ["solver.adjoint=false", "model.learn_t1=false", "model.kinetic=0.5", "model.jacobian=0"],
    "ffjord_rings": ["model.eval_tol=null"],
    "ffjord_swissroll": ["solver=rk4", "solver.step_size=0.25"],
}


def test_every_ffjord_experiment_is_tested():
    assert sorted(e for e in options("experiment") if e.startswith("ffjord_")) == sorted(EXPERIMENTS)


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_tiny_ffjord_run_writes_its_files_and_figures(tmp_path, assert_png, experiment):
    out = tmp_path / "run"
    extra = EXPERIMENTS[experiment]
    main([f"experiment={experiment}", *TINY, *extra, f"hydra.run.dir={out}"])
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "ok" and s["steps"] == 3 and s["task"] == "flows" and s["model"] == "ffjord"
    assert math.isfinite(s["test_nll"]) and s["test_examples"] == 60 and s["nfe_forward"] > 0
    assert s["test_kinetic"] > 0 and s["test_jacobian"] > 0 and s["t1"] > 0 and s["eval_nfe_forward"] > 0
    cfg = OmegaConf.load(out / ".hydra" / "config.yaml")
    assert cfg.name == experiment and cfg.dataset.name == experiment.split("_", 1)[1]
    assert (s["nfe_backward"] > 0) == cfg.solver.adjoint
    regularised = cfg.model.kinetic > 0 or cfg.model.jacobian > 0
    assert ("train_kinetic" in s) == regularised
    assert (s["test_nll_data"] is None) == (cfg.dataset.name == "pinwheel")
    if not cfg.model.learn_t1:
        assert s["t1"] == pytest.approx(0.5)
    assert sorted(s["figures"]) == ["density.png", "flow.png"]
    for name in s["figures"]:
        assert_png(out / name, min_height=200, min_width=400)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3] and rows[-1]["final"]
    assert all("test_kinetic" in r and "test_jacobian" in r for r in rows)


def test_node_bench_ffjord_and_the_report_tables(tmp_path):
    from node_cli.bench.cli import main as bench
    from node_cli.report.build import build

    assert bench(["ffjord", "--dims", "2,3", "--trace-reps", "1", "--trace-warmup", "0", "--trace-batch", "16",
                  "--trace-hidden", "8", "--trace-solver-steps", "2", "--out", str(tmp_path / "bench")]) == 0
    import csv
    rows = list(csv.DictReader(open(tmp_path / "bench" / "ffjord_trace.csv")))
    assert [r["dim"] for r in rows] == ["2", "3"] and all(r["same_nfe"] == "True" for r in rows)
    assert all(r["nfe_forward"] == "8" and float(r["ratio"]) > 0 for r in rows)
    for name, extra in (("plain", []), ("rnode", ["model.kinetic=0.1", "model.jacobian=0.1"])):
        main(["experiment=ffjord_rings", *TINY, "trainer.max_steps=2", *extra, f"hydra.run.dir={tmp_path}/{name}"])
    page = build([tmp_path], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "#### Regularisation: RNODE" in text and "kinetic 0.1, jacobian 0.1" in text
    assert "#### Dimension scaling" in text and "exact / Hutchinson" in text
    assert (tmp_path / "report" / "ffjord_nfe.png").is_file() and page is not None


@pytest.mark.parametrize("activation", ["tanh", "softplus"])
@pytest.mark.parametrize("dim", [2, 5])
def test_closed_form_exact_trace_is_the_brute_force_one(activation, dim):
    """The Jacobian carried through the layers: trace and Frobenius norm equal FFJORD's d vector-Jacobian products,
    and so do their gradients with respect to every parameter and the state."""
    torch.manual_seed(0)
    net = FreeFormNet(dim, [16, 8], activation).double()
    z0 = torch.randn(7, dim, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    results = []
    for closed in (False, True):
        z = z0.clone().requires_grad_(True)
        zero = torch.zeros(7, 1, dtype=torch.float64)
        out = FreeFormField(net, "exact", closed_form=closed)(t, (z, zero, zero, zero))
        net.zero_grad()
        (out[1].pow(2).sum() + out[3].sum() + out[0].sum()).backward()
        results.append(([o.detach() for o in out], [z.grad] + [p.grad.clone() for p in net.parameters()]))
    brute_tr = -torch.stack([torch.autograd.functional.jacobian(lambda x: net(t, x[None])[0], z0[i]).trace()
                             for i in range(7)])
    torch.testing.assert_close(results[1][0][1][:, 0], brute_tr, rtol=1e-10, atol=1e-12)   # independent: jacobian()
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("adjoint", [False, True])
def test_closed_form_trace_solves_take_the_brute_force_steps(solver_cfg, adjoint):
    """A whole FFJORD log-density solve, exact trace: closed form and model.fast_trace=false take the same steps
    and NFE and give the same log-densities and gradients (the adjoint's backward solve included)."""

    cfg = solver_cfg(rtol=1e-6, atol=1e-6, adjoint=adjoint)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = FFJORD(2, [16, 16], "tanh", 0.5, True, "exact", "rademacher", 1.0, cfg, fast_trace=fast).double()
        loss = model.loss(x)
        loss.backward()
        got.append((loss.detach(), [p.grad for p in model.parameters()], model.block.nfe_forward,
                    model.block.nfe_backward, model.block.steps_accepted))
    assert got[0][2:] == got[1][2:] and got[0][2] > 6 and (got[0][3] > 0) == adjoint
    torch.testing.assert_close(got[1][0], got[0][0], rtol=1e-10, atol=1e-10)
    for a, b in zip(got[0][1], got[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)
