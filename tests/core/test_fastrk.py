"""The fast Runge-Kutta arithmetic (core/fastrk.py) computes what torchdiffeq's own does: the same trajectory,
gradients and steps (NFE) in float64 and float32, with and without the adjoint, for tensor and tuple states; it is
registered only on first use, and an untested torchdiffeq falls back with one warning. Also the light graph
(core/rkgraph.py) and the compiled step (core/rkcompile.py), which exist only inside the fast path."""
import copy
import importlib
import json
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from node_cli.core import fastrk, rkcompile, rkgraph
from node_cli.core.solve import ODEBlock
from node_cli.families.mnist.models import ConvField

REGISTRY = importlib.import_module("torchdiffeq._impl.odeint").SOLVERS   # torchdiffeq's method name -> solver


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny checks: one thread beats two fighting over a CPU


class Spiral(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(3, 3).double()

    def forward(self, t, y):
        return torch.tanh(self.lin(y)) * torch.cos(t)


@pytest.mark.parametrize("method", sorted(fastrk.available()))
def test_fast_rk_matches_every_adaptive_runge_kutta_method(solver_cfg, method):
    field = Spiral()
    y0 = torch.tensor([[0.3, -0.5, 0.8], [1.0, 0.2, -0.1]], dtype=torch.float64)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    out = []
    for fast in (False, True):
        block = ODEBlock(field, solver_cfg(method=method, rtol=1e-6, atol=1e-8, adjoint=False), fast_rk=fast)
        assert block.kwargs["method"] == (fastrk.method(method) if fast else method)
        y = y0.clone().requires_grad_(True)
        traj = block(y, t)                    # interior output times: the dense output is used
        traj.pow(2).sum().backward()
        out.append((traj.detach(), y.grad, block.nfe_forward))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-10, atol=1e-12)
    assert out[0][2] == out[1][2] > 0


def test_fast_rk_leaves_fixed_grid_methods_alone(solver_cfg):
    block = ODEBlock(Spiral(), solver_cfg(method="rk4", step_size=0.25, adjoint=False), fast_rk=True)
    assert block.kwargs["method"] == "rk4"
    fast = ODEBlock(Spiral(), solver_cfg(), fast_rk=True).kwargs["method"]
    assert fast == fastrk.available()["dopri5"] == "dopri5" + fastrk.SUFFIX


class PairConvField(nn.Module):
    """A tuple state (feature maps, one number per example), as a CNF's (z, log p): the MNIST conv field on the
    maps, and for the number a function of the maps alone (as d log p/dt = -tr df/dz)."""

    def __init__(self, c):
        super().__init__()
        self.conv = ConvField(c)

    def forward(self, t, state):
        h, _ = state
        return self.conv(t, h), -torch.tanh(h).pow(2).mean((1, 2, 3))[:, None]


def run_block(field, solver, fast, state, t=None):
    """Output, input and parameter gradients, and (NFE-F, NFE-B) of one forward + backward."""
    block = ODEBlock(copy.deepcopy(field), solver, fast_rk=fast)
    state = tuple(s.clone().requires_grad_(True) for s in state)
    out = block(state if len(state) > 1 else state[0], t)
    outs = out if isinstance(out, tuple) else (out,)
    sum(o.pow(2).mean() for o in outs).backward()
    grads = [s.grad for s in state] + [p.grad for p in block.parameters()]
    return [o.detach() for o in outs], grads, (block.nfe_forward, block.nfe_backward)


