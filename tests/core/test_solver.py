"""The ODE block: adjoint gradients against backprop and finite differences; NFE against what the solver did."""
import pytest
import torch
from torch import nn

from node_cli.core.solve import ODEBlock, nfe


@pytest.fixture
def solver(solver_cfg):
    """This file's solver: tight dopri5 with the adjoint, `kw` on top."""
    return lambda **kw: solver_cfg(**{"rtol": 1e-7, "atol": 1e-9, "adjoint": True, **kw})


class Field(nn.Module):
    """A small non-linear, time-dependent vector field; `outside` counts calls independently of node-run."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 3).double()
        self.outside = 0

    def forward(self, t, y):
        self.outside += 1
        return torch.tanh(self.lin(y)) * (1 + t)


def test_adjoint_gradient_matches_backprop_and_finite_differences(solver, grads):
    field = Field()
    y0 = torch.tensor([[0.3, -0.5, 0.8]], dtype=torch.float64)
    adjoint = ODEBlock(field, solver(adjoint=True))
    direct = ODEBlock(field, solver(adjoint=False))
    g_adj, g_bp = grads(adjoint, y0), grads(direct, y0)
    for a, b in zip(g_adj, g_bp):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # central finite differences on the weight matrix and on y0
    w = field.lin.weight
    eps = 1e-6
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        with torch.no_grad():
            w[i, j] += eps
            up = direct(y0).pow(2).sum().item()
            w[i, j] -= 2 * eps
            down = direct(y0).pow(2).sum().item()
            w[i, j] += eps
        assert g_adj[1][i, j].item() == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-8)
    for k in range(3):
        e = torch.zeros_like(y0)
        e[0, k] = eps
        with torch.no_grad():
            fd = (direct(y0 + e).pow(2).sum() - direct(y0 - e).pow(2).sum()).item() / (2 * eps)
        assert g_adj[0][0, k].item() == pytest.approx(fd, rel=1e-4, abs=1e-8)


def test_seminorm_adjoint_gives_the_same_gradient_with_no_more_backward_evaluations(solver, grads):
    field = Field()
    y0 = torch.tensor([[0.3, -0.5, 0.8]], dtype=torch.float64)
    full, semi = ODEBlock(field, solver(rtol=1e-6, atol=1e-8)), ODEBlock(field, solver(rtol=1e-6, atol=1e-8,
                                                                                       adjoint_norm="seminorm"))
    for a, b in zip(grads(full, y0), grads(semi, y0)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert 0 < semi.nfe_backward <= full.nfe_backward


@pytest.mark.parametrize("adjoint", [True, False])
def test_nfe_counts_agree_with_the_calls_the_solver_made(solver, adjoint):
    field = Field()
    block = ODEBlock(field, solver(rtol=1e-5, atol=1e-7, adjoint=adjoint))
    y0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = block(y0)
    forward_calls = field.outside
    assert block.nfe_forward == forward_calls
    assert (forward_calls - 2) % 6 == 0 and forward_calls > 8   # dopri5: 2 to pick h0, then 6 per attempted step
    out.sum().backward()
    backward_calls = field.outside - forward_calls
    assert block.nfe_backward == backward_calls
    if adjoint:
        assert backward_calls > 0 and (backward_calls - 2) % 6 == 0   # the adjoint ODE is solved by dopri5 too
    else:
        assert backward_calls == 0                                    # backprop replays the graph
    model = nn.Sequential(block, nn.Identity())
    assert nfe(model) == (block.nfe_forward, block.nfe_backward)


def test_fixed_grid_nfe_is_stages_times_steps(solver):
    field = Field()
    block = ODEBlock(field, solver(method="rk4", step_size=0.25, adjoint=False))
    block(torch.randn(2, 3, dtype=torch.float64))
    assert block.nfe_forward == field.outside == 4 * 4


def test_tolerance_applies_inside_the_block_only(solver):
    block = ODEBlock(Field(), solver(rtol=1e-3, atol=1e-3, adjoint=False), t1=3.0)
    y0 = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loose = block(y0)
    n_loose = block.nfe_forward
    with block.tolerance(1e-9, 1e-10):
        assert (block.kwargs["rtol"], block.kwargs["atol"]) == (1e-9, 1e-10)
        tight = block(y0)
    assert block.nfe_forward - n_loose > n_loose                         # the tight solve took more evaluations
    assert (block.kwargs["rtol"], block.kwargs["atol"]) == (1e-3, 1e-3)   # configured tolerances are back
    again = block(y0)
    assert torch.equal(again, loose) and not torch.equal(tight, loose)


class LinearField(nn.Module):
    """dy/dt = A y (a rotation with decay): y(t) = expm(t A) y0 in closed form."""

    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[-0.3, 2.0, 0.0], [-2.0, -0.3, 0.5], [0.0, -0.5, -1.0]],
                                           dtype=torch.float64))

    def forward(self, t, y):
        return y @ self.A.T


@pytest.mark.parametrize("adjoint", [False, True])
def test_trajectory_output_and_tuple_states(solver, adjoint):
    block = ODEBlock(LinearField(), solver(adjoint=adjoint), t1=2.0)
    t = torch.tensor([0.0, 0.3, 0.9, 1.4, 2.0], dtype=torch.float64)      # uneven interior times
    y0 = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        traj = block(y0, t)
        exact = torch.stack([y0 @ torch.linalg.matrix_exp(ti * block.field.field.A).T for ti in t])
        assert traj.shape == (5, 2, 3)
        torch.testing.assert_close(traj, exact, rtol=1e-6, atol=1e-8)     # every time, not only the ends
        assert (exact[1:] - y0).abs().min() > 1e-2                       # the state really moves between times
        torch.testing.assert_close(traj[-1], block(y0), rtol=1e-6, atol=1e-8)
        # a tuple state: each component comes back as its own trajectory, in closed form at every time
        pair = ODEBlock(PairField(), solver(adjoint=adjoint))
        l0 = torch.full((2, 1), 0.5, dtype=torch.float64)
        ys, ls = pair((y0, l0), t)
        assert ys.shape == (5, 2, 3) and ls.shape == (5, 2, 1)
        torch.testing.assert_close(ys, y0 * torch.exp(-t)[:, None, None], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(ls, (0.5 - 2 * t)[:, None, None].expand(5, 2, 1), rtol=1e-6, atol=1e-8)


class PairField(nn.Module):
    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))   # odeint_adjoint wants a module with parameters

    def forward(self, t, state):
        y, logp = state
        return -y, -y.sum(1, keepdim=True) * 0 - 2.0   # dy/dt = -y, dlogp/dt = -2 (trace of -I in 2-D)


def test_tuple_state_is_solved_and_returned_as_a_tuple(solver):
    block = ODEBlock(PairField(), solver(adjoint=False))
    y0, l0 = torch.ones(3, 2, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64)
    y1, l1 = block((y0, l0))
    torch.testing.assert_close(y1, y0 * torch.exp(torch.tensor(-1.0, dtype=torch.float64)), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(l1, torch.full_like(l0, -2.0))
