"""ODE blocks: every solve in node-run goes through `ODEBlock`, which counts function evaluations.

NFE is counted by one mechanism for every model: the vector field is wrapped in `CountedField`, whose call
counter ticks on every evaluation. `ODEBlock.forward` adds the evaluations made during its forward solve to
`nfe_forward`; every other evaluation of the field happens in the adjoint's backward solve and is `nfe_backward`.
Without the adjoint, autograd replays the stored graph and never calls the field: NFE-B is 0 by construction.

Solver statistics come from the same wrapper: torchdiffeq's adaptive Runge-Kutta solvers call
`callback_accept_step(t0, y0, dt)` / `callback_reject_step(t0, y0, dt)` on the vector field module after each step
attempt, and the adjoint's backward solve calls the `..._adjoint` variants of the same names. `CountedField` counts
accepted and rejected steps and the smallest accepted dt separately for the two; `ODEBlock` exposes the forward
solves' counts as `steps_accepted`, `steps_rejected`, `min_dt` (like `nfe_forward`), and `solver_stats(model)` sums
them over every block. Solvers without these callbacks (fixed-grid, scipy_solver) are never handed them (torchdiffeq
would warn), so their counts stay 0 and min_dt None.

The same wrapper guards every solve: `solver.max_nfe` caps the evaluations of one solve (with the adjoint, its
backward solve counts with its forward one), so a solve that will not end (a diverged model, where dopri5 takes ever
smaller steps) fails with `TooManyEvaluations` instead of running for hours; and a stop request made while a
training step solves (core/stop.py) ends the solve at its next evaluation.
"""
from __future__ import annotations

import contextlib
import inspect

import torch
import torchdiffeq
from torch import nn
from torchdiffeq._impl.odeint import SOLVERS as _REGISTRY
from torchdiffeq._impl.solvers import FixedGridODESolver

from . import fastrk, stop

# Every method name torchdiffeq accepts (not the fast variants fastrk may add later), and which of them choose
# their own steps: all but the fixed-grid solvers (these take solver.step_size; the others rtol, atol and
# solver.max_num_steps). scipy_solver is adaptive too, though it is not one of torchdiffeq's own step controllers.
SOLVERS = tuple(sorted(name for name in _REGISTRY if fastrk.SUFFIX not in name))
ADAPTIVE = tuple(name for name in SOLVERS if not issubclass(_REGISTRY[name], FixedGridODESolver))

# The step options of the solver config (solver.<key>, null by default) and which methods take them: read from the
# keyword parameters of each torchdiffeq solver class's constructors (its whole MRO), so it is whatever the
# installed torchdiffeq really accepts. torchdiffeq 0.2.5: the adaptive Runge-Kutta solvers (dopri5, dopri8,
# bosh3, fehlberg2, adaptive_heun) take first_step, min_step, max_step and max_num_steps; scipy_solver takes
# min_step and max_step; the fixed-grid solvers take step_size.
STEP_OPTIONS = dict(step_size=float, first_step=float, min_step=float, max_step=float, max_num_steps=int)


def _init_keywords(cls) -> set:
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= set(inspect.signature(init).parameters)
    return names


TAKES = {name: tuple(k for k in STEP_OPTIONS if k in _init_keywords(_REGISTRY[name])) for name in SOLVERS}


def step_callbacks(method: str) -> bool:
    """Whether torchdiffeq's solver `method` calls callback_accept_step / callback_reject_step (adaptive RK)."""
    cls = _REGISTRY.get(method)
    return cls is not None and {"callback_accept_step", "callback_reject_step"} <= set(cls.valid_callbacks())


class StepCounts:
    """Accepted and rejected steps of the solves one callback family reports, and the smallest accepted dt."""

    __slots__ = ("accepted", "rejected", "min_dt")

    def __init__(self):
        self.accepted, self.rejected, self.min_dt = 0, 0, None

    def accept(self, t0, y0, dt):
        self.accepted += 1
        dt = abs(float(dt.detach() if torch.is_tensor(dt) else dt))
        self.min_dt = dt if self.min_dt is None else min(self.min_dt, dt)

    def reject(self, t0, y0, dt):
        self.rejected += 1


