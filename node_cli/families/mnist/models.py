"""The MNIST classifiers of Table 1: MLP, ResNet, RK-Net and ODE-Net (the reference example's architecture).

Parameter counts (64 channels): ODE-Net and RK-Net 208,266; ResNet with 6 blocks 576,778; MLP 238,510.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ...core.checks import ConfigError
from ...core.solve import ODEBlock

MODELS = ("odenet", "rknet", "resnet", "mlp")


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(min(32, C)) as the reference example; where that does not divide C (an augmented field's
    64 + K channels), the largest group count that divides both 32 and C."""
    groups = min(32, channels)
    return nn.GroupNorm(groups if channels % groups == 0 else math.gcd(32, channels), channels)


@lru_cache(maxsize=32)
def _taps(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[9, h*w]: 1 where the 3x3 tap at (dy, dx) lands inside the h x w image (zero padding 1), else 0."""
    with torch.inference_mode(False), torch.no_grad():   # a cached constant: never an inference tensor
        return F.unfold(torch.ones(1, 1, h, w, device=device, dtype=dtype), 3, padding=1)[0]


class ConcatConv2d(nn.Module):
    """3x3 convolution that also sees t as an extra constant input channel.

    The parameters are those of conv(cat([t * ones, x])) (a (c_in + 1)-channel convolution, as in the reference
    example), but the constant channel is not materialised: its contribution is t times the convolution of a
    ones image with the time filter, a fixed [c_out, h, w] map (it differs from a constant only at the zero-padded
    border), added to a c_in-channel convolution of x. Same function, less work: no concatenated copy of the
    input and a 64- instead of a 65-channel convolution (see docs/tools/bench.md for the measured gain).
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in + 1, c_out, 3, padding=1)

    def forward(self, t, x):
        weight, bias = self.conv.weight, self.conv.bias
        h, w = x.shape[-2:]
        tmap = (weight[:, 0].reshape(len(weight), 9) @ _taps(h, w, x.device, x.dtype)).view(1, -1, h, w)
        return F.conv2d(x, weight[:, 1:], None, padding=1).add_(tmap * t + bias.view(1, -1, 1, 1))


class ConvField(nn.Module):
    """The ODE-Net vector field: GN-ReLU-conv(t)-GN-ReLU-conv(t)-GN."""

    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.conv1 = norm(c), ConcatConv2d(c, c)
        self.norm2, self.conv2 = norm(c), ConcatConv2d(c, c)
        self.norm3 = norm(c)

    def forward(self, t, x):
        x = self.conv1(t, torch.relu(self.norm1(x)))
        x = self.conv2(t, torch.relu(self.norm2(x)))
        return self.norm3(x)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(ReLU(GN(conv(ReLU(GN(x))))))."""

    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.conv1 = norm(c), nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm2, self.conv2 = norm(c), nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(torch.relu(self.norm1(x)))
        return x + self.conv2(torch.relu(self.norm2(out)))


def downsampling(c: int) -> nn.Sequential:
    """28x28x1 -> 6x6xc: conv3x3, then two stride-2 conv4x4, with GroupNorm and ReLU between."""
    return nn.Sequential(
        nn.Conv2d(1, c, 3, 1), norm(c), nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 4, 2, 1), norm(c), nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 4, 2, 1),
    )


def head(c: int, classes: int = 10) -> nn.Sequential:
    return nn.Sequential(norm(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))


class Augmented(nn.Module):
    """An augmented neural ODE (Dupont, Doucet, Teh 2019): `extra` zero channels appended to the state before the
    ODE block and dropped after it, so the flow has room to move trajectories past each other."""

    def __init__(self, block: nn.Module, channels: int, extra: int):
        super().__init__()
        self.block, self.channels, self.extra = block, channels, extra

    def forward(self, x):
        zeros = x.new_zeros(x.shape[0], self.extra, *x.shape[2:])
        return self.block(torch.cat([x, zeros], 1))[:, : self.channels]


def build_mnist_model(model_cfg, solver_cfg) -> nn.Module:
    name = model_cfg.name
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, model_cfg.hidden), nn.ReLU(inplace=True),
                             nn.Linear(model_cfg.hidden, 10))
    c = model_cfg.channels
    if name == "resnet":
        if model_cfg.blocks < 1:
            raise ConfigError(f"model.blocks={model_cfg.blocks} is not allowed: it must be at least 1")
        middle = nn.Sequential(*[ResBlock(c) for _ in range(model_cfg.blocks)])
    elif name in ("odenet", "rknet"):
        if name == "rknet" and solver_cfg.adjoint:
            raise ConfigError("model=rknet backpropagates through the solver: set solver.adjoint=false "
                              "(or use model=odenet for the adjoint)")
        extra = int(model_cfg.get("augment_dim", 0) or 0)
        middle = ODEBlock(ConvField(c + extra), solver_cfg, t1=model_cfg.t1,
                          fast_rk=bool(model_cfg.get("fast_rk", False)) and bool(solver_cfg.get("fast_rk", True)))
        if extra:
            middle = Augmented(middle, c, extra)
    else:
        raise ConfigError(f"unknown model {name!r} for MNIST; accepted: {', '.join(MODELS)}")
    return nn.Sequential(downsampling(c), middle, head(c))