@pytest.mark.parametrize("tuple_state", [False, True])
@pytest.mark.parametrize("adjoint, tol", [(True, 1e-3), (True, 1e-5), (False, 1e-4)])
def test_float32_fast_path_takes_the_plain_steps_on_the_mnist_conv_field(solver_cfg, adjoint, tol, tuple_state):
    torch.manual_seed(0)
    field = PairConvField(8) if tuple_state else ConvField(8)
    g = torch.Generator().manual_seed(0)
    state = (torch.randn(4, 8, 6, 6, generator=g),) + ((torch.zeros(4, 1),) if tuple_state else ())
    solver = solver_cfg(rtol=tol, atol=tol, adjoint=adjoint)
    (plain_out, plain_grads, plain_nfe), (fast_out, fast_grads, fast_nfe) = (
        run_block(field, solver, fast, state) for fast in (False, True))
    assert all(x.dtype == torch.float32 for x in plain_out + fast_out)
    assert fast_nfe == plain_nfe and plain_nfe[0] > 8                   # the same steps, forward and backward
    assert (plain_nfe[1] > 8) == adjoint
    for a, b in zip(plain_out, fast_out):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert len(plain_grads) == len(fast_grads) == len(state) + len(list(field.parameters()))
    scale = max(g.abs().max().item() for g in plain_grads)
    for a, b in zip(plain_grads, fast_grads):                              # y0 and every parameter
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * scale)


def test_untested_torchdiffeq_falls_back_with_one_warning(monkeypatch, solver_cfg):
    registry = dict(REGISTRY)
    monkeypatch.setattr(fastrk, "TESTED", ("0.0.0",))       # restored after the test, with _FAST
    monkeypatch.setattr(fastrk, "_FAST", None)
    with pytest.warns(RuntimeWarning, match="untested version") as caught:
        assert fastrk.method("dopri5") == "dopri5"          # the method name, unchanged
    assert len(caught) == 1 and "model.fast_rk" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # once: no second warning
        assert fastrk.method("dopri5") == "dopri5" and fastrk.method("bosh3") == "bosh3"
        assert fastrk.available() == {}
        block = ODEBlock(Spiral(), solver_cfg(adjoint=False), fast_rk=True)
        assert block.kwargs["method"] == "dopri5"
        block(torch.ones(1, 3, dtype=torch.float64))           # and it solves, with torchdiffeq's own arithmetic
    assert dict(REGISTRY) == registry                           # the fallback added no method


IMPORT_CHECK = """
import importlib, json
o = importlib.import_module("torchdiffeq._impl.odeint")
before = set(o.SOLVERS)
import node_cli.core.solve, node_cli.cli, node_cli.report.build, node_cli.bench.cli
import node_cli.families.mnist.models, node_cli.families.flows.models, node_cli.families.spirals.models
from node_cli.core import fastrk, rkcompile, rkgraph
imported = dict(added=sorted(set(o.SOLVERS) - before), fast=fastrk._FAST)
name = fastrk.method("dopri5")
print(json.dumps(dict(imported=imported, name=name, added=sorted(set(o.SOLVERS) - before))))
"""


def test_importing_registers_nothing_until_first_use():
    r = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["imported"] == {"added": [], "fast": None}        # importing node-run touches no registry
    assert got["name"] == "dopri5" + fastrk.SUFFIX
    assert got["added"] and all(n.endswith(fastrk.SUFFIX) for n in got["added"])   # only new names, on first use
    assert "dopri5" + fastrk.SUFFIX in got["added"]


class Decay(nn.Module):
    """A small MLP field on a float32 state, as the dynamics family's (fixed weights)."""

    def __init__(self, dim=2):
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, dim))

    def forward(self, t, y):
        return self.net(y) - 0.3 * y


def steps_and_solution(block, y0, t):
    """(accepted, rejected, NFE-F, NFE-B) and the outputs, input and parameter gradients of one forward + backward."""
    y = y0.clone().requires_grad_(True)
    out = block(y, t)
    (out.pow(2).sum() + out.sum()).backward()
    grads = [y.grad] + [p.grad.clone() for p in block.parameters()]
    counts = (block.steps_accepted, block.steps_rejected, block.nfe_forward, block.nfe_backward)
    return counts, out.detach(), grads