class TooManyEvaluations(RuntimeError):
    """A solve needed more than solver.max_nfe evaluations of its vector field."""


class CountedField(nn.Module):
    """A vector field f(t, y) that counts its evaluations in `calls`, and the steps of the solves that use it:
    `forward_steps` (the solves of odeint and odeint_adjoint's forward pass, by torchdiffeq's callback_accept_step /
    callback_reject_step) and `backward_steps` (the adjoint's backward solves, by the `..._adjoint` callbacks).

    The callbacks are instance attributes that `enable_step_callbacks` sets only for solvers that call them: a
    solver that does not (fixed-grid, scipy_solver) would make torchdiffeq warn on every solve."""

    def __init__(self, field: nn.Module, max_nfe: int | None = None):
        super().__init__()
        self.field = field
        self.calls = 0
        self.max_nfe, self.solve_start = max_nfe, 0   # the cap per solve; `calls` when the last solve began
        self.forward_steps, self.backward_steps = StepCounts(), StepCounts()

    def enable_step_callbacks(self, forward: bool, backward: bool) -> None:
        for name, counts, on in (("callback_{}_step", self.forward_steps, forward),
                                 ("callback_{}_step_adjoint", self.backward_steps, backward)):
            for kind, fn in (("accept", counts.accept), ("reject", counts.reject)):
                if on:
                    self.__dict__[name.format(kind)] = fn
                else:
                    self.__dict__.pop(name.format(kind), None)

    def forward(self, t, y):
        self.count(1)
        return self.field(t, y)

    def count(self, n: int) -> None:
        """Count n evaluations of the field (`forward`'s one; a compiled solver step's, which calls `field` itself:
        fastrk's solver.compile), then check for a stop request and the cap."""
        self.calls += n
        stop.check()
        if self.max_nfe is not None and self.calls - self.solve_start > self.max_nfe:
            raise TooManyEvaluations(
                f"a solve needed more than solver.max_nfe={self.max_nfe} evaluations of the vector field (the model "
                "has probably diverged: a smaller trainer.lr?); a larger solver.max_nfe, or null, lifts the cap")


def _options(cfg, method: str) -> dict:
    """The step options of `cfg` that torchdiffeq's `method` takes (the others are refused by checks.validate for
    the forward method; step_size and max_num_steps keep their old meaning: ignored by methods without them)."""
    return {k: STEP_OPTIONS[k](cfg.get(k)) for k in TAKES.get(method, ()) if cfg.get(k) is not None}


def solver_kwargs(cfg, adjoint: bool = False) -> dict:
    """torchdiffeq keyword arguments from a `solver` config node: odeint's (rtol, atol, method, options), and with
    `adjoint` also odeint_adjoint's adjoint_rtol, adjoint_atol, adjoint_method (None: the forward ones) and
    adjoint_options (the step options the adjoint method takes; norm=seminorm with solver.adjoint_norm=seminorm).
    Keys a config node lacks (older runs' configs) count as null."""
    method = str(cfg.method)
    kwargs = dict(rtol=float(cfg.rtol), atol=float(cfg.atol), method=method, options=_options(cfg, method))
    if adjoint:
        a_method = cfg.get("adjoint_method")
        a_method = None if a_method is None else str(a_method)
        adjoint_options = _options(cfg, method if a_method is None else a_method)
        if cfg.get("adjoint_norm") == "seminorm":
            adjoint_options["norm"] = "seminorm"
        kwargs.update(adjoint_rtol=None if cfg.get("adjoint_rtol") is None else float(cfg.adjoint_rtol),
                      adjoint_atol=None if cfg.get("adjoint_atol") is None else float(cfg.adjoint_atol),
                      adjoint_method=a_method, adjoint_options=adjoint_options)
    return kwargs


