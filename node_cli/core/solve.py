"""ODE blocks: every solve in node-run goes through `ODEBlock`, which counts function evaluations.

NFE is counted by one mechanism for every model: the vector field is wrapped in `CountedField`, whose call
counter ticks on every evaluation. `ODEBlock.forward` adds the evaluations made during its forward solve to
`nfe_forward`; every other evaluation of the field happens in the adjoint's backward solve and is `nfe_backward`.
Without the adjoint, autograd replays the stored graph and never calls the field: NFE-B is 0 by construction.
"""
from __future__ import annotations

import contextlib

import torch
import torchdiffeq
from torch import nn
from torchdiffeq._impl.odeint import SOLVERS as _REGISTRY
from torchdiffeq._impl.solvers import FixedGridODESolver

from . import fastrk

# Every method name torchdiffeq accepts (not the fast variants fastrk may add later), and which of them choose
# their own steps: all but the fixed-grid solvers (these take solver.step_size; the others rtol, atol and
# solver.max_num_steps). scipy_solver is adaptive too, though it is not one of torchdiffeq's own step controllers.
SOLVERS = tuple(sorted(name for name in _REGISTRY if fastrk.SUFFIX not in name))
ADAPTIVE = tuple(name for name in SOLVERS if not issubclass(_REGISTRY[name], FixedGridODESolver))


class CountedField(nn.Module):
    """A vector field f(t, y) that counts its evaluations in `calls`."""

    def __init__(self, field: nn.Module):
        super().__init__()
        self.field = field
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.field(t, y)


def solver_kwargs(cfg) -> dict:
    """torchdiffeq keyword arguments from a `solver` config node."""
    options = {}
    if cfg.get("step_size") is not None and cfg.method not in ADAPTIVE:
        options["step_size"] = float(cfg.step_size)
    if cfg.get("max_num_steps") is not None and cfg.method in ADAPTIVE:
        options["max_num_steps"] = int(cfg.max_num_steps)
    return dict(rtol=float(cfg.rtol), atol=float(cfg.atol), method=str(cfg.method), options=options)


class ODEBlock(nn.Module):
    """Solves dy/dt = field(t, y) with torchdiffeq, by the adjoint method or by backprop through the solver.

    `forward(y0)` integrates over [0, t1] and returns y(t1); `forward(y0, t)` returns y at every time in `t`
    (leading time dimension). `y0` may be a tensor or a tuple of tensors (e.g. state and log-density).
    `fast_rk=True` runs adaptive Runge-Kutta methods with the fast stage arithmetic of `fastrk` (same method,
    same steps); other methods ignore it.
    """

    def __init__(self, field: nn.Module, solver_cfg, t1: float = 1.0, adjoint: bool | None = None,
                 fast_rk: bool = False):
        super().__init__()
        self.field = CountedField(field)
        self.kwargs = solver_kwargs(solver_cfg)
        if fast_rk:
            self.kwargs["method"] = fastrk.method(self.kwargs["method"])
        self.adjoint = bool(solver_cfg.adjoint) if adjoint is None else adjoint
        self.adjoint_options = {"norm": "seminorm"} if solver_cfg.get("adjoint_norm") == "seminorm" else None
        self.register_buffer("span", torch.tensor([0.0, float(t1)]), persistent=False)
        self.nfe_forward = 0

    @property
    def nfe_backward(self) -> int:
        return self.field.calls - self.nfe_forward

    @contextlib.contextmanager
    def tolerance(self, rtol: float, atol: float | None = None):
        """Solve at rtol and atol (default: rtol) inside the block, e.g. to evaluate a model at a tighter
        tolerance than it trained with; the configured tolerances come back afterwards."""
        saved = self.kwargs
        self.kwargs = dict(saved, rtol=float(rtol), atol=float(rtol if atol is None else atol))
        try:
            yield self
        finally:
            self.kwargs = saved

    def forward(self, y0, t: torch.Tensor | None = None):
        times = self.span if t is None else t
        before = self.field.calls
        if self.adjoint:
            out = torchdiffeq.odeint_adjoint(self.field, y0, times, adjoint_options=self.adjoint_options,
                                             **self.kwargs)
        else:
            out = torchdiffeq.odeint(self.field, y0, times, **self.kwargs)
        self.nfe_forward += self.field.calls - before
        if t is not None:
            return out
        return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]


def nfe(model: nn.Module) -> tuple[int, int]:
    """Cumulative (forward, backward) function evaluations of every ODE block in `model`."""
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock)]
    return sum(b.nfe_forward for b in blocks), sum(b.nfe_backward for b in blocks)


def has_ode(model: nn.Module) -> bool:
    return any(isinstance(m, ODEBlock) for m in model.modules())


def nfe_note(model: nn.Module) -> str:
    """What NFE-B means for this model (the summary's `nfe_backward_note`)."""
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock)]
    if not blocks:
        return "no ODE block: NFE is 0 by construction"
    if not any(b.adjoint for b in blocks):
        return "no adjoint: backprop through the solver makes no backward evaluations (NFE-B = 0); its cost is in memory and time"
    return "adjoint: backward evaluations of the augmented ODE"