@pytest.mark.parametrize("dtype, tol, grad_tol", [(torch.float64, 1e-10, 1e-9), (torch.float32, 1e-5, 1e-3)])
@pytest.mark.parametrize("adjoint", [False, True])
def test_many_output_times_per_step_take_torchdiffeqs_steps_values_and_gradients(solver_cfg, adjoint, dtype, tol,
                                                                                 grad_tol):
    """Hundreds of requested times, several inside each step (the latent ODE's union grid, ode_demo's windows):
    the batched dense output gives torchdiffeq's values, the same accepted/rejected steps and NFE, forward and
    backward (the adjoint's backward solve included), to rounding (float32's accumulates over the steps and, in
    the adjoint, over its 300 restarts of the backward solve)."""
    field = Decay().to(dtype)
    y0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)).to(dtype)
    t = torch.sort(torch.rand(300, generator=torch.Generator().manual_seed(1)) * 3).values
    t = torch.cat([torch.zeros(1), t]).to(dtype)
    solver = solver_cfg(rtol=1e-5, atol=1e-6, adjoint=adjoint)
    plain, fast = (steps_and_solution(ODEBlock(copy.deepcopy(field), solver, fast_rk=f), y0, t) for f in (False, True))
    assert plain[0] == fast[0] and plain[0][0] > 3                 # same steps, several times per step
    assert (plain[0][3] > 0) == adjoint
    torch.testing.assert_close(fast[1], plain[1], rtol=tol, atol=tol)
    for a, b in zip(plain[2], fast[2]):
        torch.testing.assert_close(b, a, rtol=grad_tol, atol=grad_tol)


def test_solver_fast_rk_false_is_plain_torchdiffeq(solver_cfg):
    """The switch: solver.fast_rk (true by default) picks the fast method name; false gives torchdiffeq's own."""
    assert ODEBlock(Decay(), solver_cfg()).kwargs["method"] == "dopri5" + fastrk.SUFFIX
    assert ODEBlock(Decay(), solver_cfg(fast_rk=False)).kwargs["method"] == "dopri5"
    assert ODEBlock(Decay(), solver_cfg(fast_rk=False), fast_rk=True).kwargs["method"] == "dopri5" + fastrk.SUFFIX


