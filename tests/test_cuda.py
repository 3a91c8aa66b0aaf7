"""node-run on CUDA (marked `cuda`; skipped where torch.cuda.is_available() is false; scripts/device_check.sh runs
them on a GPU). Every family trains a few steps with device=cuda into a complete run; its CUDA-trained checkpoint,
evaluated on the CPU by node-eval, gives the run's own test metrics; a fixed batch's loss and gradients on CUDA match
the CPU's from the same weights (float32, TF32 off); deterministic=true repeats a CUDA run bit for bit.

NODE_RUN_CUDA_TESTS_ON=cpu runs this file's own code on the CPU instead (CPU against CPU): a dry run of the tests
for a machine without a GPU, which checks the harness and nothing about CUDA.
"""
import contextlib
import json
import math
import os

import pytest
import torch
from omegaconf import OmegaConf

from node_cli import families
from node_cli.core.rundir import CHECKPOINT, CONFIG, SUMMARY
from node_cli.core.runs import load_checkpoint
from node_cli.evaluate import evaluate
from node_cli.experiment import configure, execute

DEVICE = torch.device(os.environ.get("NODE_RUN_CUDA_TESTS_ON", "cuda"))
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(),
    reason="no CUDA device (torch.cuda.is_available() is false); scripts/device_check.sh runs these on a GPU")]

# one experiment per code path of every family, each shrunk to seconds (the budget: BUDGET)
EXPERIMENTS = {
    "mnist_odenet": ["dataset.download=false", "trainer.batch_size=16"],               # adjoint, fast RK
    "mnist_rknet": ["dataset.download=false", "trainer.batch_size=16"],                # backprop through the solver
    "spiral_latent_ode": ["dataset.n_spirals=40", "dataset.n_obs=12", "trainer.batch_size=16"],
    "spiral_rnn_dt": ["dataset.n_spirals=40", "dataset.n_obs=12", "trainer.batch_size=16"],
    "cnf_moons": ["model.width=4", "dataset.test_size=200", "trainer.batch_size=64"],
    "density_nf": ["model.depth=4", "dataset.test_size=200", "trainer.batch_size=64"],
    "ffjord_pinwheel": ["dataset.test_size=200", "trainer.batch_size=64"],            # Hutchinson in training
    "dynamics_spiral": ["dataset.n_points=120"],
    "anode_annuli": [],
}
BUDGET = ["trainer=quick", "trainer.max_steps=3", "trainer.eval_every=2", "trainer.progress=false"]


def overrides(experiment, mnist_root, *extra):
    data = [f"dataset.root={mnist_root}"] if experiment.startswith("mnist") else []
    return [f"experiment={experiment}", *EXPERIMENTS[experiment], *data, *BUDGET, *extra]


def train(folder, args):
    """A run made as node-run makes it (config, then execute) into `folder`; returns its summary."""
    cfg = configure(args)
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / CONFIG)
    return execute(cfg, folder)


@pytest.fixture(scope="module")
def mnist_root(make_fake_mnist):
    return make_fake_mnist()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_root):
    """experiment -> (folder, summary) of its run on DEVICE, made once (each test then reads them)."""
    made = {}

    def get(experiment):
        if experiment not in made:
            folder = tmp_path_factory.mktemp("cuda") / experiment
            made[experiment] = folder, train(folder, overrides(experiment, mnist_root, f"device={DEVICE.type}"))
        return made[experiment]

    return get


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_family_trains_a_few_steps_on_cuda_into_a_complete_run(runs, experiment):
    folder, s = runs(experiment)
    assert s["status"] == "ok" and s["steps"] == 3, (s["status"], s.get("error"))
    assert s["device"] == DEVICE.type and s["error"] is None and "memory_error" not in s, s
    if DEVICE.type == "cuda":
        assert s["device_name"] == torch.cuda.get_device_name()
        assert s["peak_memory_method"] == "cuda.max_memory_allocated"
    assert s["peak_memory_bytes"] > 0 and s["activation_bytes"] >= 0
    assert math.isfinite(s["objective_value"]) and math.isfinite(s["sec_per_step"])
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 3] and lines[-1]["final"]
    for name in s.get("figures", []):
        assert (folder / name).stat().st_size > 1000, name
    ckpt = load_checkpoint(folder / CHECKPOINT)   # torch.load(weights_only=True), mapped to the CPU
    assert ckpt["step"] == 3 and all(t.device.type == "cpu" for t in ckpt["model"].values())


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_a_cuda_trained_checkpoint_evaluated_on_cpu_gives_the_runs_test_metrics(runs, experiment):
    folder, s = runs(experiment)
    assert s["status"] == "ok", s.get("error")
    got = json.loads(evaluate(folder, device="cpu").read_text())
    assert got["device"] == "cpu"
    metrics = {k: v for k, v in s.items() if k.startswith("test_") and isinstance(v, float) and math.isfinite(v)}
    assert metrics
    for key, value in metrics.items():
        if key in ("test_error", "test_accuracy"):   # counts over 200 or 512 examples: two may fall the other way
            assert abs(got[key] - value) <= 0.01, (key, got[key], value)
        else:
            assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-5), (key, got[key], value)


