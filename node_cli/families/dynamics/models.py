"""The learned vector field: an MLP f(y) (autonomous, as torchdiffeq's ode_demo), solved by an ODEBlock.

`model.hidden`: the hidden layer widths, e.g. [50] (2-50-2, the default) or [150, 50, 50] (2-150-50-50-2);
`model.activation`: tanh | elu | relu; `model.augment_dim`: K zero channels appended to the state before the solve
and dropped after it (augmented neural ODEs, Dupont et al. 2019): the field then maps 2 + K to 2 + K.
Initialisation as ode_demo: weights N(0, 0.1), biases 0.
"""
from __future__ import annotations

import torch
from torch import nn

from ...core.solve import ODEBlock

ACTIVATIONS = dict(tanh=nn.Tanh, elu=nn.ELU, relu=nn.ReLU)


def widths(m) -> list[int]:
    hidden = m.hidden
    return [int(hidden)] if isinstance(hidden, int) else [int(h) for h in hidden]


class FieldMLP(nn.Module):
    def __init__(self, dim: int, hidden: list[int], activation: str):
        super().__init__()
        sizes = [dim, *hidden, dim]
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            lin = nn.Linear(n_in, n_out)
            nn.init.normal_(lin.weight, mean=0.0, std=0.1)
            nn.init.zeros_(lin.bias)
            layers += [lin] + ([ACTIVATIONS[activation]()] if i < len(sizes) - 2 else [])
        self.net = nn.Sequential(*layers)

    def forward(self, t, y):
        return self.net(y)


class DynamicsModel(nn.Module):
    """y(t) for the times t from y0 [..., dim] (dim 2, or 1 for the crossing map): returns [T, ..., dim]."""

    def __init__(self, m, solver_cfg, field: nn.Module | None = None, dim: int = 2):
        super().__init__()
        self.dim = dim
        self.augment_dim = int(m.get("augment_dim", 0) or 0)
        width = dim + self.augment_dim
        self.ode = ODEBlock(field if field is not None else FieldMLP(width, widths(m), str(m.activation)), solver_cfg)

    def augment(self, y0: torch.Tensor) -> torch.Tensor:
        if not self.augment_dim:
            return y0
        return torch.cat([y0, y0.new_zeros(*y0.shape[:-1], self.augment_dim)], -1)

    def forward(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.ode(self.augment(y0), t)[..., :self.dim]

    @torch.no_grad()
    def field_at(self, y: torch.Tensor) -> torch.Tensor:
        """The learned field at the points y [..., dim] (the augmented channels at 0, their components dropped)."""
        return self.ode.vector_field(None, self.augment(y))[..., :self.dim]


def build_model(m, solver_cfg, dim: int = 2) -> DynamicsModel:
    return DynamicsModel(m, solver_cfg, dim=dim)


@torch.no_grad()
def predict(model, data) -> tuple[torch.Tensor, torch.Tensor]:
    """(seen, extrapolated): the learned trajectory on the seen part from the true y0 [n_train, 2], and on the
    extrapolated part from the true state at the split [T - n_train, 2]."""
    k = data.n_train
    seen = model(data.truth[0], data.t[:k])
    ext = model(data.truth[k - 1], data.t[k - 1:])[1:]
    return seen, ext
