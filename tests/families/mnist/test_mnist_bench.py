"""Every speed-up of node-run's MNIST step computes the same thing: same loss and gradients (float64, so rounding
differences stay far below the tolerances) and the same NFE as the plain version and the reference example;
`node-bench step | memory` write their tables."""
import csv
import warnings

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from node_cli.bench.cli import main as node_bench
from node_cli.core.solve import nfe
from node_cli.families.mnist.models import ConvField, build_mnist_model
from node_cli.families.mnist.reference import build_reference_model, copy_weights
from node_cli.families.mnist.task import MnistTask, compile_field


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny checks: one thread beats two fighting over a CPU


@pytest.fixture
def mnist_model(solver_cfg):
    """A maker of small float64 MNIST models (8 channels, 2 ResNet blocks), dopri5 1e-3 with the adjoint unless
    `solver_kw` says otherwise."""
    def make(name="odenet", channels=8, fast_rk=False, **solver_kw):
        m = OmegaConf.create(dict(name=name, channels=channels, t1=1.0, blocks=2, fast_rk=fast_rk))
        return build_mnist_model(m, solver_cfg(**solver_kw)).double()

    return make


def loss_grads_nfe(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()], nfe(model)


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def assert_same(a, b, rtol=1e-7):
    (la, ga, na), (lb, gb, nb) = a, b
    assert na == nb                                   # the same NFE-F and NFE-B
    assert la == pytest.approx(lb, rel=1e-10)
    scale = max(u.abs().max().item() for u in ga)     # some gradients are 0 in exact arithmetic (bias before a norm)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("adjoint, tol", [(True, 1e-3), (True, 1e-5), (False, 1e-3)])
def test_fast_rk_step_gives_the_same_loss_gradients_and_nfe(mnist_model, adjoint, tol):
    torch.manual_seed(0)
    plain = mnist_model(adjoint=adjoint, rtol=tol, atol=tol)
    fast = mnist_model(fast_rk=True, adjoint=adjoint, rtol=tol, atol=tol)
    fast.load_state_dict(plain.state_dict())
    x, y = batch()
    a, b = loss_grads_nfe(plain, x, y), loss_grads_nfe(fast, x, y)
    assert a[2][0] > 8 and (a[2][1] > 8) == adjoint
    assert_same(a, b)


@pytest.mark.parametrize("name, adjoint", [("odenet", True), ("rknet", False), ("resnet", False)])
def test_node_run_model_equals_the_reference_example_on_the_same_batch(mnist_model, name, adjoint):
    torch.manual_seed(0)
    node = mnist_model(name, fast_rk=True, adjoint=adjoint)
    ref, _ = build_reference_model("odenet" if name != "resnet" else "resnet", tol=1e-3, adjoint=adjoint, blocks=2,
                                   channels=8)
    ref = ref.double()
    copy_weights(node, ref)
    x, y = batch()
    a = loss_grads_nfe(node, x, y)
    ref_calls = [m for m in ref.modules() if hasattr(m, "odefunc")]
    ref.zero_grad(set_to_none=True)
    loss = F.cross_entropy(ref(x), y)
    forward = ref_calls[0].nfe if ref_calls else 0
    loss.backward()
    total = ref_calls[0].nfe if ref_calls else 0
    b = (loss.item(), [p.grad.clone() for p in ref.parameters()], (forward, total - forward))
    assert_same(a, b, rtol=1e-6)


def test_compile_falls_back_to_eager_when_unsupported(monkeypatch):
    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler here")
        return run

    torch.manual_seed(0)
    field = ConvField(8).double()
    x, t = torch.randn(2, 8, 6, 6, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    wanted = field(t, x)
    monkeypatch.setattr(torch, "compile", broken_compile)
    compile_field(field)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = field(t, x)
        again = field(t, x)
    torch.testing.assert_close(got, wanted)
    torch.testing.assert_close(again, wanted)
    assert sum("model.compile" in str(w.message) for w in caught) == 1      # warned once, then eager
    assert [k for k in field.state_dict()] == [k for k in ConvField(8).state_dict()]


def test_channels_last_task_gives_the_same_loss_and_gradients(compose, fake_mnist):
    out = []
    for cl in (False, True):
        cfg = compose(["experiment=mnist_odenet", f"dataset.root={fake_mnist}", "dataset.download=false",
                             "model.channels=8", f"model.channels_last={str(cl).lower()}", "trainer.batch_size=8"])
        torch.manual_seed(0)
        task = MnistTask(cfg, torch.device("cpu"))
        x, y = task.memory_batch()
        assert x.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        out.append(loss_grads_nfe(task.model.double(), task.inputs(x.double()), y))
    assert_same(*out, rtol=1e-6)


def test_node_bench_writes_its_tables(tmp_path, fake_mnist, assert_png):
    out = tmp_path / "bench"
    code = node_bench(["all", "--models", "odenet,resnet", "--steps", "1", "--warmup", "0", "--batch", "16",
                       "--data-root", str(fake_mnist), "--out", str(out), "--ref-workers", "0", "--tol", "1e-1",
                       "--tols", "1e-1,1e-4", "--blocks", "1,2", "--threads", "1"])
    assert code == 0
    rows = list(csv.DictReader(open(out / "step.csv")))
    assert [(r["model"], r["runner"]) for r in rows] == [("odenet", "node-run"), ("odenet", "reference"),
                                                         ("resnet", "node-run"), ("resnet", "reference")]
    ode = [r for r in rows if r["model"] == "odenet"]
    assert ode[0]["check_nfe_forward"] == ode[1]["check_nfe_forward"] != "0"   # same NFE on the same batch
    assert ode[0]["check_nfe_backward"] == ode[1]["check_nfe_backward"] != "0"
    assert float(ode[0]["check_loss"]) == pytest.approx(float(ode[1]["check_loss"]), rel=1e-5)
    for r in ode:
        shares = float(r["field_share"]), float(r["solver_share"]), float(r["rest_share"])
        assert all(0 < s < 1 for s in shares) and sum(shares) == pytest.approx(1.0)
        assert float(r["sec_per_step"]) > 0 and float(r["speedup_vs_reference"]) > 0
    mem = list(csv.DictReader(open(out / "memory.csv")))
    assert [(r["model"], r["setting"]) for r in mem] == [
        ("odenet", "tol 0.1"), ("odenet", "tol 0.0001"), ("rknet", "tol 0.1"), ("rknet", "tol 0.0001"),
        ("resnet", "1 blocks"), ("resnet", "2 blocks")]
    odenet, rknet, resnet = mem[:2], mem[2:4], mem[4:]
    assert int(odenet[1]["nfe_forward"]) > int(odenet[0]["nfe_forward"])
    assert odenet[0]["activation_bytes"] == odenet[1]["activation_bytes"]          # the adjoint: O(1)
    assert int(rknet[1]["activation_bytes"]) > int(rknet[0]["activation_bytes"])    # backprop: grows with NFE
    assert int(resnet[1]["activation_bytes"]) > int(resnet[0]["activation_bytes"])
    assert_png(out / "memory.png", min_height=300, min_width=800)
    assert "| odenet |" in (out / "step.md").read_text()
    assert node_bench(["step", "--out", str(out), "--data-root", str(fake_mnist)]) == 2   # never overwrites
