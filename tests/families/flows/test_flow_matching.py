"""Flow matching for the FFJORD field (model.loss=cfm|otcfm): the loss against a hand computation, the minibatch OT
coupling against brute force, a 1-D Gaussian-to-Gaussian problem whose marginal velocity and density are known in
closed form, bad input, a tiny run evaluated again by node-eval, an exact resume, and the report's table."""
import itertools
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from node_cli import evaluate
from node_cli.cli import precheck
from node_cli.core import stop
from node_cli.core.checks import ConfigError
from node_cli.core.compose import options
from node_cli.core.rundir import CHECKPOINT, CONFIG, METRICS
from node_cli.core.runs import load_checkpoint
from node_cli.core.train import Loop
from node_cli.experiment import configure, execute
from node_cli.families.flows import toys
from node_cli.families.flows.ffjord import FFJORD, cfm_loss, ot_pairing
from node_cli.resume import prepare

TINY = ["trainer.max_steps=4", "trainer.eval_every=2", "trainer.eval_limit=50", "trainer.batch_size=32",
        "dataset.test_size=60", "trainer.progress=false", "model.eval_tol=1e-3", "model.hidden=[8,8]",
        "device=cpu"]


# ------------------------------------------------------------------------------------------------ the loss
def test_cfm_loss_is_the_hand_computed_regression_on_the_straight_path():
    x0 = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    x1 = torch.tensor([[1.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    s = torch.tensor([0.5, 0.25], dtype=torch.float64)
    noise = torch.tensor([[1.0, -1.0], [0.0, 2.0]], dtype=torch.float64)
    net = lambda t, z: t[:, None] * z + 1.0   # noqa: E731 - f(t, z) = t z + 1, time per point
    # t1 = 2, sigma = 0.1. Point 1: x_s = (0.5, 1) + 0.1 (1, -1) = (0.6, 0.9), t = 1, f = (1.6, 1.9),
    # target (x1 - x0) / 2 = (0.5, 0): error^2 = 1.1^2 + 1.9^2 = 4.82.
    # Point 2: x_s = 0.75 (2, -1) + 0.25 (0, 3) + 0.1 (0, 2) = (1.5, 0.2), t = 0.5, f = (1.75, 1.1),
    # target (-1, 2): error^2 = 2.75^2 + 0.9^2 = 8.3725. Mean: 6.59625.
    loss = cfm_loss(net, x0, x1, s, noise, 0.1, 2.0)
    assert loss.item() == pytest.approx(6.59625, abs=1e-12)


def test_the_model_draws_its_base_points_times_and_noise_from_the_seeded_generator(solver_cfg):
    model = FFJORD(2, [8], "tanh", 1.0, False, "exact", "rademacher", 2.0, solver_cfg(), loss="cfm", fm_sigma=0.0)
    x1 = toys.sample("8gaussians", 64, torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    a = model.loss(x1)
    torch.manual_seed(3)
    b = model.loss(x1)
    assert a.item() == b.item() and a.item() > 0
    torch.manual_seed(3)   # the draws in order: base points (std 2), path fractions, path noise (sigma 0: unused)
    x0 = 2.0 * torch.randn_like(x1)
    s = torch.rand(64)
    assert a.item() == pytest.approx(cfm_loss(model.field.net, x0, x1, s, 0 * x1, 0.0, 1.0).item(), rel=1e-6)
    assert model.block.nfe_forward == 0   # no solve in training


# ------------------------------------------------------------------------------------------------ the coupling
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ot_pairing_is_the_brute_force_optimal_permutation(seed):
    pytest.importorskip("ot")
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(7, 2, generator=g), 2 * torch.randn(7, 2, generator=g) + 1
    cost = lambda p: sum(((x0[i] - x1[j]) ** 2).sum().item() for i, j in enumerate(p))   # noqa: E731
    brute = min(itertools.permutations(range(7)), key=cost)
    perm = ot_pairing(x0, x1).tolist()
    assert sorted(perm) == list(range(7))                       # every data point used once
    assert cost(perm) == pytest.approx(cost(brute), rel=1e-9)   # and at the least total squared cost
    assert cost(perm) < cost(range(7))                          # (which the batch order is not)


# ------------------------------------------------------------------------------ 1-D Gaussian to Gaussian
def test_cfm_on_a_1d_gaussian_learns_the_analytic_velocity_and_density(solver_cfg):
    """Base N(0, 1) to data N(m, s^2), independent coupling, sigma: x_t = (1 - t) x0 + t x1 + sigma e is Gaussian
    with mean t m and variance v_t = (1 - t)^2 + t^2 s^2 + sigma^2, and the marginal velocity is
    E[x1 - x0 | x_t = x] = m + (t s^2 - (1 - t)) (x - t m) / v_t. Its flow carries N(0, 1) (nearly) onto the data,
    so the model's sampling and its exact-trace likelihood through the solver must see N(m, s^2). (s = 1 keeps the
    field's change of slope, from -1 at t = 0 to +1 at t = 1, gentle enough for a small field to learn quickly.)"""
    m, s, sigma = 2.0, 1.0, 0.01
    torch.manual_seed(0)
    model = FFJORD(1, [32, 32], "tanh", 1.0, False, "exact", "rademacher", 1.0,
                   solver_cfg(rtol=1e-5, atol=1e-5, adjoint=False), loss="cfm", fm_sigma=sigma)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 1000)
    for _ in range(1000):
        loss = model.loss(m + s * torch.randn(1024, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    t = torch.linspace(0.05, 0.95, 10).repeat_interleave(21)
    v = (1 - t) ** 2 + t ** 2 * s ** 2 + sigma ** 2
    x = t * m + v.sqrt() * torch.linspace(-2, 2, 21).repeat(10)   # within 2 std of the marginal at each time
    exact = m + (t * s ** 2 - (1 - t)) * (x - t * m) / v         # slope in x from -0.9 to +0.9 over these t
    with torch.no_grad():
        learned = model.field.net(t, x[:, None])[:, 0]
        assert (learned - exact).abs().max() < 0.25 and (learned - exact).pow(2).mean().sqrt() < 0.06
        samples = model.generate(torch.randn(4000, 1, generator=torch.Generator().manual_seed(1)))
        assert samples.mean().item() == pytest.approx(m, abs=0.05) and samples.std().item() == pytest.approx(s, abs=0.04)
        points = torch.linspace(m - 1.5 * s, m + 1.5 * s, 7)[:, None]
        truth = -0.5 * ((points - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
        assert (model.log_prob(points) - truth[:, 0]).abs().max() < 0.15


# ------------------------------------------------------------------------------------------------ input
@pytest.mark.parametrize("args, message", [
    (["model.loss=sgd"], "unknown model.loss 'sgd'; accepted: mle, cfm, otcfm"),
    (["model.fm_sigma=-1"], "model.fm_sigma=-1 is not allowed: it must be a number >= 0"),
    (["model.learn_t1=true"], "model.loss=cfm regresses the field on a path of fixed length t1"),
    (["model.kinetic=0.1"], "with model.loss=cfm set them to 0"),
])
def test_bad_flow_matching_input_is_one_clear_error(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")) as err:
        precheck(["experiment=fm_rings", *args])
    assert "\n" not in str(err.value)


def test_otcfm_without_pot_says_how_to_install_it(monkeypatch):
    import importlib.util
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ot" else find(name, *a))
    with pytest.raises(ConfigError, match=r"model.loss=otcfm needs POT .*pip install 'node-run\[ot\]'"):
        precheck(["experiment=fm_pinwheel", "model.loss=otcfm"])
    precheck(["experiment=fm_pinwheel"])   # cfm needs no POT


def test_every_fm_experiment_is_its_ffjord_experiment_trained_by_flow_matching(compose):
    names = sorted(e for e in options("experiment") if e.startswith("fm_"))
    assert names == sorted(f"fm_{d}" for d in toys.TOYS)
    for name in names:
        fm, ml = (OmegaConf.to_container(compose(f"experiment={e}")) for e in (name, "ffjord_" + name[3:]))
        assert fm["model"].pop("loss") == "cfm" and ml["model"].pop("loss") == "mle"
        assert (fm["model"].pop("learn_t1"), fm["model"].pop("t1")) == (False, 1.0)
        for key in ("learn_t1", "t1"):
            ml["model"].pop(key)
        assert fm["model"] == ml["model"] and fm["dataset"] == ml["dataset"] and fm["solver"] == ml["solver"]
        assert fm["trainer"]["max_steps"] > ml["trainer"]["max_steps"]
    quick = compose("experiment=fm_swissroll", "trainer=quick")   # a budget preset replaces the budget alone
    assert quick.trainer.max_steps == 200 and quick.model.loss == "cfm" and quick.trainer.lr == 3e-3


# ------------------------------------------------------------------------------------------------ runs
def _run(folder, *overrides):
    cfg = configure(list(overrides))
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / CONFIG)
    return cfg, execute(cfg, folder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """loss -> (folder, summary): a tiny ffjord_8gaussians run (mle) and a tiny fm_8gaussians run (otcfm where POT
    is installed, else cfm)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("fm_runs")
    made = {}
    try:
        for loss in ("mle", "otcfm" if _has_pot() else "cfm"):
            extra = ["experiment=ffjord_8gaussians", "solver.rtol=1e-3", "solver.atol=1e-3"] if loss == "mle" \
                else ["experiment=fm_8gaussians", f"model.loss={loss}"]
            _, summary = _run(base / loss, *extra, *TINY)
            assert summary["status"] == "ok", summary
            made[loss] = (base / loss, summary)
    finally:
        torch.set_num_threads(threads)
    return made


def _has_pot() -> bool:
    import importlib.util
    return importlib.util.find_spec("ot") is not None


def test_a_flow_matching_run_trains_without_solves_and_node_eval_repeats_its_evaluation(runs):
    for loss in ("cfm", "otcfm"):
        if loss not in runs:
            continue
        folder, s = runs[loss]
        assert s["nfe_forward"] == 0 and s["nfe_backward"] == 0 and s["sec_per_step"] > 0
        assert s["eval_nfe_forward"] > 0 and s["eval_nfe_sample"] > 0 and s["t1"] == pytest.approx(1.0)
        assert math.isfinite(s["test_nll"]) and sorted(s["figures"]) == ["density.png", "flow.png"]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            evaluate.main([str(folder)])
        finally:
            torch.set_num_threads(threads)
        (written,) = (folder / "eval").iterdir()
        got = json.loads((written / "eval.json").read_text())
        same = [k for k in s if k.startswith("test_") or k in ("eval_nfe_forward", "eval_nfe_sample", "t1")]
        assert {k: got[k] for k in same} == {k: s[k] for k in same}   # the same evaluation, bit for bit
    mle = runs["mle"][1]
    assert mle["nfe_forward"] > 0 and mle["eval_nfe_sample"] > 0


def test_a_stopped_flow_matching_run_resumes_exactly(tmp_path, monkeypatch):
    loss = "otcfm" if _has_pot() else "cfm"   # otcfm: the random draws and the coupling
    overrides = ["experiment=fm_checkerboard", f"model.loss={loss}", *TINY, "trainer.max_steps=6",
                 "trainer.eval_every=3"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert _run(full, *overrides)[1]["status"] == "ok"
    original = Loop.train_step

    def train_step(self, batch):   # stop after step 2, as a SIGTERM would (test_resume.py's pattern)
        value = original(self, batch)
        if self.step == 2:
            stop._active.requested, stop._active.name = True, "SIGTERM"
        return value

    monkeypatch.setattr(Loop, "train_step", train_step)
    assert _run(stopped, *overrides)[1]["status"] == "interrupted"
    monkeypatch.undo()
    cfg, ckpt, history = prepare(stopped, {})
    assert execute(cfg, stopped, resume=ckpt, history=history)["status"] == "ok"
    rows = [[{k: v for k, v in json.loads(line).items() if k not in ("sec_per_step", "wall_time")}
             for line in (f / METRICS).read_text().splitlines()] for f in (full, stopped)]
    assert rows[0] == rows[1] and [r["step"] for r in rows[0]] == [3, 6]
    wa, wb = (load_checkpoint(f / CHECKPOINT)["model"] for f in (full, stopped))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_report_compares_the_objectives(runs, tmp_path):
    from node_cli.report.build import build

    build([folder for folder, _ in runs.values()], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "#### Flow matching against maximum likelihood" in text
    table = [line for line in text.splitlines() if line.startswith("| 8gaussians |")]
    assert [line.split(" | ")[1] for line in table] == sorted(runs)   # one row per objective
    assert (tmp_path / "report" / "ffjord_objectives.png").is_file()
    import csv
    rows = list(csv.DictReader(open(tmp_path / "report" / "ffjord_objectives.csv")))
    best = min(rows, key=lambda r: float(r["test_nll"]))
    assert float(best["level"]) == pytest.approx(float(best["test_nll"]) + 0.05)
    # the best run reaches the level by its final evaluation at the latest: within its whole timed training
    assert 0 < float(best["train_s_to_level"]) <= float(best["sec_per_step"]) * int(best["steps"]) * (1 + 1e-9)
    assert 0 < int(best["step_to_level"]) <= int(best["steps"])
    assert "#### Regularisation" not in text   # flow-matching runs are not taken for unregularised pairs
