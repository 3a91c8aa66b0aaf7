"""ODE blocks: every solve in node-run goes through `ODEBlock`, which counts function evaluations.

NFE is counted by one mechanism for every model: the vector field is wrapped in `CountedField`, whose call
counter ticks on every evaluation. `ODEBlock.forward` adds the evaluations made during its forward solve to
`nfe_forward`; every other evaluation of the field happens in the adjoint's backward solve and is `nfe_backward`.
Without the adjoint, autograd replays the stored graph and never calls the field: NFE-B is 0 by construction.
"""
from __future__ import annotations

import contextlib
import importlib
import types
from collections.abc import Sequence

import torch
from torch import nn
import torchdiffeq

_REGISTRY = importlib.import_module("torchdiffeq._impl.odeint").SOLVERS
SOLVERS = tuple(sorted(_REGISTRY))
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "scipy_solver")
FAST_SUFFIX = "+fastrk"   # torchdiffeq method name of an adaptive Runge-Kutta solver with fast stage arithmetic


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


# ---------------------------------------------------------------------------------------------------------------
# Fast stage arithmetic for torchdiffeq's adaptive Runge-Kutta solvers (dopri5, dopri8, bosh3, fehlberg2,
# adaptive_heun). torchdiffeq keeps the stages in one [*shape, stages] buffer (stage dimension last) and forms
# every combination y0 + sum_j c_j k_j as a strided multiply into a temporary followed by a strided sum: on a
# CPU that is a quarter of an MNIST ODE-Net training step. The variant below keeps the stages as a list of
# contiguous tensors and accumulates the same float32 coefficients in place, and fits the dense-output polynomial
# of a step only when a requested time falls inside it (lazily). Everything else is torchdiffeq's
# own code: `_adaptive_step` is torchdiffeq's function object with only its `_runge_kutta_step` global swapped,
# so step-size control, error norm, rejection, dense output and the adjoint are untouched. Same trajectory up to
# float rounding (summation order), hence the same NFE except at a knife-edge accept/reject decision.
# ---------------------------------------------------------------------------------------------------------------

def _combine(ks, coeffs, base=None):
    """base + sum_j coeffs[j] * ks[j], coefficients as Python floats; zero coefficients are skipped."""
    out = None
    for c, k in zip(coeffs, ks):
        if c != 0.0:
            out = torch.mul(k, c) if out is None else out.add_(k, alpha=c)
    if out is None:
        out = torch.zeros_like(ks[0])
    return out if base is None else out.add_(base)


def _real_dtype(y: torch.Tensor) -> torch.dtype:
    """The dtype of y.abs() (torchdiffeq's idiom), without computing y.abs()."""
    return y.real.dtype if y.is_complex() else y.dtype


@torch.no_grad()
def _fast_error_ratio(error_estimate, rtol, atol, y0, y1, norm):
    """torchdiffeq's `_compute_error_ratio`, norm(error / (atol + rtol * max(|y0|, |y1|))), with one temporary
    instead of five and no autograd graph (the ratio only steers the step size, which torchdiffeq computes without
    gradients too)."""
    tol = y0.abs()
    torch.maximum(tol, y1.abs(), out=tol)
    tol.mul_(rtol).add_(atol)
    return norm(torch.div(error_estimate, tol, out=tol)).abs()


def _fast_perturb_forward(self, t, y, *, perturb=None):
    """torchdiffeq's `_PerturbFunc.forward` without the y.abs() it computes on every evaluation to find a dtype."""
    from torchdiffeq._impl.misc import Perturb, _nextafter

    perturb = Perturb.NONE if perturb is None else perturb
    assert isinstance(perturb, Perturb), "perturb argument must be of type Perturb enum"
    if torch.is_complex(t):
        t = t.real
    t = t.to(_real_dtype(y))
    if perturb is Perturb.NEXT:
        t = _nextafter(t, t + 1)
    elif perturb is Perturb.PREV:
        t = _nextafter(t, t - 1)
    return self.base_func(t, y)


