"""StepClock (core/clock.py) splits a training step into the vector field (forward calls and their backward) and
the ODE solver's own work, and changes nothing the step computes."""
import itertools

import pytest
import torch
from torch import nn

from node_cli.core.clock import StepClock, median
from node_cli.core.solve import ODEBlock, nfe
from node_cli.families.mnist.models import ConvField


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny checks: one thread beats two fighting over a CPU


def ode_model(solver_cfg, adjoint):
    """Conv layer -> ODE block on the MNIST conv field -> pooled linear head, in float64."""
    torch.manual_seed(0)
    block = ODEBlock(ConvField(8), solver_cfg(adjoint=adjoint, rtol=1e-4, atol=1e-4))
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), block, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).double()
    return model, block


def step(model, x, y):
    """Loss, gradients and this step's (NFE-F, NFE-B) of one forward + backward."""
    model.zero_grad(set_to_none=True)
    f0, b0 = nfe(model)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    f1, b1 = nfe(model)
    return loss.item(), [p.grad.clone() for p in model.parameters()], (f1 - f0, b1 - b0)


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 10, (4,), generator=g)


@pytest.mark.parametrize("adjoint", [True, False])
def test_step_clock_splits_the_step_and_leaves_the_gradients_alone(solver_cfg, adjoint):
    model, block = ode_model(solver_cfg, adjoint)
    x, y = batch()
    plain = step(model, x, y)
    clock = StepClock(torch.device("cpu"))
    clock.attach([block.field.field], [block])
    tic = clock.now()
    timed = step(model, x, y)
    total = clock.now() - tic
    clock.detach()
    # the same loss, bit for bit the same gradients, the same evaluations
    assert timed[0] == plain[0] and timed[2] == plain[2] and plain[2][0] > 0
    assert (plain[2][1] > 0) == adjoint
    assert all(torch.equal(a, b) for a, b in zip(plain[1], timed[1]))
    # real, nonzero times: the field, the solver's own work around it, and the rest of the step
    assert clock.field > 0 and clock.ode - clock.field > 0 and total - clock.ode > 0
    assert not block._forward_hooks and not block._forward_pre_hooks and not clock.handles
    assert not block.field.field._forward_hooks and not block.field.field._forward_pre_hooks
    clock.reset()
    step(model, x, y)                                      # detached: nothing is timed any more
    assert clock.field == clock.ode == 0


@pytest.mark.parametrize("adjoint", [True, False])
def test_step_clock_counts_every_field_call_forward_and_backward(solver_cfg, adjoint):
    """With a clock that ticks once per reading, every timed interval is one tick: the field's time is then its
    forward calls plus the backward passes through it, and the block's time holds all of the field's."""
    model, block = ode_model(solver_cfg, adjoint)
    x, y = batch()
    clock = StepClock(torch.device("cpu"))
    ticks = itertools.count()
    clock.now = lambda: next(ticks)
    clock.attach([block.field.field], [block])
    _, _, (nfe_f, nfe_b) = step(model, x, y)
    clock.detach()
    if adjoint:   # forward solve without a graph; the adjoint solve calls the field and backpropagates through it
        assert clock.field == nfe_f + 2 * nfe_b
    else:         # backprop through the solver: every forward call's graph is backpropagated once
        assert nfe_b == 0 and clock.field == 2 * nfe_f
    # the block: its forward and its backward (one tick each) around two readings per field interval
    assert clock.ode == 2 * clock.field + 2


def test_median():
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([]) != median([])   # nan when empty
