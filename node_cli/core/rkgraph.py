"""The light autograd graph of node-run's Runge-Kutta steps (core/fastrk.py): each stage combination
y0 + sum_j (beta_ij dt) k_j is ONE autograd node (`StageSum`, whose backward is the transposed linear map), and each
step's dense output at the requested times is ONE matrix product and node (`DenseOutput`), instead of the tens of
recorded scalar-times-tensor ops torchdiffeq's step and its dense-output fit make. On a small field those ops and
their nodes, not arithmetic, set the cost of backpropagating through the solver.
"""
from __future__ import annotations

import torch


def combine(ks, coeffs, base=None):
    """base + sum_j coeffs[j] * ks[j], coefficients as Python floats; zero coefficients are skipped."""
    out = None
    for c, k in zip(coeffs, ks):
        if c != 0.0:
            out = torch.mul(k, c) if out is None else out.add_(k, alpha=c)
    if out is None:
        out = torch.zeros_like(ks[0])
    return out if base is None else out.add_(base)


class StageSum(torch.autograd.Function):
    """One stage combination of a Runge-Kutta step, base + sum_j c_j k_j with c_j = beta_j dt, as ONE autograd node
    (recorded op by op it is about i multiplies, i sums and their nodes, each a few microseconds on a small state).

    forward(coeffs, c, beta, dt, buffer, base, *ks), with c = beta * dt (a tensor of the state's dtype) and coeffs
    its values as Python floats: `buffer` None: the fast in-place sum (`combine`); otherwise torchdiffeq's own ops
    on its stage-last buffer, base + (buffer[..., :n] * c).sum(-1), the stages k_j written into the buffer without a
    graph: what a step whose dt carries a gradient uses, so that its values are torchdiffeq's to the bit. backward:
    the same linear map transposed, in one product: grad k_j = c_j g, grad base = g, and where dt needs one,
    grad dt = sum_j beta_j <g, k_j> (torchdiffeq differentiates c = beta * dt)."""

    @staticmethod
    def forward(ctx, coeffs, c, beta, dt, buffer, base, *ks):
        if buffer is None:
            out = combine(ks, coeffs, base=base)
        else:
            out = base + torch.sum(buffer[..., :len(ks)] * c, dim=-1).view_as(base)
        ctx.c = c
        if ctx.needs_input_grad[3]:
            ctx.beta, ctx.buffer = beta, buffer   # the buffer's first n columns never change after this stage
        return out

    @staticmethod
    def backward(ctx, g):
        grad_dt = None
        c = ctx.c
        if ctx.needs_input_grad[3]:
            stages = ctx.buffer[..., :len(c)]
            grad_dt = ((stages * g.unsqueeze(-1)).reshape(-1, len(c)).sum(0) * ctx.beta).sum()
        grads = (g.unsqueeze(0) * c.view(-1, *[1] * g.dim())).unbind(0)
        return None, None, None, grad_dt, None, g, *grads


def stage_sum(coeffs, c, beta, dt, buffer, base, ks):
    """StageSum where anything needs a gradient; the same forward without autograd's bookkeeping elsewhere."""
    if torch.is_grad_enabled() and (dt.requires_grad or base.requires_grad or any(k.requires_grad for k in ks)):
        return StageSum.apply(coeffs, c, beta, dt, buffer, base, *ks)
    if buffer is None:
        return combine(ks, coeffs, base=base)
    with torch.no_grad():
        return base + torch.sum(buffer[..., :len(ks)] * c, dim=-1).view_as(base)


def dense_weights(xs, dt, mid, derivatives=False):
    """The weights of (y0, y1, k_0 ... k_s) in torchdiffeq's fourth-order dense output at the positions xs (floats
    in [0, 1]) of a step of size dt: p(x) = e + d x + c x^2 + b x^3 + a x^4 is linear in y0, y1,
    y_mid = y0 + dt sum_j mid_j k_j, f0 = k_0 and f1 = k_s, so each weight is a scalar polynomial in x (times dt
    for the stages). With `derivatives`, also their derivatives in x and in dt (the stages' weights over dt)."""
    rows, by_x, by_dt = [], [], []
    for xi in xs:
        x2 = xi * xi
        x3, x4 = x2 * xi, x2 * x2
        w_mid = 16 * x2 - 32 * x3 + 16 * x4
        per_dt = [w_mid * m for m in mid]
        per_dt[0] += xi - 4 * x2 + 5 * x3 - 2 * x4                            # f0 = k_0
        per_dt[-1] += x2 - 3 * x3 + 2 * x4                                    # f1 = k_s
        rows.append([1 - 11 * x2 + 18 * x3 - 8 * x4 + w_mid, -5 * x2 + 14 * x3 - 8 * x4]
                    + [dt * w for w in per_dt])
        if derivatives:
            d_mid = 32 * xi - 96 * x2 + 64 * x3
            d_dt = [d_mid * m for m in mid]
            d_dt[0] += 1 - 8 * xi + 15 * x2 - 8 * x3
            d_dt[-1] += 2 * xi - 9 * x2 + 8 * x3
            by_x.append([-22 * xi + 54 * x2 - 32 * x3 + d_mid, -10 * xi + 42 * x2 - 32 * x3]
                        + [dt * w for w in d_dt])
            by_dt.append([0.0, 0.0] + per_dt)
    return rows, by_x, by_dt


class DenseOutput(torch.autograd.Function):
    """A step's dense output at the positions x [m] as one matrix product of `dense_weights` with the step's
    (y0, y1, k_0 ... k_s), and ONE autograd node: forward(x, dt, mid, y0, y1, *ks) -> [m, *y0.shape]. Its backward
    is the transposed product for the states, and the weights' derivatives for x and dt when they carry a gradient
    (after a first step size with one, every later time does): torchdiffeq fits the polynomial and evaluates it in
    about forty recorded ops, each its own node."""

    @staticmethod
    def forward(ctx, x, dt, mid, y0, *states):
        xs, dtf = x.tolist(), float(dt)
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        rows, by_x, by_dt = dense_weights(xs, dtf, mid, derivatives=need)
        weights = torch.tensor(rows, dtype=y0.dtype, device=y0.device)
        values = torch.stack([y0, *states]).reshape(len(states) + 1, -1)
        ctx.shape, ctx.derivatives = y0.shape, (by_x, by_dt)
        ctx.save_for_backward(weights, values if need else None)
        return torch.mm(weights, values).view(len(rows), *y0.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable   # the weights are floats of x: no second derivative in x
    def backward(ctx, g):
        weights, values = ctx.saved_tensors
        grad = g.reshape(len(weights), -1)
        grad_values = torch.mm(weights.t(), grad).view(len(weights.t()), *ctx.shape).unbind(0)
        grad_x = grad_dt = None
        if values is not None:
            by_weight = torch.mm(grad, values.t())                            # d loss / d weight [m, s + 2]
            by_x, by_dt = (torch.tensor(d, dtype=grad.dtype, device=grad.device) for d in ctx.derivatives)
            if ctx.needs_input_grad[0]:
                grad_x = (by_weight * by_x).sum(1)
            if ctx.needs_input_grad[1]:
                grad_dt = (by_weight * by_dt).sum()
        return grad_x, grad_dt, None, *grad_values
