"""Fast stage arithmetic for torchdiffeq's adaptive Runge-Kutta solvers (dopri5, dopri8, bosh3, fehlberg2,
adaptive_heun), used by every `ODEBlock` unless `solver.fast_rk=false` (or its `fast_rk` argument says otherwise).

Besides the stage arithmetic below: every requested time inside a step is interpolated at once (`_fast_integrate`,
`_LazyInterp.at`), a batch's rows can be read each at its own times (`solve_rows`, `ODEBlock.at_rows`), the next
step size is computed on floats (`_fast_optimal_step_size`), and with `solver.first_step_grad=false` the first
step's size is estimated without a graph (`_constant_first_step`, opt-in: it changes gradients); with
`solver.compile=true` a step's stage evaluations, stage sums and error estimate run as one torch.compile'd function
(core/rkcompile.py, opt-in; the adaptive loop stays in Python).

torchdiffeq keeps the stages in one [*shape, stages] buffer (stage dimension last) and forms every combination
y0 + sum_j c_j k_j as a strided multiply into a temporary followed by a strided sum: on a CPU that is a quarter of
an MNIST ODE-Net training step. The variant here keeps the stages as a list of contiguous tensors, accumulates the
same float32 coefficients in place, and fits the dense-output polynomial of a step only when a requested time falls
inside it (lazily). Everything else is torchdiffeq's own code: `_adaptive_step` is torchdiffeq's function object
with only its `_runge_kutta_step` (and `_compute_error_ratio`) globals swapped, so step-size control, error norm,
rejection, dense output and the adjoint are untouched. Same trajectory up to float rounding (summation order),
hence the same NFE except at a knife-edge accept/reject decision.

Backprop through the solver (no adjoint) records a light graph (`LIGHT_GRAPH`, core/rkgraph.py): each stage
combination is one autograd node (`StageSum`, whose backward is the transposed linear map) and each step's dense
output another (`DenseOutput`: one matrix product, gradients for the states and for the times and step size where
they carry one), instead of tens of recorded scalar-times-tensor ops per step. A step whose dt carries a gradient (the first:
torchdiffeq differentiates its first step size) computes its values with torchdiffeq's own ops on its stage-last
buffer, so they are torchdiffeq's to the bit, in the same one node per stage; the gradients agree to rounding.
The adjoint's solves run without a graph and take the same arithmetic without the nodes.

This reaches into torchdiffeq's private layout, so it is guarded three ways:
- registered on first use (`method(name)`), never at import: other torchdiffeq users in the process see nothing
  until an ODE block asks for it, and then only new method names (`dopri5+fastrk`, ...) are added;
- version-guarded: only torchdiffeq versions in `TESTED` (pyproject pins torchdiffeq>=0.2.5,<0.3) whose private
  names are all where this module expects them;
- anything else falls back to torchdiffeq's own arithmetic (the same method, the same steps) with one warning.
"""
from __future__ import annotations

import importlib
import types
import warnings
from collections.abc import Sequence

import torch
import torchdiffeq

from .rkcompile import compiled_stages
from .rkgraph import DenseOutput, combine, dense_weights, stage_sum

SUFFIX = "+fastrk"        # torchdiffeq method name of an adaptive Runge-Kutta solver with fast stage arithmetic
TESTED = ("0.2.5",)       # torchdiffeq versions whose private layout this module was checked against
_FAST: dict | None = None  # method -> its fast name, once registered ({} when it fell back)
LIGHT_GRAPH = True         # one autograd node per stage sum and per step's dense output (False: the older recorded
                           # op-by-op graph; kept for A/B measurements and tests, not a user setting)


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


_SHARED_TABLEAUS: dict = {}   # (solver class, dtype, device) -> the tableau its solves share
_TABLEAUS: dict = {}   # id(tableau.alpha) -> (weakref, alpha as floats, rows, rows concatenated, lengths, fsal)