def test_fast_step_size_control_is_torchdiffeqs():
    """The float step-size rule against torchdiffeq's tensor one, over ratios below, at and above 1 and at 0."""
    from torchdiffeq._impl.misc import _optimal_step_size

    f64 = dict(dtype=torch.float64)
    consts = [torch.tensor(v, **f64) for v in (0.9, 10.0, 0.2)]
    for order in (2, 3, 5, 8):
        for ratio in (0.0, 1e-9, 0.3, 1.0, 1.7, 50.0, 1e6):
            for last in (1e-4, 0.37):
                args = (torch.tensor(last, **f64), torch.tensor(ratio, dtype=torch.float32), *consts, order)
                assert fastrk._fast_optimal_step_size(*args).item() == pytest.approx(
                    _optimal_step_size(*args).item(), rel=1e-15, abs=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_each_row_at_its_own_times_is_the_union_grid_solve(solver_cfg, dtype, tol):
    """ODEBlock(y0, t) with t [B, k] (the latent ODE's irregular times): the fast path reads each row from the step
    polynomial that holds its time; the plain path (solver.fast_rk=false) solves at the sorted union of all times
    and gathers, and so does an independent union solve here. Same steps and NFE, same values and gradients."""
    field = Decay(3).to(dtype)
    g = torch.Generator().manual_seed(2)
    y0 = torch.randn(6, 3, generator=g).to(dtype)
    t = torch.sort(torch.rand(6, 7, generator=g) * 2.5, dim=1).values.to(dtype)
    t[0, 0] = 0.0                                                    # a time at the start: y0 itself
    t[1, 3] = t[2, 5]                                                # a time shared by two rows
    solver = solver_cfg(rtol=1e-6, atol=1e-7, adjoint=False)
    got = {}
    for fast in (False, True):
        block = ODEBlock(copy.deepcopy(field), solver, fast_rk=fast)
        y = y0.clone().requires_grad_(True)
        out = block(y, t)
        out.pow(2).sum().backward()
        got[fast] = (out.detach(), [y.grad] + [p.grad for p in block.parameters()],
                     (block.steps_accepted, block.steps_rejected, block.nfe_forward))
    union = ODEBlock(copy.deepcopy(field), solver, fast_rk=False)
    grid, where = torch.unique(torch.cat([t.new_zeros(1), t.reshape(-1)]), sorted=True, return_inverse=True)
    with torch.no_grad():
        independent = union(y0, grid)[where[1:].view(t.shape), torch.arange(6)[:, None]]
    assert got[True][0].shape == (6, 7, 3)
    assert got[True][2] == got[False][2] == (union.steps_accepted, union.steps_rejected, union.nfe_forward)
    assert got[True][2][0] > 3
    torch.testing.assert_close(got[True][0][0, 0], y0[0], rtol=0, atol=0)
    torch.testing.assert_close(got[False][0], independent, rtol=0, atol=0)
    torch.testing.assert_close(got[True][0], independent, rtol=tol, atol=tol)
    for a, b in zip(got[False][1], got[True][1]):
        torch.testing.assert_close(b, a, rtol=10 * tol, atol=10 * tol)


def test_first_step_without_gradient_is_torchdiffeq_given_that_first_step(solver_cfg):
    """solver.first_step_grad=false: torchdiffeq's own first-step estimate, made without a graph. The solve is
    torchdiffeq's default one (same steps, NFE and values), and its gradients are those of torchdiffeq told that
    very first step (solver.first_step: a constant), which evaluates the field once less (no estimate)."""
    from torchdiffeq._impl.misc import _rms_norm, _select_initial_step

    field = Decay(3).double()
    y0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.linspace(0, 2, 6, dtype=torch.float64)
    rtol, atol = 1e-6, 1e-7
    with torch.no_grad():
        f64 = dict(dtype=torch.float64)
        dt0 = _select_initial_step(field, t[0], y0, 4, torch.tensor(rtol, **f64), torch.tensor(atol, **f64),
                                   _rms_norm, f0=field(t[0], y0)).item()
    runs = {}
    for label, cfg, fast in (("no grad", dict(first_step_grad=False), True), ("default", {}, False),
                             ("given", dict(first_step=dt0), False)):
        block = ODEBlock(copy.deepcopy(field), solver_cfg(rtol=rtol, atol=atol, adjoint=False, **cfg), fast_rk=fast)
        runs[label] = steps_and_solution(block, y0, t)
    (counts, out, grads), (d_counts, d_out, d_grads), (g_counts, g_out, g_grads) = (
        runs["no grad"], runs["default"], runs["given"])
    assert counts == d_counts and counts[2] == g_counts[2] + 1 and counts[:2] == g_counts[:2]
    torch.testing.assert_close(out, d_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, g_out, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_grads, grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert any((a - b).abs().max() > 1e-12 for a, b in zip(d_grads, grads))   # torchdiffeq's differs: dt0's path


# One autograd node per stage sum and per step's dense output (rkgraph.StageSum, rkgraph.DenseOutput)
# ---------------------------------------------------------------------------------------------------------------

def _graph_nodes(out, leave_out=()):
    """The autograd nodes the backward of `out` would run (a walk of its grad_fn graph), those whose kind is in
    `leave_out` left out."""
    seen, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo += [n for n, _ in node.next_functions]
    return len([n for n in seen if type(n).__name__ not in leave_out])


class Accepted(nn.Module):
    """Decay's field that records (t0, y0, dt) of every accepted step (torchdiffeq's callback)."""

    def __init__(self, dim):
        super().__init__()
        self.inner, self.steps = Decay(dim), []

    def forward(self, t, y):
        return self.inner(t, y)

    def callback_accept_step(self, t0, y0, dt):
        self.steps.append((t0.detach().clone(), y0.detach().clone(), dt.detach().clone()))


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "fehlberg2"])
def test_light_graph_takes_torchdiffeqs_steps_with_its_first_step_to_the_bit_and_its_gradients(method, monkeypatch):
    """Backprop through the solver in float32, the dynamics family's setting: torchdiffeq differentiates its
    first step size, so that step runs torchdiffeq's own ops in one node per stage. Against torchdiffeq's own
    method on a fixed field: the same accepted steps and NFE, the first step's result to the bit (the next step
    starts from it), the solution and gradients (y0, parameters) to float32 rounding. The later steps' sizes
    follow float32 error estimates that are mostly rounding (a sum of stages that cancels to ~1e-6), so they move
    by ~1e-4 with any other summation order: there the light graph is to the bit the op-by-op fast arithmetic."""
    import torchdiffeq

    y0 = torch.randn(20, 1, 2, generator=torch.Generator().manual_seed(5))
    t = torch.linspace(0, 1.5, 10)
    runs = {}
    for label, name, light in (("plain", method, True), ("recorded", fastrk.method(method), False),
                               ("light", fastrk.method(method), True)):
        monkeypatch.setattr(fastrk, "LIGHT_GRAPH", light)
        field = Accepted(2)
        counted = [0]

        def f(t_, y_, field=field):
            counted[0] += 1
            return field(t_, y_)
        f.callback_accept_step = field.callback_accept_step
        y = y0.clone().requires_grad_(True)
        out = torchdiffeq.odeint(f, y, t, rtol=1e-5, atol=1e-6, method=name)
        (out.pow(2).sum() + out.sum()).backward()
        runs[label] = (field.steps, counted[0], out.detach(), [y.grad] + [p.grad for p in field.parameters()])
    (p_steps, p_nfe, p_out, p_grads), (f_steps, f_nfe, f_out, f_grads) = runs["plain"], runs["light"]
    assert f_nfe == p_nfe and len(f_steps) == len(p_steps) >= 3
    assert torch.equal(f_steps[0][2], p_steps[0][2]) and torch.equal(f_steps[1][1], p_steps[1][1])  # to the bit
    for (_, _, dt_a), (_, _, dt_b) in zip(p_steps, f_steps):
        torch.testing.assert_close(dt_b, dt_a, rtol=1e-2, atol=0)
    for a, b in zip(runs["recorded"][0], f_steps):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    torch.testing.assert_close(f_out, p_out, rtol=1e-5, atol=1e-6)
    for a, b in zip(p_grads, f_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


@pytest.mark.parametrize("with_dt_grad", [False, True])
def test_stage_sum_node_differentiates_like_finite_differences_and_torchdiffeqs_ops(with_dt_grad):
    """One stage sum y0 + sum_j (beta_j dt) k_j as one node, in its fast form (float coefficients) and in
    torchdiffeq's form (its stage-last buffer, dt carrying a gradient): values and gradients against the same sum
    recorded op by op, and gradcheck (finite differences) in float64."""
    g = torch.Generator().manual_seed(7)
    beta = torch.tensor([0.3, 0.0, -0.7, 1.1], dtype=torch.float64)
    dt = torch.tensor(0.25, dtype=torch.float64, requires_grad=with_dt_grad)
    y0 = torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    ks = [torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True) for _ in beta]

    def node(dt, y0, *ks):
        buffer = torch.stack([k.detach() for k in ks], -1) if with_dt_grad else None
        c = beta * dt.detach()
        return rkgraph.StageSum.apply(c.tolist(), c, beta, dt, buffer, y0, *ks)

    inputs = (dt, y0, *ks)
    recorded = y0 + sum(b * dt * k for b, k in zip(beta, ks))
    torch.testing.assert_close(node(*inputs), recorded, rtol=1e-14, atol=1e-14)
    w = torch.randn(3, 2, generator=g, dtype=torch.float64)
    wanted = [x for x in inputs if x.requires_grad]
    ours = torch.autograd.grad((node(*inputs) * w).sum(), wanted, allow_unused=True)
    theirs = torch.autograd.grad((recorded * w).sum(), wanted, allow_unused=True)
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(torch.zeros_like(a) if b is None else b, a, rtol=1e-13, atol=1e-13)
    assert torch.autograd.gradcheck(node, inputs)