@contextlib.contextmanager
def float32_exact():
    """TF32 off (cuDNN convolutions use it by default on Ampere and later): the GPU then computes in float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def to(batch, device):
    return tuple(to(b, device) for b in batch) if isinstance(batch, (tuple, list)) else batch.to(device)


def latent_loss(task, batch):
    """The latent ODE's training loss with the noise of z0 fixed (drawn once, on the CPU) instead of drawn on the
    device: the same ELBO sample on both devices."""
    x, t = batch
    noise = torch.randn(len(x), task.model.latent_dim, generator=torch.Generator().manual_seed(7)).to(x.device)
    return -task.model.elbo(x, t, noise).mean()


LOSSES = {"spiral_latent_ode": latent_loss}                 # default: the task's own training loss
SAME_DRAWS = {"ffjord_pinwheel": ["model.trace=exact"]}     # Hutchinson's noise would differ between devices


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_a_fixed_batch_forward_backward_on_cuda_matches_the_cpu(mnist_root, experiment):
    """The same weights (copied) and the same batch (the task's memory batch, drawn on the CPU) on both devices; the
    solver at rtol = atol = 1e-5, so that a step accepted on one device and rejected on the other moves the result
    by far less than the tolerance below. float32 on both: relative 1e-3 on the loss and every gradient, absolute
    1e-4 of the largest entry of that gradient."""
    args = overrides(experiment, mnist_root, "solver.rtol=1e-5", "solver.atol=1e-5", *SAME_DRAWS.get(experiment, []))
    results = []
    with float32_exact():
        for device in (torch.device("cpu"), DEVICE):
            cfg = configure(args + [f"device={device.type}"])
            torch.manual_seed(cfg.seed)
            task = families.build(cfg, device)
            if not results:
                weights, batch = task.model.state_dict(), task.memory_batch()
            task.model.load_state_dict(weights)
            task.model.zero_grad(set_to_none=True)
            loss = LOSSES.get(experiment, lambda task, b: task.loss(b))(task, to(batch, device))
            loss.backward()
            grads = {n: p.grad.detach().cpu() for n, p in task.model.named_parameters() if p.grad is not None}
            results.append((loss.detach().cpu(), grads))
    (cpu_loss, cpu_grads), (dev_loss, dev_grads) = results
    assert torch.isfinite(cpu_loss) and cpu_grads and set(dev_grads) == set(cpu_grads)
    torch.testing.assert_close(dev_loss, cpu_loss, rtol=1e-3, atol=1e-6)
    for name, g in cpu_grads.items():
        scale = g.abs().max().item()
        torch.testing.assert_close(dev_grads[name], g, rtol=1e-3, atol=max(1e-4 * scale, 1e-8), msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("experiment", ["mnist_odenet", "spiral_latent_ode", "ffjord_pinwheel"])
def test_deterministic_runs_on_cuda_repeat_bit_for_bit(tmp_path, mnist_root, experiment):
    """deterministic=true: two runs of the same config end with identical weights and metrics (cuDNN's convolution
    algorithms and CUDA's atomics would otherwise make them differ in the last bits)."""
    ends = []
    try:
        for i in range(2):
            s = train(tmp_path / str(i), overrides(experiment, mnist_root, f"device={DEVICE.type}", "deterministic=true"))
            assert s["status"] == "ok", s.get("error")
            ckpt = load_checkpoint(tmp_path / str(i) / CHECKPOINT)
            ends.append((ckpt["model"], {k: v for k, v in s.items() if k.startswith("test_")}))
    finally:
        torch.use_deterministic_algorithms(False)
    (w0, m0), (w1, m1) = ends
    assert m0 == m1 and m0
    assert all(torch.equal(w0[k], w1[k]) for k in w0), [k for k in w0 if not torch.equal(w0[k], w1[k])]