def _tableau(tableau):
    """What a step needs of a tableau, computed once per tableau object: the stage times as floats, the rows
    (beta..., c_sol, c_error) as tensors, also concatenated, their lengths, and whether y1 is the last stage's
    input (dopri5's first-same-as-last)."""
    import weakref

    entry = _TABLEAUS.get(id(tableau.alpha))
    if entry is None or entry[0]() is not tableau.alpha:
        rows = [*tableau.beta, tableau.c_sol, tableau.c_error]
        fsal = bool(tableau.c_sol[-1] == 0 and (tableau.c_sol[:-1] == tableau.beta[-1]).all())
        entry = (weakref.ref(tableau.alpha), tableau.alpha.tolist(), rows, torch.cat(rows), [len(r) for r in rows],
                 fsal)
        _TABLEAUS.clear() if len(_TABLEAUS) > 64 else None
        _TABLEAUS[id(tableau.alpha)] = entry
    return entry[1:]


def _split(flat, sizes):
    out, i = [], 0
    for n in sizes:
        out.append(flat[i:i + n])
        i += n
    return out


def _fast_runge_kutta_step(func, y0, f0, t0, dt, t1, tableau):
    """Drop-in for torchdiffeq's `_runge_kutta_step`; returns the stages as a list instead of a stacked buffer.

    The stage inputs y0 + sum_j (beta_ij dt) k_j use torchdiffeq's coefficients beta_ij * dt (in the state's dtype),
    read once per step, each stage combination one autograd node (`StageSum`); the error estimate is formed
    without a graph (it only steers the step size, which torchdiffeq computes without gradients too). When dt
    itself carries a gradient (backprop through the solver: torchdiffeq's first step size is computed from y0 and
    f0 with autograd on), the stage sums and the error estimate are torchdiffeq's own ops on its stage-last buffer
    (a first step is often so small that its error estimate is a cancellation at rounding level, which any other
    summation order would change), still one node per stage, with dt's gradient. `LIGHT_GRAPH = False`: the
    previous arithmetic (each stage sum recorded op by op; torchdiffeq's own step when dt carries a gradient).
    """
    from torchdiffeq._impl.misc import Perturb
    from torchdiffeq._impl.rk_common import _runge_kutta_step

    light = LIGHT_GRAPH and not y0.is_complex()   # complex states: the recorded ops (conjugate gradients)
    if dt.requires_grad and not light:
        y1, f1, y1_error, k = _runge_kutta_step(func, y0, f0, t0, dt, t1, tableau)
        return y1, f1, y1_error, list(k.unbind(-1))
    alpha, rows, cat, sizes, fsal = _tableau(tableau)
    t_dtype = _real_dtype(y0)
    t0, dt, t1 = t0.to(t_dtype), dt.to(t_dtype), t1.to(t_dtype)
    compiled = getattr(func, "compiled", None)   # solver.compile (core/rkcompile.py)
    if compiled is not None and light and not dt.requires_grad:
        out = compiled.step(y0, f0, t0, dt, t1, tableau, alpha, rows, fsal)
        if out is not None:
            return out
    scaled = cat * dt.detach()
    coeffs = _split(scaled.tolist(), sizes)   # one host read
    cs = _split(scaled, sizes)
    buffer = None
    if dt.requires_grad:   # torchdiffeq's buffer, coefficients and op order, filled without a graph
        buffer = torch.empty(*f0.shape, len(alpha) + 1, dtype=y0.dtype, device=y0.device)
        buffer[..., 0] = f0.detach()
        cs = [row * dt.detach() for row in rows]
    ks = [f0]
    yi = y0
    for i, alpha_i in enumerate(alpha):
        if alpha_i == 1.0:
            ti, perturb = t1, Perturb.PREV
        else:
            ti, perturb = t0 + alpha_i * dt, Perturb.NONE
        if light:
            yi = stage_sum(coeffs[i], cs[i], rows[i], dt, buffer, y0, ks)
        else:
            yi = combine(ks, coeffs[i], base=y0)
        ks.append(func(ti, yi, perturb=perturb))
        if buffer is not None:
            buffer[..., i + 1] = ks[-1].detach()
    if not fsal:
        yi = stage_sum(coeffs[-2], cs[-2], rows[-2], dt, buffer, y0, ks) if light else combine(ks, coeffs[-2], y0)
    with torch.no_grad():
        if buffer is None:
            error = combine(ks, coeffs[-1])
        else:
            error = torch.sum(buffer * (dt.detach() * rows[-1]), dim=-1)   # torchdiffeq's dt * c_error
    return yi, ks[-1], error, ks