def test_dense_output_node_is_torchdiffeqs_fit_and_evaluation_with_gradients_through_x_and_dt():
    """A step's dense output as one matrix product and one node, against torchdiffeq's own _interp_fit and
    polynomial evaluation recorded op by op (values and gradients for x, dt, y0, y1 and every stage), and gradcheck
    in float64."""
    from torchdiffeq._impl.dopri5 import Dopri5Solver
    from torchdiffeq._impl.interp import _interp_fit

    mid = Dopri5Solver.mid.double()
    g = torch.Generator().manual_seed(8)
    new = dict(dtype=torch.float64, requires_grad=True)
    y0, y1 = torch.randn(3, 2, generator=g, **new), torch.randn(3, 2, generator=g, **new)
    ks = [torch.randn(3, 2, generator=g, **new) for _ in range(7)]
    dt = torch.tensor(0.3, **new)
    x = torch.tensor([0.0, 0.1, 0.5, 0.93, 1.0], **new)

    def ours(x, dt, y0, y1, *ks):
        return rkgraph.DenseOutput.apply(x, dt, mid.tolist(), y0, y1, *ks)

    def torchdiffeqs(x, dt, y0, y1, *ks):
        y_mid = y0 + torch.sum(torch.stack(ks, -1) * (dt * mid), dim=-1)
        coefficients = _interp_fit(y0, y1, y_mid, ks[0], ks[-1], dt)
        xs = x.view(-1, 1, 1)
        return fastrk._evaluate(coefficients, xs)

    inputs = (x, dt, y0, y1, *ks)
    torch.testing.assert_close(ours(*inputs), torchdiffeqs(*inputs), rtol=1e-13, atol=1e-13)
    w = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    a = torch.autograd.grad((ours(*inputs) * w).sum(), inputs)
    b = torch.autograd.grad((torchdiffeqs(*inputs) * w).sum(), inputs)
    for got, want in zip(a, b):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(ours, inputs)


