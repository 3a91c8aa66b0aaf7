"""The flows family's validation split (dataset.val_size, dataset.val_seed) and RNODE's λ chosen on it: the split is
other points of the same distribution as the test set, adding it changes neither the test set nor the training
draws, val_nll is the NLL of those points computed independently (torchdiffeq on the bare field, brute-force
trace), and node-report picks λ by validation, whatever the test numbers say."""
import csv
import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from torchdiffeq import odeint

from node_cli.cli import precheck
from node_cli.core.checks import ConfigError
from node_cli.families.flows.ffjord import log_normal
from node_cli.families.flows.report_ffjord import choose_lambda
from node_cli.families.flows.task import FlowTask

CPU = torch.device("cpu")
# 8gaussians = (c + e) / 1.414, c = 4 (cos, sin)(k pi/4) (k uniform in 0..7), e ~ N(0, 0.25 I), per coordinate:
# E c^2 = 8, E c^4 = (2 * 4^4 + 4 * (2 sqrt 2)^4) / 8 = 96; E c1^2 c2^2 = (4 * 8 * 8) / 8 = 32 (the diagonal centres)
S4 = 1.414 ** 4
VAR_8G = (8 + 0.25) / 1.414 ** 2
M4_8G = (96 + 6 * 8 * 0.25 + 3 * 0.25 ** 2) / S4             # E x1^4
CROSS_8G = (32 + 2 * 0.25 * 8 + 0.25 ** 2) / S4               # E x1^2 x2^2


def test_validation_points_are_new_points_of_the_test_distribution(compose):
    task = FlowTask(compose("experiment=ffjord_8gaussians", "dataset.test_size=20000", "dataset.val_size=20000"), CPU)
    val, test = task.val.double(), task.test.double()
    assert val.shape == test.shape == (20000, 2)
    shared = (torch.cdist(val[:2000], test) == 0).any(1).sum().item()
    assert shared == 0                                         # no test point is a validation point
    assert abs(torch.corrcoef(torch.stack([val[:, 0], test[:, 0]]))[0, 1]) < 4 / math.sqrt(20000)   # independent
    n = len(val)
    for x in (val, test):   # both the closed-form mixture: mean 0, variance VAR_8G per coordinate, uncorrelated
        assert x.mean(0).abs().max() < 4 * math.sqrt(VAR_8G / n)
        assert (x.var(0) - VAR_8G).abs().max() < 4 * math.sqrt((M4_8G - VAR_8G ** 2) / n)
        assert abs(torch.cov(x.T)[0, 1]) < 4 * math.sqrt(CROSS_8G / n)
    assert (val.var(0) - test.var(0)).abs().max() < 4 * math.sqrt(2 * (M4_8G - VAR_8G ** 2) / n)
    train = next(iter(task.train_batches(0)))
    assert not (torch.cdist(val.float(), train) == 0).any()   # nor a training point


@pytest.mark.parametrize("experiment", ["ffjord_pinwheel", "cnf_moons"])
def test_the_validation_split_leaves_test_set_training_draws_and_model_as_they_were(compose, experiment):
    tasks = []
    for size in (0, 500):
        torch.manual_seed(0)   # as the run does before it builds the task
        tasks.append(FlowTask(compose(f"experiment={experiment}", f"dataset.val_size={size}", "dataset.test_size=500"),
                              CPU))
    without, with_val = tasks
    assert without.val is None and with_val.val.shape == (500, 2)
    assert torch.equal(without.test, with_val.test) and torch.equal(without.fixed, with_val.fixed)
    for a, b in zip(without.train_batches(0), with_val.train_batches(0)):
        assert torch.equal(a, b)
        break
    assert all(torch.equal(p, q) for p, q in zip(without.model.parameters(), with_val.model.parameters()))
    other = FlowTask(compose(f"experiment={experiment}", "dataset.val_size=500", "dataset.val_seed=99",
                             "dataset.test_size=500"), CPU)
    assert not torch.equal(other.val, with_val.val)            # the split follows dataset.val_seed
    assert "val_nll" not in without.validation(None) and without.validation(None) == {}


