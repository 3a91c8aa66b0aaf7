"""The meter (core/meter.py): what a stretch of work did, counted by a field that counts its own calls and by
torchdiffeq's step callbacks seen from outside, against `Count`; counts made aside; the evaluation's NFE per solve;
the meter's sums surviving a checkpoint."""
import pytest
import torch
from torch import nn

from node_cli.core.meter import Count, Meter
from node_cli.core.solve import ODEBlock


class SelfCounting(nn.Module):
    """dy/dt = A y, counting its own calls (independent of node-run's CountedField)."""

    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return y @ self.A.T


def y0():
    return torch.tensor([[2.0, 0.0]], dtype=torch.float64)


@pytest.fixture
def block(solver_cfg):
    return ODEBlock(SelfCounting(), solver_cfg(rtol=1e-6, atol=1e-8, adjoint=False))


def test_count_measures_evaluations_and_solves_of_the_block_inside_it(block):
    field = block.field.field
    block(y0())                                   # before the count: not counted
    before = field.calls
    with Count(nn.Sequential(block)) as c:
        block(y0())
        block(y0(), torch.linspace(0, 3, 7, dtype=torch.float64))
    assert c.nfe_forward == field.calls - before > 0
    assert c.solves == 2 and c.per_solve == pytest.approx((field.calls - before) / 2)
    assert c.nfe_backward == 0


def test_a_count_made_aside_is_taken_out_of_the_enclosing_count(block):
    field = block.field.field
    with Count(nn.Sequential(block)) as outer:
        start = field.calls
        block(y0())                                # the enclosing count's own solve
        own = field.calls - start
        with Count(nn.Sequential(block), aside=True) as inner:
            block(y0(), torch.linspace(0, 5, 3, dtype=torch.float64))
            block(y0(), torch.linspace(0, 5, 3, dtype=torch.float64))
        with Count(nn.Sequential(block)) as nested:   # not aside: stays in the enclosing count
            block(y0())
    assert inner.solves == 2 and inner.nfe_forward == field.calls - start - own - nested.nfe_forward
    assert outer.solves == 2 and outer.nfe_forward == own + nested.nfe_forward
    assert outer.per_solve == pytest.approx((own + nested.nfe_forward) / 2)


def test_the_smallest_step_of_a_count_is_its_own_and_the_block_keeps_the_smallest_overall(block):
    steps = []
    block.field.callback_accept_step = lambda t0, y, dt: steps.append(abs(float(torch.as_tensor(dt).detach()))) or \
        block.field.forward_steps.accept(t0, y, dt)   # see every accepted step from outside
    with block.tolerance(1e-9, 1e-11):
        block(y0(), torch.linspace(0, 4, 3, dtype=torch.float64))   # tight: small steps
    tight = min(steps)
    steps.clear()
    with Count(nn.Sequential(block)) as c:
        with block.tolerance(1e-3, 1e-4):
            block(y0(), torch.linspace(0, 4, 3, dtype=torch.float64))
    assert c.solver_min_dt == pytest.approx(min(steps), rel=1e-12) and c.solver_min_dt > tight
    assert block.min_dt == pytest.approx(tight, rel=1e-12)   # the block's running minimum is not lost


class TwoSolves(nn.Module):
    def __init__(self, solver_cfg):
        super().__init__()
        self.short = ODEBlock(SelfCounting(), solver_cfg(rtol=1e-6, atol=1e-8, adjoint=False))
        self.long = ODEBlock(SelfCounting(), solver_cfg(rtol=1e-6, atol=1e-8, adjoint=False))


def test_the_evaluation_nfe_is_per_forward_solve_over_every_block(solver_cfg):
    model = TwoSolves(solver_cfg)
    meter = Meter(model, torch.device("cpu"))
    fields = model.short.field.field, model.long.field.field

    def evaluate():
        model.short(y0())
        model.long(y0(), torch.linspace(0, 10, 5, dtype=torch.float64))
        model.long(y0(), torch.linspace(0, 10, 5, dtype=torch.float64))
        return dict(test_metric=1.5)

    result = meter.evaluation(evaluate)
    assert result["test_metric"] == 1.5
    assert result["eval_nfe_forward"] == pytest.approx(sum(f.calls for f in fields) / 3)


def test_the_meter_sums_steps_into_window_and_totals_and_a_checkpoint_gives_them_back(block):
    model = nn.Sequential(block)
    field = block.field.field
    meter = Meter(model, torch.device("cpu"))
    calls = []
    for loss in (1.0, 3.0):
        start = field.calls
        meter.step(lambda: block(y0()).sum().item() * 0 + loss)
        calls.append(field.calls - start)
    row = meter.row()
    assert row["train_loss"] == 2.0 and row["nfe_forward"] == pytest.approx(sum(calls) / 2)
    assert meter.window["steps"] == 0 and meter.totals["steps"] == 2      # a new window; the totals go on
    meter.step(lambda: 5.0)                                              # a step without a solve
    again = Meter(model, torch.device("cpu"))
    again.load_state(meter.state())
    assert again.totals == meter.totals and again.window == meter.window
    summary = again.summary(batch_size=10)
    assert summary["nfe_forward"] == pytest.approx(sum(calls) / 3) and "train_loss" not in summary
    assert summary["examples_per_sec"] == pytest.approx(30 / meter.totals["sec_per_step"])


def test_a_checkpoint_written_before_the_meter_resumes_its_sums():
    old = dict(totals=dict(loss=6.0, steps=3, nfe_f=60, nfe_b=30, time=1.5),   # no solver keys yet
               window=dict(loss=2.0, steps=1, nfe_f=20, nfe_b=10, time=0.5, solver_acc=3, solver_rej=1,
                           solver_min_dt=0.25))
    meter = Meter(nn.Linear(1, 1), torch.device("cpu"))
    meter.load_state(old)
    assert meter.totals == dict(steps=3, train_loss=6.0, nfe_forward=60, nfe_backward=30, solver_accepted=0,
                                solver_rejected=0, sec_per_step=1.5, solver_min_dt=None)
    assert meter.row() == dict(train_loss=2.0, nfe_forward=20.0, nfe_backward=10.0, solver_accepted=3.0,
                               solver_rejected=1.0, sec_per_step=0.5, solver_min_dt=0.25)
