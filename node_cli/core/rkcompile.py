"""The opt-in compiled step (`solver.compile=true`): each adaptive step's new stage evaluations, stage sums and
error estimate as one torch.compile'd function per vector field, compiled once per shape, dtype and grad mode;
torchdiffeq's adaptive loop, step control and dense output stay in Python (no unrolling, pytorch #111441).
core/fastrk.py (which this module does not import) calls `compiled_stages` when a solve asks for it and falls
back to its eager step when this returns None or a compilation fails (one warning per process).
"""
from __future__ import annotations

import types
import warnings
import weakref

import torch

_COMPILE_WARNED = False   # the one warning per process when solver.compile falls back to the eager step


def _compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot build a step for tensors on `device` here (None: it can): inductor needs a C++
    compiler for CPU code and Triton for CUDA code."""
    try:
        if device.type == "cpu":
            from torch._inductor.cpp_builder import get_cpp_compiler
            get_cpp_compiler()
        elif device.type == "cuda":
            from torch.utils._triton import has_triton
            if not has_triton():
                return "no Triton for CUDA"
        else:
            return f"no inductor backend checked for {device.type}"
    except Exception as exc:   # noqa: BLE001 - any failure here means: not available
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _warn_eager(why: str) -> None:
    global _COMPILE_WARNED
    if not _COMPILE_WARNED:
        _COMPILE_WARNED = True
        warnings.warn(f"solver.compile: the step cannot be compiled here ({why}); using the eager step (the same "
                      "method and steps)", RuntimeWarning, stacklevel=4)


def _stages(field, y0, f0, t0, dt, t1, alpha, beta, c_error, fsal):
    """The body `CompiledStages` compiles: a step's stage evaluations field(t_i, y_i), its stage sums
    y_i = y0 + sum_j (beta_ij dt) k_j and its error estimate sum_j (c_error_j dt) k_j (without a graph, as the eager
    step), the tableau's rows as Python floats (constants of the compiled graph) and dt, t0, t1 as 0-dim tensors (so
    one graph serves every step size). The stage at alpha = 1 is evaluated at the float just below t1 with the
    gradient passing through, as torchdiffeq's Perturb.PREV."""
    ks, yi = [f0], y0
    for alpha_i, row in zip(alpha, beta):
        if alpha_i == 1.0:
            t = t1.detach()
            ti = t1 + (torch.nextafter(t, t - 1) - t)
        else:
            ti = t0 + alpha_i * dt
        yi = y0 + sum(k * (c * dt) for c, k in zip(row, ks) if c != 0.0)
        ks.append(field(ti, yi))
    if not fsal:
        yi = y0 + sum(k * (c * dt) for c, k in zip(beta[-1], ks) if c != 0.0)
    error = sum(k.detach() * (c * dt.detach()) for c, k in zip(c_error, ks) if c != 0.0)
    return yi, error, *ks


class CompiledStages:
    """`_stages` torch.compile'd for one vector field (solver.compile=true), compiled once per shape, dtype and
    grad mode (torch.compile's guards; dynamic=False: a few fixed shapes per run). Each field gets its own copy of
    the code object, so each has its own cache and recompile limit. `counter` (the field's evaluation counter: an
    object with `count(n)`, node-run's CountedField) is told the stage count after each compiled step: the count
    happens outside the graph, which calls `field` itself. Falls back to the eager step, with one warning, when
    compilation is unavailable or fails."""

    def __init__(self, field, counter=None):
        self.field, self.counter = field, counter
        self.fn, self.consts = None, (None, None)
        code = _stages.__code__.replace()   # a fresh code object: torch.compile's cache hangs on it
        self.body = types.FunctionType(code, _stages.__globals__, _stages.__name__)

    def step(self, y0, f0, t0, dt, t1, tableau, alpha, rows, fsal):
        """(y1, f1, error, stages) as `_fast_runge_kutta_step` returns them, or None: take the eager step. The times
        are in the state's (real) dtype; alpha, rows (beta..., c_sol, c_error) and fsal are the tableau's, as the
        eager step reads them."""
        if self.fn is False:
            return None
        if self.fn is None:
            why = _compile_unavailable(y0.device)
            if why is not None:
                self.fn = False
                _warn_eager(why)
                return None
            self.fn = torch.compile(self.body, dynamic=False, fullgraph=True)
        if self.consts[0] is not tableau:   # the tableau as Python floats, read once per tableau
            self.consts = (tableau, (tuple(alpha), tuple(tuple(r.tolist()) for r in rows[:-1]),
                                     tuple(rows[-1].tolist()), fsal))
        try:
            y1, error, *ks = self.fn(self.field, y0, f0, t0, dt, t1, *self.consts[1])
        except Exception as exc:   # noqa: BLE001 - compilation failed (unsupported op, no compiler, ...): eager
            self.fn = False
            _warn_eager(f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
            return None
        if self.counter is not None:
            self.counter.count(len(ks) - 1)
        return y1, ks[-1], error, ks


_COMPILED = weakref.WeakKeyDictionary()   # the module under torchdiffeq's wrapper -> its CompiledStages


def compiled_stages(func) -> CompiledStages | None:
    """The compiled step for the vector field under torchdiffeq's wrapper `func`, one per field and process; None
    for what it does not cover (tuple states and reversed time: torchdiffeq's wrappers in between)."""
    from torchdiffeq._impl.misc import _PerturbFunc

    base = getattr(func, "base_func", None)
    while type(base) is _PerturbFunc:   # odeint_adjoint's forward solve wraps its wrapped field again
        base = base.base_func
    if not isinstance(base, torch.nn.Module) or type(base).__module__.startswith("torchdiffeq"):
        return None
    if base not in _COMPILED:
        counted = callable(getattr(base, "count", None)) and isinstance(getattr(base, "field", None), torch.nn.Module)
        _COMPILED[base] = CompiledStages(base.field, base) if counted else CompiledStages(base)
    return _COMPILED[base]