class ODEBlock(nn.Module):
    """Solves dy/dt = field(t, y) with torchdiffeq, by the adjoint method or by backprop through the solver.

    `forward(y0)` integrates over [0, t1] and returns y(t1); `forward(y0, t)` returns y at every time in `t`
    (leading time dimension), or with t [B, k] each row of y0 at its own times ([B, k, ...], `at_rows`). `y0` may be
    a tensor or a tuple of tensors (e.g. state and log-density).
    `fast_rk=True` runs adaptive Runge-Kutta methods with the fast stage arithmetic of `fastrk` (same method,
    same steps); other methods ignore it. None (the default): the config's `solver.fast_rk` (true when absent).

    Counts of the forward solves (odeint, or odeint_adjoint's forward pass): `solves`, `nfe_forward`, `steps_accepted`,
    `steps_rejected`, `min_dt` (smallest accepted step, None before any adaptive Runge-Kutta step; since
    construction or the last `reset_min_dt()`). The adjoint's backward solves: `nfe_backward`,
    `steps_accepted_backward`, `steps_rejected_backward`, `min_dt_backward`.
    """

    def __init__(self, field: nn.Module, solver_cfg, t1: float = 1.0, adjoint: bool | None = None,
                 fast_rk: bool | None = None):
        super().__init__()
        max_nfe = solver_cfg.get("max_nfe")
        self.field = CountedField(field, None if max_nfe is None else int(max_nfe))
        self.adjoint = bool(solver_cfg.adjoint) if adjoint is None else adjoint
        kwargs = solver_kwargs(solver_cfg, adjoint=True)
        self.kwargs = {k: kwargs.pop(k) for k in ("rtol", "atol", "method", "options")}
        self.adjoint_kwargs = kwargs     # adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options
        if solver_cfg.get("fast_rk", True) if fast_rk is None else fast_rk:
            self.kwargs["method"] = fastrk.method(self.kwargs["method"])
            if solver_cfg.get("first_step_grad") is False and fastrk.SUFFIX in self.kwargs["method"]:
                self.kwargs["options"] = dict(self.kwargs["options"], first_step_grad=False)
            if solver_cfg.get("compile") is True and fastrk.SUFFIX in self.kwargs["method"]:
                self.kwargs["options"] = dict(self.kwargs["options"], compile=True)
            if kwargs["adjoint_method"] is not None:
                kwargs["adjoint_method"] = fastrk.method(kwargs["adjoint_method"])
        backward_method = kwargs["adjoint_method"] or self.kwargs["method"]
        self.field.enable_step_callbacks(step_callbacks(self.kwargs["method"]),
                                         self.adjoint and step_callbacks(backward_method))
        self.register_buffer("span", torch.tensor([0.0, float(t1)]), persistent=False)
        self.nfe_forward = 0
        self.solves = 0   # forward solves (calls of forward and at_rows)

    @property
    def vector_field(self) -> nn.Module:
        """The field this block solves, as its model built it (`self.field` is that field inside its counter; the
        attribute path, field.field, stays as it is: it names the weights in every checkpoint)."""
        return self.field.field

    @property
    def nfe_backward(self) -> int:
        return self.field.calls - self.nfe_forward

    @property
    def steps_accepted(self) -> int:
        return self.field.forward_steps.accepted

    @property
    def steps_rejected(self) -> int:
        return self.field.forward_steps.rejected

    @property
    def min_dt(self) -> float | None:
        return self.field.forward_steps.min_dt

    @min_dt.setter
    def min_dt(self, value: float | None) -> None:
        self.field.forward_steps.min_dt = value

    @property
    def steps_accepted_backward(self) -> int:
        return self.field.backward_steps.accepted

    @property
    def steps_rejected_backward(self) -> int:
        return self.field.backward_steps.rejected

    @property
    def min_dt_backward(self) -> float | None:
        return self.field.backward_steps.min_dt

    def reset_min_dt(self) -> None:
        """Start new running minima of the step size (forward and backward); the step counts keep counting."""
        self.field.forward_steps.min_dt = self.field.backward_steps.min_dt = None

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

    @contextlib.contextmanager
    def backward_solve(self, norm: str = "default", rtol: float | None = None, atol: float | None = None):
        """Inside the block, gradients come from the adjoint (whatever the block was built with), its backward
        solve with `norm` (default | seminorm) at rtol and atol (None: the forward ones); everything comes back
        afterwards. For studies of the backward pass on a trained model (node-report tolsweep)."""
        saved = self.adjoint, self.adjoint_kwargs
        options = {k: v for k, v in self.adjoint_kwargs["adjoint_options"].items() if k != "norm"}
        if norm == "seminorm":
            options["norm"] = "seminorm"
        elif norm != "default":
            raise ValueError(f"norm must be 'default' or 'seminorm', not {norm!r}")
        self.adjoint = True
        self.adjoint_kwargs = dict(saved[1], adjoint_rtol=None if rtol is None else float(rtol),
                                   adjoint_atol=None if atol is None else float(atol), adjoint_options=options)
        try:
            yield self
        finally:
            self.adjoint, self.adjoint_kwargs = saved

    def forward(self, y0, t: torch.Tensor | None = None):
        if t is not None and t.dim() == 2:
            return self.at_rows(y0, t)
        times = self.span if t is None else t
        before = self.field.solve_start = self.field.calls
        if self.adjoint:
            out = torchdiffeq.odeint_adjoint(self.field, y0, times, **self.kwargs, **self.adjoint_kwargs)
        else:
            out = torchdiffeq.odeint(self.field, y0, times, **self.kwargs)
        self.nfe_forward += self.field.calls - before
        self.solves += 1
        if t is not None:
            return out
        return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]

    def at_rows(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """y at each row's own times, from y0 [B, ...] at time 0 and t [B, k] (non-negative): [B, k, ...]. One solve
        for the whole batch, read at every row's times: with the fast arithmetic and without the adjoint, each row
        straight from the step polynomial that holds its time (fastrk.solve_rows); otherwise the solve at the
        sorted union of all times and a gather, the same values."""
        if fastrk.SUFFIX in self.kwargs["method"] and not self.adjoint and torch.is_tensor(y0) \
                and len(t) == len(y0) and t.numel() and bool(t.min() >= 0) and bool(t.max() > 0):
            before = self.field.calls
            out = fastrk.solve_rows(self.field, y0, t, self.kwargs)
            self.nfe_forward += self.field.calls - before
            self.solves += 1
            return out
        grid, where = torch.unique(torch.cat([t.new_zeros(1), t.reshape(-1)]), sorted=True, return_inverse=True)
        ys = self(y0, grid)                                                 # [len(grid), B, ...]
        return ys[where[1:].view(t.shape), torch.arange(len(y0), device=y0.device)[:, None]]


def nfe(model: nn.Module) -> tuple[int, int]:
    """Cumulative (forward, backward) function evaluations of every ODE block in `model`."""
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock)]
    return sum(b.nfe_forward for b in blocks), sum(b.nfe_backward for b in blocks)