def _field_nll(task, points):
    """-log p(x) of the FFJORD model, computed outside the model: torchdiffeq's dopri5 at 1e-9 on the bare field
    in float64, the trace as the sum of the d autograd derivatives df_i/dz_i (no closed form, no Hutchinson)."""
    net = task.model.field.net.double()
    t1, std = task.model.t1.detach().double(), task.cfg.dataset.base_std

    def f(t, state):
        z = state[0]
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            dz = net(t, z)
            trace = sum(torch.autograd.grad(dz[:, i].sum(), z, retain_graph=True)[0][:, i] for i in range(2))
        return dz.detach(), -trace.detach()[:, None]

    times = torch.stack([t1, torch.zeros((), dtype=torch.float64)])
    z, minus_int = odeint(f, (points.double(), torch.zeros(len(points), 1, dtype=torch.float64)), times,
                          rtol=1e-9, atol=1e-9)
    # d(minus_int)/dt = -tr from t1 down to 0: its value at 0 is the integral of tr over [0, t1]
    out = -(log_normal(z[-1], std) - minus_int[-1, :, 0])
    net.float()
    return out


def test_val_nll_is_the_nll_of_the_validation_points(compose):
    cfg = compose("experiment=ffjord_8gaussians", "model.hidden=[8,8]", "dataset.test_size=10", "dataset.val_size=40",
                  "model.eval_tol=1e-6", "model.kinetic=0.1", "model.jacobian=0.1")
    torch.manual_seed(3)
    task = FlowTask(cfg, CPU)
    with torch.no_grad():   # a field far from zero, so the flow moves the points
        for layer in task.model.field.net.layers:
            layer.linear.weight.mul_(3.0)
    out = task.evaluate(None)
    assert out["val_examples"] == 40 and out["test_examples"] == 10
    ref = _field_nll(task, task.val)
    assert out["val_nll"] == pytest.approx(ref.mean().item(), abs=5e-4)
    assert out["val_nll_stderr"] == pytest.approx(ref.std().item() / math.sqrt(40), rel=1e-2)
    assert abs(out["val_nll"] - out["test_nll"]) > 1e-3       # other points than the test set's
    assert task.evaluate(15)["val_examples"] == 15             # intermediate evaluations: the first eval_limit points
    assert "val_nll" not in FlowTask(compose("experiment=density_cnf", "dataset.test_size=10"), CPU).evaluate(None)


