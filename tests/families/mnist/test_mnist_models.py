"""Table 1's models: parameter counts, memory ordering, and the tensor augmentation."""
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from node_cli.core.measure import activation_bytes, count_parameters, peak_memory
from node_cli.core.solve import ODEBlock, nfe
from node_cli.families.mnist.models import ConcatConv2d, build_mnist_model
from node_cli.families.mnist.task import random_crop


@pytest.fixture
def model(solver_cfg):
    """A maker of Table 1's models: name, solver overrides (dopri5 1e-3 with the adjoint by default), model keys."""
    def make(name, solver=None, **kw):
        cfg = dict(name=name, channels=64, t1=1.0, blocks=6, hidden=300) | kw
        return build_mnist_model(OmegaConf.create(cfg), solver_cfg(**(solver or {})))

    return make


# paper.md: reference example ODE-Net 208,266, ResNet 576,778; paper's Table 1: 0.22M, 0.60M, 0.22M, 0.24M.
@pytest.mark.parametrize("name, solver, expected", [
    ("odenet", {}, 208_266), ("rknet", {"adjoint": False}, 208_266), ("resnet", {}, 576_778), ("mlp", {}, 238_510)])
def test_parameter_counts_match_the_reference(model, name, solver, expected):
    assert count_parameters(model(name, solver)) == expected


def act_bytes(m, batch=8):
    torch.manual_seed(0)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    f0, _ = nfe(m)
    b = activation_bytes(m, lambda: F.cross_entropy(m(x), y))
    return b, nfe(m)[0] - f0


def test_activation_bytes_order_as_the_paper_claims(model):
    torch.manual_seed(0)
    loose, tight = {"rtol": 1e-1, "atol": 1e-1}, {"rtol": 1e-6, "atol": 1e-6}
    base = model("odenet", {"adjoint": True, **loose}, channels=16)
    state = base.state_dict()
    ode = {}
    rk = {}
    for name, tol in (("loose", loose), ("tight", tight)):
        m = model("odenet", {"adjoint": True, **tol}, channels=16)
        m.load_state_dict(state)
        ode[name] = act_bytes(m)
        m = model("rknet", {"adjoint": False, **tol}, channels=16)
        m.load_state_dict(state)
        rk[name] = act_bytes(m)
    assert ode["tight"][1] > ode["loose"][1]                 # tighter tolerance: more evaluations...
    assert ode["tight"][0] == ode["loose"][0]                # ...and the adjoint still stores the same bytes
    assert rk["tight"][0] > rk["loose"][0] > ode["loose"][0]  # backprop through the solver grows with NFE
    res = [act_bytes(model("resnet", blocks=k, channels=16))[0] for k in (1, 2, 4)]
    assert res[0] < res[1] < res[2]                          # ResNet grows with depth


def test_peak_memory_is_positive_and_grows_with_batch(model):
    m = model("mlp")
    small = peak_memory(m, lambda: m(torch.rand(16, 1, 28, 28)).sum(), torch.device("cpu"))
    large = peak_memory(m, lambda: m(torch.rand(2048, 1, 28, 28)).sum(), torch.device("cpu"))
    assert 0 < small < large


def test_random_crop_matches_pad_then_crop():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 1, 28, 28)
    out = random_crop(x, 4, g)
    g = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 9, (2, 5), generator=g)
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(5):
        torch.testing.assert_close(out[i], padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28])


def test_concat_conv_is_the_convolution_of_the_concatenated_time_channel():
    torch.manual_seed(0)
    conv = ConcatConv2d(5, 7).double()
    x = torch.randn(3, 5, 6, 6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.37, dtype=torch.float64, requires_grad=True)
    wanted = conv.conv(torch.cat([torch.ones_like(x[:, :1]) * t, x], 1))
    got = conv(t, x)
    torch.testing.assert_close(got, wanted, rtol=1e-12, atol=1e-12)
    inputs = (x, t, conv.conv.weight, conv.conv.bias)
    for a, b in zip(torch.autograd.grad(got.pow(2).sum(), inputs), torch.autograd.grad(wanted.pow(2).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("extra", [1, 32])
def test_augmented_odenet_solves_a_wider_state_and_counts_its_parameters(solver_cfg, extra):

    m = OmegaConf.create(dict(name="odenet", channels=64, t1=1.0, augment_dim=extra, fast_rk=False))
    model = build_mnist_model(m, solver_cfg(rtol=1e-2, atol=1e-2))
    w = 64 + extra   # by hand: two 3x3 convolutions of w + 1 -> w channels with biases, three GroupNorms of w
    field = 2 * (w * (w + 1) * 9 + w) + 3 * 2 * w
    plain = 2 * (64 * 65 * 9 + 64) + 3 * 2 * 64
    assert count_parameters(model) == 208_266 - plain + field
    seen = {}
    block = next(mod for mod in model.modules() if isinstance(mod, ODEBlock))
    block.register_forward_hook(lambda mod, inp, out: seen.update(state=inp[0], out=out))
    logits = model(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10)
    assert seen["state"].shape[1] == w and torch.all(seen["state"][:, 64:] == 0)   # appended zero channels
    assert seen["out"][:, 64:].abs().sum() > 0                                   # which the flow uses