def _fast_runge_kutta_step(func, y0, f0, t0, dt, t1, tableau):
    """Drop-in for torchdiffeq's `_runge_kutta_step`; returns the stages as a list instead of a stacked buffer.

    When dt itself carries a gradient (backprop through the solver: torchdiffeq's first step size is computed
    from y0 and f0 with autograd on), torchdiffeq's own arithmetic runs, so that gradient path is kept as is.
    """
    from torchdiffeq._impl.misc import Perturb
    from torchdiffeq._impl.rk_common import _runge_kutta_step

    if dt.requires_grad:
        y1, f1, y1_error, k = _runge_kutta_step(func, y0, f0, t0, dt, t1, tableau)
        return y1, f1, y1_error, list(k.unbind(-1))
    t_dtype = _real_dtype(y0)
    t0, dt, t1 = t0.to(t_dtype), dt.to(t_dtype), t1.to(t_dtype)
    rows = [*tableau.beta, tableau.c_sol, tableau.c_error]
    flat = (torch.cat(rows) * dt).tolist()              # the float32 coefficients torchdiffeq forms, one host read
    coeffs, i = [], 0
    for r in rows:
        coeffs.append(flat[i:i + len(r)])
        i += len(r)
    ks = [f0]
    yi = y0
    for i, alpha_i in enumerate(tableau.alpha.tolist()):
        if alpha_i == 1.0:
            ti, perturb = t1, Perturb.PREV
        else:
            ti, perturb = t0 + alpha_i * dt, Perturb.NONE
        yi = _combine(ks, coeffs[i], base=y0)
        ks.append(func(ti, yi, perturb=perturb))
    if not (tableau.c_sol[-1] == 0 and (tableau.c_sol[:-1] == tableau.beta[-1]).all()):
        yi = _combine(ks, coeffs[-2], base=y0)
    return yi, ks[-1], _combine(ks, coeffs[-1]), ks


class _LazyInterp(Sequence):
    """The dense-output coefficients of one accepted step, computed the first time they are read: a solve asked
    for its value at t1 only interpolates in its last step, so the fits of all earlier steps are never needed."""

    def __init__(self, fit):
        self._fit, self._coefficients = fit, None

    def _get(self):
        if self._coefficients is None:
            self._coefficients, self._fit = self._fit(), None
        return self._coefficients

    def __getitem__(self, i):
        return self._get()[i]

    def __len__(self):
        return 5


def _fast_interp_fit(self, y0, y1, k, dt):
    from torchdiffeq._impl.interp import _interp_fit

    def fit():
        dt_ = dt.type_as(y0)
        if dt_.requires_grad:   # torchdiffeq's arithmetic, gradient through dt included
            y_mid = y0 + torch.sum(torch.stack(k, -1) * (dt_ * self.mid), dim=-1).view_as(y0)
        else:
            y_mid = _combine(k, (dt_ * self.mid).tolist(), base=y0)
        return _interp_fit(y0, y1, y_mid, k[0], k[-1], dt_)

    return _LazyInterp(fit)


def _register_fast_solvers() -> dict:
    rk_common = importlib.import_module("torchdiffeq._impl.rk_common")
    base = rk_common.RKAdaptiveStepsizeODESolver
    if not hasattr(rk_common, "_runge_kutta_step") or "_runge_kutta_step" not in base._adaptive_step.__code__.co_names:
        return {}   # another torchdiffeq layout: keep its own arithmetic
    original = base._adaptive_step
    swapped = {"_runge_kutta_step": _fast_runge_kutta_step}
    if "_compute_error_ratio" in original.__code__.co_names:
        swapped["_compute_error_ratio"] = _fast_error_ratio
    step = types.FunctionType(original.__code__, {**vars(rk_common), **swapped},
                              original.__name__, original.__defaults__, original.__closure__)
    perturb = getattr(importlib.import_module("torchdiffeq._impl.misc"), "_PerturbFunc", None)

    def __init__(self, func, *args, **kwargs):
        if perturb is not None and type(func) is perturb:   # this solve's own wrapper: a per-instance override
            func.forward = types.MethodType(_fast_perturb_forward, func)
        super(type(self), self).__init__(func, *args, **kwargs)

    fast = {}
    for name, cls in list(_REGISTRY.items()):
        if isinstance(cls, type) and issubclass(cls, base) and FAST_SUFFIX not in name:
            fast[name] = name + FAST_SUFFIX
            _REGISTRY[fast[name]] = type(cls.__name__ + "FastRK", (cls,), {
                "__init__": __init__, "_adaptive_step": step, "_interp_fit": _fast_interp_fit})
    return fast


FAST_RK = _register_fast_solvers()   # method -> its fast-arithmetic name in torchdiffeq's registry


class ODEBlock(nn.Module):
    """Solves dy/dt = field(t, y) with torchdiffeq, by the adjoint method or by backprop through the solver.

    `forward(y0)` integrates over [0, t1] and returns y(t1); `forward(y0, t)` returns y at every time in `t`
    (leading time dimension). `y0` may be a tensor or a tuple of tensors (e.g. state and log-density).
    `fast_rk=True` runs adaptive Runge-Kutta methods with the fast stage arithmetic above (same method, same
    steps); other methods ignore it.
    """

    def __init__(self, field: nn.Module, solver_cfg, t1: float = 1.0, adjoint: bool | None = None,
                 fast_rk: bool = False):
        super().__init__()
        self.field = CountedField(field)
        self.kwargs = solver_kwargs(solver_cfg)
        if fast_rk and self.kwargs["method"] in FAST_RK:
            self.kwargs["method"] = FAST_RK[self.kwargs["method"]]
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
