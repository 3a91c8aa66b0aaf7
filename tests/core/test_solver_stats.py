"""Solver options (first_step, min_step, max_step, the adjoint's own tolerances and method) reach torchdiffeq, and
the step statistics (accepted, rejected, smallest dt) counted by CountedField agree with what the solver did."""
import warnings

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torchdiffeq._impl.misc import _PerturbFunc, _all_callback_names, _rms_norm
from torchdiffeq._impl.odeint import SOLVERS as REGISTRY

from node_cli.core.checks import ConfigError, validate
from node_cli.core.rundir import RunDir, read_metrics
from node_cli.core.runs import load_checkpoint
from node_cli.core.solve import ODEBlock, TAKES, nfe, solver_kwargs, solver_stats
from node_cli.core.train import fit

RTOL, ATOL = 1e-6, 1e-8


class Stiff(nn.Module):
    """dy/dt = a (y - cos t), a = -50: the solution is pulled fast onto cos t; dopri5 rejects steps on it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(-50.0, dtype=torch.float64))
        self.w = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.outside = 0

    def forward(self, t, y):
        self.outside += 1
        return self.a * (y - self.w * torch.cos(t))


class Smooth(nn.Module):
    """A slow rotation with decay: big steps suffice, so a small first step is the smallest step of the solve."""

    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64))

    def forward(self, t, y):
        return y @ self.A.T


def y0(n=2, dim=1):
    return torch.ones(n, dim, dtype=torch.float64) * 2.0


@pytest.fixture
def cfg(solver_cfg):
    return lambda **kw: solver_cfg(**{"rtol": RTOL, "atol": ATOL, "adjoint": False, **kw})


def by_hand(field, y, method="dopri5", t1=1.0, **options):
    """Step torchdiffeq's solver class by hand, without callbacks: an accepted step moves t1 (its dt is the move),
    a rejected one does not. Returns (accepted dts, rejected count, evaluations)."""
    counter = {"n": 0}

    class Counted(nn.Module):
        def forward(self, t, y):
            counter["n"] += 1
            return field(t, y)

    func = _PerturbFunc(Counted())
    for name in _all_callback_names:               # torchdiffeq's _check_inputs gives every solve these
        setattr(func, name, lambda *args: None)
    solver = REGISTRY[method](func=func, y0=y, rtol=RTOL, atol=ATOL, norm=_rms_norm, **options)   # odeint's default norm
    solver._before_integrate(torch.tensor([0.0, t1], dtype=torch.float64))
    dts, rejected = [], 0
    while solver.rk_state.t1 < t1:
        before = solver.rk_state.t1
        solver.rk_state = solver._adaptive_step(solver.rk_state)
        if solver.rk_state.t1 > before:
            dts.append((solver.rk_state.t1 - before).item())
        else:
            rejected += 1
    return dts, rejected, counter["n"]


@pytest.mark.parametrize("fast_rk", [False, True])
def test_dopri5_nfe_is_two_plus_six_per_attempted_step(cfg, fast_rk):
    field = Stiff()
    block = ODEBlock(field, cfg(), fast_rk=fast_rk)
    block(y0())
    acc, rej = block.steps_accepted, block.steps_rejected
    assert rej > 0 and acc > 0                                    # this field makes dopri5 reject some steps
    assert block.nfe_forward == field.outside == 2 + 6 * (acc + rej)   # 2 to pick h0 (FSAL), 6 per attempt
    dts, rejected, calls = by_hand(Stiff(), y0())
    assert (acc, rej, block.nfe_forward) == (len(dts), rejected, calls)
    assert solver_stats(nn.Sequential(block)) == dict(accepted=acc, rejected=rej, min_dt=block.min_dt,
                                                     accepted_backward=0, rejected_backward=0, min_dt_backward=None)


def test_min_dt_is_the_smallest_accepted_step(cfg):
    block = ODEBlock(Stiff(), cfg())
    block(y0())
    dts, rejected, _ = by_hand(Stiff(), y0())
    assert isinstance(block.min_dt, float)
    assert block.min_dt == pytest.approx(min(dts), rel=1e-9)
    assert len(dts) > 3 and block.min_dt < max(dts) / 2           # the smallest, not just any step
    # the same solve again leaves the minimum alone; one from y0 = 0 starts with a tiny step (torchdiffeq's
    # initial estimate) that becomes the minimum; a reset starts it anew
    first = block.min_dt
    block(y0())
    assert block.min_dt == first
    zero_dts, _, _ = by_hand(Stiff(), y0() * 0)
    block(y0() * 0)
    assert block.min_dt == pytest.approx(min(zero_dts), rel=1e-9) and block.min_dt < first
    first = block.min_dt
    stats = solver_stats(block, reset_min_dt=True)
    assert stats["min_dt"] == first and block.min_dt is None and block.steps_accepted == stats["accepted"]


def test_solver_stats_sum_over_blocks_and_take_the_smallest_dt(cfg):
    a, b = ODEBlock(Stiff(), cfg()), ODEBlock(Smooth(), cfg(rtol=1e-3, atol=1e-3))
    a(y0())
    b(torch.ones(1, 2, dtype=torch.float64))
    stats = solver_stats(nn.ModuleList([a, b]))
    assert stats["accepted"] == a.steps_accepted + b.steps_accepted > a.steps_accepted
    assert stats["rejected"] == a.steps_rejected + b.steps_rejected
    assert stats["min_dt"] == min(a.min_dt, b.min_dt)
    assert solver_stats(nn.Linear(2, 2))["min_dt"] is None


def test_first_step_reaches_torchdiffeq(cfg):
    y = torch.ones(1, 2, dtype=torch.float64)
    default = ODEBlock(Smooth(), cfg(rtol=1e-3, atol=1e-3))
    default(y)
    given = ODEBlock(Smooth(), cfg(rtol=1e-3, atol=1e-3, first_step=1e-3))
    given(y)
    assert given.min_dt == pytest.approx(1e-3, rel=1e-12)        # the first step, accepted, is the smallest
    assert default.min_dt > 1e-2
    # no initial-step estimate: 1 evaluation (f0) + 6 per attempted step, against 2 + 6 per step by default
    assert given.nfe_forward == 1 + 6 * (given.steps_accepted + given.steps_rejected)
    assert given.nfe_forward > default.nfe_forward
    assert solver_kwargs(cfg(first_step=1e-3))["options"] == {"first_step": 1e-3}


def test_min_and_max_step_reach_torchdiffeq(cfg):
    capped = ODEBlock(Smooth(), cfg(rtol=1e-3, atol=1e-3, max_step=0.05))
    capped(torch.ones(1, 2, dtype=torch.float64))
    assert capped.steps_accepted >= 20 and capped.min_dt <= 0.05 + 1e-12
    floored = ODEBlock(Stiff(), cfg(min_step=0.2, first_step=0.2))
    floored(y0())                                 # a step at min_step is accepted whatever its error
    assert floored.steps_rejected == 0 and floored.steps_accepted <= 5 and floored.min_dt >= 0.2 - 1e-12
    assert solver_kwargs(cfg(method="scipy_solver", max_step=0.01, min_step=0.0))["options"] == dict(
        max_step=0.01, min_step=0.0)


def test_scipy_solver_max_step_changes_its_evaluations(cfg):
    calls = {}
    for max_step in (None, 0.01):
        block = ODEBlock(Smooth(), cfg(method="scipy_solver", max_step=max_step))
        block(torch.ones(1, 2, dtype=torch.float64))
        calls[max_step] = block.nfe_forward
    assert calls[0.01] > calls[None] and calls[0.01] >= 100


def test_what_each_method_takes_comes_from_torchdiffeq():
    rk = ("first_step", "min_step", "max_step", "max_num_steps")
    for method in ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"):
        assert TAKES[method] == rk
    assert TAKES["scipy_solver"] == ("min_step", "max_step")
    for method in ("euler", "rk4", "midpoint", "explicit_adams", "implicit_adams"):
        assert TAKES[method] == ("step_size",)


@pytest.mark.parametrize("method, key", [("rk4", "min_step"), ("euler", "max_step"), ("rk4", "first_step"),
                                         ("scipy_solver", "first_step")])
def test_an_option_the_method_does_not_take_is_refused_in_one_line(compose, method, key):
    with pytest.raises(ConfigError) as err:
        validate(compose(f"solver.method={method}", f"solver.{key}=0.01"))
    msg = str(err.value)
    assert msg.startswith(f"solver.{key} is not taken by method {method};") and "\n" not in msg


@pytest.mark.parametrize("overrides", [
    [], ["solver.first_step=0.01", "solver.min_step=0", "solver.max_step=0.5"],
    ["solver.method=scipy_solver", "solver.min_step=0.001", "solver.max_step=0.5"],
    ["solver.adjoint_rtol=1e-2", "solver.adjoint_atol=1e-4", "solver.adjoint_method=rk4"],
    ["solver=rk4"], ["solver=euler"],
])
def test_good_solver_settings_pass(compose, overrides):
    validate(compose(overrides))


def test_a_config_node_without_the_new_keys_still_works():
    old = OmegaConf.create(dict(method="dopri5", rtol=1e-5, atol=1e-7, adjoint=True, adjoint_norm="default"))
    assert solver_kwargs(old) == dict(rtol=1e-5, atol=1e-7, method="dopri5", options={})
    block = ODEBlock(Stiff(), old)
    block(y0()).sum().backward()
    assert block.steps_accepted > 0 and block.steps_accepted_backward > 0


def test_looser_adjoint_tolerance_lowers_nfe_b_and_keeps_the_gradient(cfg, grads):
    field = Stiff()
    tight = ODEBlock(field, cfg(adjoint=True))
    loose = ODEBlock(field, cfg(adjoint=True, adjoint_rtol=1e-3, adjoint_atol=1e-5))
    direct = ODEBlock(field, cfg(adjoint=False))
    g_loose, g_bp = grads(loose, y0()), grads(direct, y0())
    grads(tight, y0())
    assert tight.nfe_forward == loose.nfe_forward                  # the forward solve is the same
    assert 0 < loose.nfe_backward < tight.nfe_backward / 2
    assert loose.steps_accepted_backward < tight.steps_accepted_backward
    for a, b in zip(g_loose, g_bp):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


def test_adjoint_method_solves_the_backward_pass(cfg):
    block = ODEBlock(Stiff(), cfg(adjoint=True, adjoint_method="rk4", step_size=0.01))
    block(y0()).sum().backward()
    assert block.nfe_backward == 4 * 100                           # rk4 with step_size on [0, 1], backwards
    assert block.steps_accepted > 0 and block.steps_accepted_backward == 0 and block.min_dt_backward is None


@pytest.mark.parametrize("fast_rk", [False, True])
def test_backward_steps_are_counted_apart_from_the_forward_ones(cfg, fast_rk):
    block = ODEBlock(Stiff(), cfg(adjoint=True), fast_rk=fast_rk)
    out = block(y0())
    forward = (block.steps_accepted, block.steps_rejected, block.min_dt)
    assert block.steps_accepted_backward == block.steps_rejected_backward == 0
    out.sum().backward()
    assert (block.steps_accepted, block.steps_rejected, block.min_dt) == forward   # backward solve: its own counts
    acc, rej = block.steps_accepted_backward, block.steps_rejected_backward
    assert acc > 0 and block.nfe_backward == 2 + 6 * (acc + rej)   # the adjoint ODE by dopri5: same hand count
    assert 0 < block.min_dt_backward <= 1.0


@pytest.mark.parametrize("kw", [dict(method="rk4", step_size=0.25), dict(method="scipy_solver"),
                                dict(adjoint=True, adjoint_method="euler", step_size=0.1)])
def test_solvers_without_step_callbacks_are_not_handed_them(cfg, kw):
    block = ODEBlock(Smooth(), cfg(**kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                             # torchdiffeq warns about unsupported callbacks
        out = block(torch.ones(1, 2, dtype=torch.float64, requires_grad=True))
        if out.requires_grad:                                      # scipy_solver's output has no gradient
            out.sum().backward()
    assert block.nfe_forward > 0
    if kw.get("method"):
        assert block.steps_accepted == block.steps_rejected == 0 and block.min_dt is None


class OdeTask:
    """A tiny regression through one ODE block (dopri5 without the adjoint: one forward solve per step). Its first
    three batches are zeros (torchdiffeq's initial step estimate is then tiny), the last three are not; `dts` keeps
    each step's smallest accepted dt, found by hand (`by_hand`) on the same field and batch before the step."""

    def __init__(self, solver):
        torch.manual_seed(0)
        self.model = ODEBlock(Stiff(), solver)
        self.g = torch.Generator().manual_seed(0)
        self.dts = []

    def steps_per_epoch(self):
        return 6

    def train_batches(self, epoch):
        for i in range(6):
            yield (i >= 3) * (1 + torch.rand(4, 1, dtype=torch.float64, generator=self.g))

    def loss(self, x):
        if isinstance(self.model, ODEBlock):
            with torch.no_grad():
                self.dts.append(min(by_hand(self.model.field.field, x)[0]))
        return (self.model(x) - 0.5).pow(2).mean()

    def evaluate(self, limit):
        return {"test_loss": float(self.model.field.field.w.detach())}

    def memory_batch(self):
        return torch.ones(4, 1, dtype=torch.float64)

    def finish(self, run):
        return {}


def _trainer_cfg(**over):
    t = dict(epochs=1, max_steps=None, batch_size=4, optimizer="sgd", lr=0.05, lr_batch_denom=None, momentum=0.0,
             weight_decay=0.0, milestones=[], gamma=0.1, eval_every=3, eval_limit=None, progress=False)
    return OmegaConf.create(dict(name="ode", trainer={**t, **over}))


def test_training_records_solver_statistics_per_step(tmp_path, cfg, one_thread):
    task = OdeTask(cfg())
    summary = fit(_trainer_cfg(), task, RunDir(tmp_path), torch.device("cpu"))
    assert summary["status"] == "ok" and summary["steps"] == 6
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [3, 6] and rows[1]["final"]
    for r in rows:                                                 # 3 training steps each
        assert r["solver_accepted"] > 0
        assert r["nfe_forward"] == pytest.approx(2 + 6 * (r["solver_accepted"] + r["solver_rejected"]))
        assert isinstance(r["solver_min_dt"], float) and 0 < r["solver_min_dt"] < 1
    # each line's smallest step is its own window's (3 steps), not the run's so far
    assert rows[0]["solver_min_dt"] == pytest.approx(min(task.dts[:3]), rel=1e-9)
    assert rows[1]["solver_min_dt"] == pytest.approx(min(task.dts[3:]), rel=1e-9)
    assert rows[1]["solver_min_dt"] > 10 * rows[0]["solver_min_dt"]
    assert summary["solver_rejected"] > 0 and rows[1]["solver_rejected"] > 0
    assert summary["nfe_forward"] == pytest.approx(2 + 6 * (summary["solver_accepted"] + summary["solver_rejected"]))
    assert summary["solver_accepted"] == pytest.approx((rows[0]["solver_accepted"] + rows[1]["solver_accepted"]) / 2)
    assert summary["solver_min_dt"] == min(rows[0]["solver_min_dt"], rows[1]["solver_min_dt"])
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    for acc in (ckpt["totals"], ckpt["window"]):                   # plain data only: never a tensor
        assert all(v is None or type(v) in (int, float) for v in acc.values()), acc
    assert type(ckpt["totals"]["solver_min_dt"]) is float and type(ckpt["totals"]["solver_acc"]) is int
    assert nfe(task.model)[0] > 0


def test_a_model_without_ode_records_no_steps(tmp_path, one_thread):
    class Plain(OdeTask):
        def __init__(self):
            torch.manual_seed(0)
            self.model = nn.Linear(1, 1).double()
            self.g = torch.Generator().manual_seed(0)

        def evaluate(self, limit):
            return {"test_loss": 0.0}

    summary = fit(_trainer_cfg(), Plain(), RunDir(tmp_path), torch.device("cpu"))
    assert (summary["solver_accepted"], summary["solver_rejected"], summary["solver_min_dt"]) == (0, 0, None)
    assert all(r["solver_min_dt"] is None for r in read_metrics(tmp_path))


def test_backward_solve_switches_a_backprop_block_to_the_adjoint_and_back(cfg, grads):
    field = Stiff()
    block = ODEBlock(field, cfg(adjoint=False))
    saved = dict(block.adjoint_kwargs)
    g_bp = grads(block, y0())                                     # backprop through the solver: no NFE-B
    assert block.nfe_backward == 0
    with block.backward_solve("seminorm", 1e-3, 1e-5):
        assert block.adjoint and block.adjoint_kwargs["adjoint_options"]["norm"] == "seminorm"
        g_adj = grads(block, y0())
    semi_b = block.nfe_backward
    assert semi_b > 0
    for a, b in zip(g_adj, g_bp):                                  # same gradient by another route
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)
    assert block.adjoint is False and block.adjoint_kwargs == saved
    with block.backward_solve("default"):                          # None: the forward tolerances (tight)
        grads(block, y0())
    assert block.nfe_backward - semi_b > semi_b                    # tighter backward solve: more evaluations
    with pytest.raises(ValueError, match="norm must be"):
        with block.backward_solve("l2"):
            pass