@torch.no_grad()
def _fast_optimal_step_size(last_step, error_ratio, safety, ifactor, dfactor, order):
    """torchdiffeq's `_optimal_step_size` on Python floats (float64, as torchdiffeq's): one host read of the error
    ratio instead of about ten scalar tensor ops."""
    ratio = float(error_ratio)
    if ratio == 0:
        return last_step * ifactor
    low = 1.0 if ratio < 1 else float(dfactor)
    return last_step * min(float(ifactor), max(float(safety) / ratio ** (1.0 / order), low))


class _LazyInterp(Sequence):
    """The dense-output coefficients of one accepted step, computed the first time they are read: a solve asked
    for its value at t1 only interpolates in its last step, so the fits of all earlier steps are never needed."""

    def __init__(self, fit, step=None):
        self._fit, self._coefficients = fit, None
        self.step = step   # (y0, y1, stages, dt (a tensor of the state's dtype), mid as floats), None: complex

    def at(self, x: torch.Tensor) -> torch.Tensor:
        """The polynomial at the positions x [m] (in [0, 1]) as one matrix product of fixed weights with the step's
        (y0, y1, k_0 ... k_s) (`dense_weights`, `DenseOutput`). The same values as torchdiffeq's fit and
        evaluation up to rounding, without their ops; gradients for the states, and for x and dt where they carry
        one."""
        y0, y1, ks, dt, mid = self.step
        x = x.to(y0.dtype)
        if torch.is_grad_enabled() and (x.requires_grad or dt.requires_grad):
            return DenseOutput.apply(x, dt, mid, y0, y1, *ks)
        rows = dense_weights(x.tolist(), float(dt), mid)[0]
        weights = torch.tensor(rows, dtype=y0.dtype, device=y0.device)
        values = torch.stack([y0, y1, *ks]).reshape(len(ks) + 2, -1)
        return torch.mm(weights, values).view(len(rows), *y0.shape)

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
            y_mid = combine(k, (dt_ * self.mid).tolist(), base=y0)
        return _interp_fit(y0, y1, y_mid, k[0], k[-1], dt_)

    plain = (LIGHT_GRAPH or not dt.requires_grad) and not y0.is_complex() and len(self.mid) == len(k)
    return _LazyInterp(fit, (y0, y1, k, dt.type_as(y0), self.mid.tolist()) if plain else None)


def _fast_integrate(self, t):
    """torchdiffeq's `integrate` with every requested time that falls inside an accepted step interpolated at once
    (torchdiffeq: one `_advance` per time, each a chain of scalar-times-tensor ops and its own slice copy into the
    solution): one matrix product (`_LazyInterp.at`), or, when the step or the times carry a gradient (after a
    first step size with one), the fitted polynomial in torchdiffeq's operation order, elementwise. The same values
    up to rounding; the same steps, so the same NFE."""
    if self.row_times is not None:
        return _integrate_rows(self, t)
    y0 = self.y0
    t = t.to(self.dtype)
    self._before_integrate(t)
    pieces, i, n = [y0[None]], 1, len(t)
    while i < n:
        n_steps = 0
        while t[i] > self.rk_state.t1:
            assert n_steps < self.max_num_steps, 'max_num_steps exceeded ({}>={})'.format(n_steps, self.max_num_steps)
            self.rk_state = self._adaptive_step(self.rk_state)
            n_steps += 1
        state = self.rk_state
        j = i + int((t[i:] <= state.t1).sum())           # every requested time inside this step (t increases)
        coefficients = state.interp_coeff
        x = (t[i:j] - state.t0) / (state.t1 - state.t0)
        if isinstance(coefficients, _LazyInterp) and coefficients.step is not None and (
                LIGHT_GRAPH or not x.requires_grad):
            pieces.append(coefficients.at(x))
        else:
            pieces.append(_evaluate(coefficients, x.to(coefficients[0].dtype).view(-1, *[1] * y0.dim())))
        i = j
    return torch.cat(pieces) if len(pieces) > 1 else y0[None].clone()