@pytest.mark.parametrize("args, message", [
    (["dataset.val_size=-1"], "dataset.val_size=-1 is not allowed: it must be an integer >= 0"),
    (["dataset.val_seed=1234"], "dataset.val_seed=1234 is not allowed: it is also dataset.test_seed (the test set)"),
    (["seed=7", "dataset.val_seed=7"], "dataset.val_seed=7 is not allowed: it is also seed (the training draws)"),
])
def test_a_validation_split_without_a_seed_of_its_own_is_one_clear_error(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        precheck(["experiment=ffjord_8gaussians", *args], dry=True)


# ------------------------------------------------------------------------------------------ choosing λ
def test_the_largest_lambda_within_the_margin_on_validation_is_chosen():
    none, small, mid, big = (0.0, 0.0), (0.05, 0.05), (0.1, 0.1), (0.5, 0.5)
    val = {none: {0: 3.00, 1: 3.10}, small: {0: 3.01, 1: 3.12}, mid: {0: 3.04, 1: 3.15}, big: {0: 3.40, 1: 3.50}}
    assert choose_lambda(val) == mid                     # mean gaps 0.015, 0.045, 0.40
    assert choose_lambda(val, margin=0.02) == small
    assert choose_lambda(val, margin=0.01) is None       # no λ is close enough
    assert choose_lambda({**val, mid: {0: 3.02, 1: 3.19}}) == small   # mean gap 0.055: one seed's 0.09 counts
    # a λ run on one seed only is compared with the unregularised run of that seed
    assert choose_lambda({**val, (1.0, 1.0): {1: 3.13}}) == (1.0, 1.0)
    assert choose_lambda({none: {0: 3.0}, (0.1, 0.0): {0: 3.01}, (0.0, 0.1): {0: 3.01}}) == (0.1, 0.0)


def _fake_run(folder, compose, lam, seed, val, test, nfe, eval_nfe):
    """A finished ffjord_8gaussians run folder with hand-made numbers (config as node-run writes it)."""
    cfg = compose("experiment=ffjord_8gaussians", "model.learn_t1=false", f"model.kinetic={lam}",
                  f"model.jacobian={lam}", f"seed={seed}", "trainer.max_steps=300")
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    numbers = dict(test_nll=test, test_nll_stderr=0.01, val_nll=val, val_nll_stderr=0.02, nfe_forward=nfe,
                   eval_nfe_forward=eval_nfe, test_nll_data=2.838, t1=0.5, sec_per_step=0.1)
    (folder / "summary.json").write_text(json.dumps(dict(
        status="ok", error=None, experiment="ffjord_8gaussians", task="flow", model="ffjord", dataset="8gaussians",
        seed=seed, steps=300, **numbers)))
    (folder / "metrics.jsonl").write_text(json.dumps(dict(step=300, final=True, **numbers)) + "\n")


def test_node_report_chooses_lambda_on_validation_not_on_test(tmp_path, compose):
    from node_cli.report.build import build

    # λ = 0.5 has the best test NLL but is 0.1 nats worse on validation; λ = 0.2 is within 0.05 nats there
    table = {0: (3.00, 3.10, 60, 90), 0.05: (3.01, 3.20, 55, 80), 0.2: (3.04, 3.25, 30, 40), 0.5: (3.10, 3.00, 20, 30)}
    for lam, (val, test, nfe, eval_nfe) in table.items():
        for seed in (0, 1):
            _fake_run(tmp_path / "runs" / f"l{lam}_s{seed}", compose, lam, seed, val + 0.01 * seed,
                      test + 0.02 * seed, nfe, eval_nfe)
    build([tmp_path / "runs"], tmp_path / "report")
    rows = list(csv.DictReader(open(tmp_path / "report" / "ffjord_lambda_selection.csv")))
    assert len(rows) == 1 and rows[0]["chosen"] == "0.2/0.2" and rows[0]["seeds"] == "0 1"
    row = {k: float(rows[0][k]) for k in ("val_delta_nll", "test_delta_nll", "nfe_cut_train", "nfe_cut_eval")}
    assert row == pytest.approx(dict(val_delta_nll=0.04, test_delta_nll=0.15, nfe_cut_train=2.0, nfe_cut_eval=2.25))
    assert rows[0]["claim_train"] == rows[0]["claim_eval"] == "False"   # 2x, but 0.15 nats worse on test
    text = (tmp_path / "report" / "report.md").read_text()
    assert "#### RNODE's λ chosen on the validation split" in text and "| 0.2/0.2 (val Δ +0.040) |" in text


def test_the_validation_solves_are_not_in_the_evaluation_nfe(compose):
    """The evaluation's forward solves (what eval_nfe_forward averages over) are the test set's likelihood solves,
    one per chunk of test points, with or without a validation split; its solves and the sampling's are apart."""
    from node_cli.core.meter import Count

    counts = []
    for size in (0, 300):
        torch.manual_seed(0)
        task = FlowTask(compose("experiment=ffjord_pinwheel", f"dataset.val_size={size}", "dataset.test_size=300",
                                "model.hidden=[8,8]", "model.eval_tol=1e-3"), CPU)
        with Count(task.model) as c:
            result = task.evaluate(None)
        counts.append((c.solves, c.nfe_forward, result["eval_nfe_sample"]))
    assert counts[0][0] == counts[1][0] == 1            # 300 test points: one chunk, one solve
    assert counts[0] == counts[1] and counts[0][1] > 0