def _min(a, b):
    return b if a is None else a if b is None else min(a, b)


def solver_stats(model: nn.Module, reset_min_dt: bool = False) -> dict:
    """Step statistics of every ODE block in `model`: cumulative accepted and rejected steps of the forward solves
    (`accepted`, `rejected`) and of the adjoint's backward solves (`accepted_backward`, `rejected_backward`), and the
    smallest accepted dt of each (`min_dt`, `min_dt_backward`: a float, None if no adaptive step was taken) since
    the blocks were made or last reset. `reset_min_dt`: reset the minima after reading them, so that the next call's
    minima cover only the solves in between (a training step's smallest step)."""
    stats = dict(accepted=0, rejected=0, min_dt=None, accepted_backward=0, rejected_backward=0, min_dt_backward=None)
    for b in model.modules():
        if isinstance(b, ODEBlock):
            stats["accepted"] += b.steps_accepted
            stats["rejected"] += b.steps_rejected
            stats["min_dt"] = _min(stats["min_dt"], b.min_dt)
            stats["accepted_backward"] += b.steps_accepted_backward
            stats["rejected_backward"] += b.steps_rejected_backward
            stats["min_dt_backward"] = _min(stats["min_dt_backward"], b.min_dt_backward)
            if reset_min_dt:
                b.reset_min_dt()
    return stats


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