def _evaluate(coefficients, x):
    """torchdiffeq's `_interp_evaluate` polynomial at x (any shape that broadcasts), in its operation order."""
    total = coefficients[0] + x * coefficients[1]
    x_power = x
    for coefficient in coefficients[2:]:
        x_power = x_power * x
        total = total + x_power * coefficient
    return total


def _integrate_rows(self, t):
    """The solve over t = [t0, t1], each row b of the state read at its own times row_times[b] (in [t0, t1]), each
    in the step that holds it: [B, k, ...]. The steps are those of a solve asked for the sorted union of all the
    times (torchdiffeq's steps do not depend on the requested times, only on the last), and each value is that
    solve's (the same polynomial at the same x), without forming the union's [times, B, ...] solution."""
    y0 = self.y0
    shape = (*self.row_times.shape, *[1] * (y0.dim() - 1))
    rows = self.row_times.to(self.dtype)
    t = t.to(self.dtype)
    self._before_integrate(t)
    out = y0[:, None].expand(-1, rows.shape[1], *y0.shape[1:])   # the rows' times at t0: y0
    n_steps, done = 0, float(t[0])
    while t[-1] > self.rk_state.t1:
        assert n_steps < self.max_num_steps, 'max_num_steps exceeded ({}>={})'.format(n_steps, self.max_num_steps)
        self.rk_state = self._adaptive_step(self.rk_state)
        n_steps += 1
        state = self.rk_state
        if float(state.t1.detach()) <= done:   # rejected: no new interval
            continue
        done = float(state.t1.detach())
        inside = (rows > state.t0) & (rows <= state.t1)
        cols = inside.any(0).nonzero().squeeze(1)   # the columns with a time in this step (sorted rows: a few)
        if len(cols):
            coefficients = [c[:, None] for c in state.interp_coeff]
            x = ((rows[:, cols] - state.t0) / (state.t1 - state.t0)).to(y0.dtype).view(len(rows), len(cols),
                                                                                         *shape[2:])
            mask = inside[:, cols].view(len(rows), len(cols), *shape[2:])
            out = out.index_copy(1, cols, torch.where(mask, _evaluate(coefficients, x), out[:, cols]))
    return out


def solve_rows(func, y0, times, kwargs) -> torch.Tensor:
    """y at each row's own times: y0 [B, ...], times [B, k] (>= 0, the solve starts at 0) -> [B, k, ...], by
    torchdiffeq's odeint with a fast method (`kwargs`: odeint's keywords, method one of this module's)."""
    span = torch.stack([times.new_zeros(()), times.max()])
    options = dict(kwargs.get("options") or {}, row_times=times)
    return torchdiffeq.odeint(func, y0, span, **dict(kwargs, options=options))


def _constant_first_step(func, t0, y0, order, rtol, atol, norm, f0=None):
    """torchdiffeq's `_select_initial_step`, run without a graph: the same first step size, but no gradient flows
    through it (torchdiffeq, backpropagating through the solver, differentiates the size of its first step as a
    function of y0 and f(y0); a given `first_step` and the adjoint never do). Its second field evaluation then needs
    no graph either; every later step size is chosen without a graph by torchdiffeq too."""
    from torchdiffeq._impl.misc import _select_initial_step

    with torch.no_grad():
        return _select_initial_step(func, t0, y0, order, rtol, atol, norm, f0=None if f0 is None else f0.detach())