def test_light_graph_records_a_few_nodes_per_step_instead_of_tens(solver_cfg, monkeypatch):
    """The graph a backprop-through-the-solver solve leaves for backward, the field's own nodes left out (an MLP
    whose node kinds, found by one evaluation, the solver never makes), per step: with the light graph (the
    default) one node per stage sum and per dense output (and the solve's own few, the first step's size among
    them: 20 per step on this 3-step solve), under a third of the nodes when each stage sum and dense output is
    recorded op by op, and fewer again than torchdiffeq's own arithmetic; the same gradients (to rounding)."""
    y0 = torch.randn(20, 1, 2, generator=torch.Generator().manual_seed(9))
    t = torch.linspace(0, 1.5, 10)
    mlp = Decay().net
    field_kinds = {"AccumulateGrad"} | {
        type(n).__name__ for n in _walk(mlp(torch.ones(1, 1, 2, requires_grad=True)).grad_fn)}
    per_step, grads = {}, {}
    for label, fast, light in (("plain", False, True), ("recorded", True, False), ("light", True, True)):
        monkeypatch.setattr(fastrk, "LIGHT_GRAPH", light)
        block = ODEBlock(copy.deepcopy(mlp), solver_cfg(rtol=1e-5, atol=1e-6, adjoint=False), fast_rk=fast)
        block.field.field = FieldOf(block.field.field)
        y = y0.clone().requires_grad_(True)
        out = block(y, t)
        per_step[label] = _graph_nodes(out, field_kinds) / (block.steps_accepted + block.steps_rejected)
        out.pow(2).sum().backward()
        grads[label] = [y.grad] + [p.grad for p in block.parameters()]
    assert per_step["light"] * 3 < per_step["recorded"] < per_step["plain"]
    for a, b in zip(grads["plain"], grads["light"]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


class FieldOf(nn.Module):
    """f(t, y) = net(y)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, t, y):
        return self.net(y)


def _walk(fn):
    seen, todo = set(), [fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [n for n, _ in node.next_functions]
    return seen


# solver.compile=true: the step body torch.compile'd (rkcompile.CompiledStages)
# ---------------------------------------------------------------------------------------------------------------

class TimedMLP(nn.Module):
    """dynamics_cubic's 2-50-2 tanh field, made time-dependent so that the compiled step's stage times count."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


def _compile_skip_reason():
    return rkcompile._compile_unavailable(torch.device("cpu"))


def _compile_runs(solver_cfg, compile_flags):
    y0 = torch.randn(20, 2, generator=torch.Generator().manual_seed(5))
    t = torch.linspace(0, 8, 10)
    runs = []
    for flag in compile_flags:
        block = ODEBlock(TimedMLP(), solver_cfg(rtol=1e-5, atol=1e-6, adjoint=False, compile=flag))
        runs.append((block, *steps_and_solution(block, y0, t)))
    return runs


@pytest.mark.skipif(_compile_skip_reason() is not None, reason=f"torch.compile unavailable: {_compile_skip_reason()}")
def test_compiled_step_takes_the_eager_steps_values_and_gradients(solver_cfg):
    """dopri5 at dynamics_cubic's tolerances, backprop through the solver: the compiled step body gives the eager
    fast path's accepted and rejected steps and NFE, and its values and gradients to float32 rounding (a compiled
    kernel may fuse and reorder the same float32 operations), also after the weights change in place (as an
    optimizer step changes them: the compiled graph reads them, it did not bake them in). One shape, one grad
    mode: one compilation."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="solver.compile")          # no fallback here
        (eager, *e_run), (block, *run) = _compile_runs(solver_cfg, (False, True))
        y0 = torch.randn(20, 2, generator=torch.Generator().manual_seed(6))
        for b in (eager, block):
            b.zero_grad()
            with torch.no_grad():
                b.field.field.net[0].weight.mul_(1.5)
        e_run2, run2 = (steps_and_solution(b, y0, torch.linspace(0, 8, 10)) for b in (eager, block))
    since = lambda second, first: (tuple(b - a for a, b in zip(first[0], second[0])), *second[1:])  # noqa: E731
    e_run2, run2 = since(e_run2, e_run), since(run2, run)                   # the counts are the block's totals
    compiled = rkcompile._COMPILED[block.field]
    assert compiled.fn not in (None, False) and compiled.counter is block.field   # the compiled body ran
    assert "compile" not in eager.kwargs["options"] and block.kwargs["options"]["compile"] is True
    for (e_counts, e_out, e_grads), (counts, out, grads) in ((e_run, run), (e_run2, run2)):
        assert counts == e_counts and counts[0] > 8 and counts[1] > 0
        assert counts[2] == 2 + 6 * (counts[0] + counts[1])                # dopri5's NFE, counted outside the graph
        torch.testing.assert_close(out, e_out, rtol=1e-5, atol=1e-6)
        scale = max(g.abs().max().item() for g in e_grads)
        for a, b in zip(e_grads, grads):                                   # y0 and every parameter
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * scale)
    assert not torch.equal(run[1], run2[1])                                # the second solve is another one


def test_compile_unavailable_falls_back_to_the_eager_step_with_one_warning(monkeypatch, solver_cfg):
    """Without a compiler (faked): one warning that names the reason, then exactly the eager fast path's solve."""
    monkeypatch.setattr(rkcompile, "_compile_unavailable", lambda device: "no C++ compiler (test)")
    monkeypatch.setattr(rkcompile, "_COMPILE_WARNED", False)
    with pytest.warns(RuntimeWarning, match=r"solver.compile: .*no C\+\+ compiler \(test\)") as caught:
        (_, e_counts, e_out, e_grads), (block, counts, out, grads), *_ = _compile_runs(solver_cfg, (False, True, True))
    assert len([w for w in caught if "solver.compile" in str(w.message)]) == 1
    assert rkcompile._COMPILED[block.field].fn is False
    assert counts == e_counts
    assert torch.equal(out, e_out) and all(torch.equal(a, b) for a, b in zip(e_grads, grads))
