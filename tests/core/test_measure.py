"""activation_bytes (core/measure.py) against bytes counted by hand: what the forward's graph still holds for the
backward pass, not what graphs made and dropped inside the forward saved."""
import torch
from torch import nn

from node_cli.core.measure import activation_bytes


def test_activation_bytes_count_what_the_graph_holds_not_graphs_dropped_inside_the_forward():
    torch.manual_seed(0)
    model = nn.Linear(100, 100, bias=False)
    x = torch.randn(64, 100)

    def forward(transient: int):
        with torch.no_grad():               # as an adjoint's forward solve of a field that takes a gradient
            for _ in range(transient):
                with torch.enable_grad():
                    y = x.clone().requires_grad_()
                    torch.autograd.grad((y.tanh() ** 2).sum(), y)
        return model(x).tanh().sum()        # saves x (the weight is a parameter: excluded) and tanh's output

    by_hand = x.nbytes + 64 * 100 * 4
    assert activation_bytes(model, lambda: forward(0)) == by_hand
    assert activation_bytes(model, lambda: forward(5)) == by_hand