def _register() -> dict:
    """Add a fast subclass of every adaptive Runge-Kutta solver to torchdiffeq's registry; {} (and one warning)
    when this torchdiffeq is not one whose private layout was checked."""
    version = getattr(torchdiffeq, "__version__", "?")
    try:
        registry = importlib.import_module("torchdiffeq._impl.odeint").SOLVERS
        rk_common = importlib.import_module("torchdiffeq._impl.rk_common")
        misc = importlib.import_module("torchdiffeq._impl.misc")
        base = rk_common.RKAdaptiveStepsizeODESolver
        original = base._adaptive_step
        names = original.__code__.co_names
        missing = [n for n in ("_runge_kutta_step", "_compute_error_ratio", "_optimal_step_size") if n not in names]
        missing += [n for n in ("Perturb", "_nextafter", "_PerturbFunc") if not hasattr(misc, n)]
        missing += [] if hasattr(rk_common, "_runge_kutta_step") else ["rk_common._runge_kutta_step"]
        importlib.import_module("torchdiffeq._impl.interp")._interp_fit  # noqa: B018 - must exist
    except (ImportError, AttributeError) as exc:
        missing = [f"{type(exc).__name__}: {exc}"]
    if version not in TESTED or missing:
        why = f"missing {', '.join(missing)}" if missing else f"untested version (tested: {', '.join(TESTED)})"
        warnings.warn(f"model.fast_rk: torchdiffeq {version}: {why}; using torchdiffeq's own Runge-Kutta "
                      "arithmetic (same method and steps, slower)", RuntimeWarning, stacklevel=3)
        return {}
    step = types.FunctionType(original.__code__, {**vars(rk_common), "_runge_kutta_step": _fast_runge_kutta_step,
                                                  "_compute_error_ratio": _fast_error_ratio,
                                                  "_optimal_step_size": _fast_optimal_step_size},
                              original.__name__, original.__defaults__, original.__closure__)
    perturb = misc._PerturbFunc

    def __init__(self, func, *args, row_times=None, first_step_grad=True, compile=False, **kwargs):
        if type(func) is perturb:   # this solve's own wrapper: a per-instance override
            func.forward = types.MethodType(_fast_perturb_forward, func)
            func.compiled = compiled_stages(func) if compile else None   # solver.compile
        self.row_times = row_times   # `solve_rows`: each row's own output times
        self.first_step_grad = first_step_grad
        super(type(self), self).__init__(func, *args, **kwargs)
        # torchdiffeq converts the class's tableau to the state's dtype and device for every solve; the first
        # conversion is kept and shared (the same values), so `_tableau`'s per-tableau work is done once
        key = (type(self), self.tableau.alpha.dtype, self.tableau.alpha.device)
        self.tableau = _SHARED_TABLEAUS.setdefault(key, self.tableau)

    # solver.first_step_grad=false: torchdiffeq's first-step estimate made without a graph (see _constant_first_step)
    before = base._before_integrate
    constant = types.FunctionType(before.__code__, {**vars(rk_common), "_select_initial_step": _constant_first_step},
                                  before.__name__, before.__defaults__, before.__closure__)

    def _before_integrate(self, t):
        return (before if self.first_step_grad else constant)(self, t)

    fast = {}
    for name, cls in list(registry.items()):
        if isinstance(cls, type) and issubclass(cls, base) and SUFFIX not in name:
            fast[name] = name + SUFFIX
            registry[fast[name]] = type(cls.__name__ + "FastRK", (cls,), {
                "__init__": __init__, "_adaptive_step": step, "_interp_fit": _fast_interp_fit,
                "integrate": _fast_integrate, "_before_integrate": _before_integrate})
    return fast


def method(name: str) -> str:
    """The torchdiffeq method name that runs `name` with the fast arithmetic: `name + SUFFIX` for an adaptive
    Runge-Kutta method, `name` itself for any other method or when this torchdiffeq cannot take it."""
    global _FAST
    if _FAST is None:
        _FAST = _register()
    return _FAST.get(name, name)


def available() -> dict:
    """method -> fast name for every method the fast arithmetic covers here (registers on first call)."""
    method("dopri5")
    return dict(_FAST)
