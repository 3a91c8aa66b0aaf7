"""Shared fixtures of the whole suite (no test folder has its own copy):

- `make_fake_mnist(train, val, test, seed)` / `fake_mnist`: a tiny, learnable fake MNIST in torchvision's raw
  layout (no network, no real data);
- `node_run(*args)`: the node-run CLI in a subprocess, one thread per process, as a user would run it;
- `solver_cfg(**kw)`: a `solver` config node, conf/solver/dopri5.yaml with `kw` on top;
- `compose(*overrides)`: the config Hydra composes from conf/ (node_cli.core.compose.compose);
- `assert_png(path)`: a PNG that is a real figure; `read_mnist(root)`: an MNIST split read independently.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import mnist_fake   # tests/mnist_fake.py (pytest puts tests/ on sys.path: it has no __init__.py)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def make_fake_mnist(tmp_path_factory):
    """(train, val, test, seed) -> the root of a fake MNIST with those split sizes (train + val = node-run's
    training set, as with the real mnist.pkl.gz); each size and seed made once per session."""
    made = {}

    def make(train=384, val=128, test=200, seed=0) -> Path:
        key = (train, val, test, seed)
        if key not in made:
            made[key] = mnist_fake.write(tmp_path_factory.mktemp("mnist"), train, val, test, seed)
        return made[key]

    return make


@pytest.fixture(scope="session")
def fake_mnist(make_fake_mnist) -> Path:
    """512 training images, 200 test images."""
    return make_fake_mnist()


@pytest.fixture(scope="session")
def node_run():
    """Run the node-run CLI in a subprocess with one thread (on a shared CPU two threads each can make an ODE-Net
    step a hundred times slower); returns the CompletedProcess (text)."""
    def run(*args, cwd=None, timeout=300):
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        return subprocess.run([sys.executable, "-m", "node_cli.cli", *args], cwd=cwd or tempfile.gettempdir(),
                              env=env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny models: one thread is much faster than two fighting over a shared CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def grads():
    """The gradients of sum(block(y0)^2) with respect to y0 and to every parameter of the block."""
    def compute(block, y0):
        block.zero_grad()
        y0 = y0.clone().requires_grad_(True)
        block(y0).pow(2).sum().backward()
        return [y0.grad] + [p.grad.clone() for p in block.parameters()]

    return compute


@pytest.fixture(scope="session")
def solver_cfg():
    """A `solver` config node: the shipped conf/solver/dopri5.yaml (every key an ODEBlock reads) with `kw` on top."""
    base = OmegaConf.load(REPO / "conf" / "solver" / "dopri5.yaml")

    def make(**kw):
        return OmegaConf.merge(base, kw)

    return make


@pytest.fixture(scope="session")
def compose():
    """The config that `overrides` (strings, or one list of them) compose to, as node-run composes it."""
    from node_cli.core.compose import compose as hydra_compose

    def make(*overrides):
        if len(overrides) == 1 and not isinstance(overrides[0], str):
            overrides = tuple(overrides[0])
        return hydra_compose(list(overrides))

    return make


@pytest.fixture(scope="session")
def assert_png():
    """Check that a PNG file is a real figure: it loads, its size is plausible, and it is not blank (its pixels
    vary, hold several distinct colours, and at least `min_ink` of them differ from the background). Returns the
    image array [H, W, C]."""
    import matplotlib.image

    def check(path, min_height=100, min_width=100, min_colours=8, min_ink=0.01):
        path = Path(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        img = matplotlib.image.imread(path)
        assert img.ndim == 3 and img.shape[2] in (3, 4), (path, img.shape)
        h, w = img.shape[:2]
        assert min_height <= h <= 10_000 and min_width <= w <= 10_000, (path, img.shape)
        rgb = img[..., :3]
        assert rgb.var() > 0, f"{path} is blank"
        values, counts = np.unique((rgb.reshape(-1, 3) * 255).round().astype(np.uint8), axis=0, return_counts=True)
        assert len(values) >= min_colours, f"{path}: only {len(values)} distinct colours"
        ink = 1 - counts.max() / counts.sum()           # pixels that are not the background colour
        assert ink >= min_ink, f"{path}: only {ink:.1%} of the pixels are drawn on"
        return img

    return check


@pytest.fixture(scope="session")
def read_mnist():
    """A split of an MNIST root straight from its idx files (numpy, not node-run's loader): (images [N,1,28,28]
    float32 in [0, 1] as node-run scales them, labels int64)."""
    def read(root, split="t10k"):
        raw = Path(root) / "MNIST" / "raw"
        x = np.frombuffer((raw / f"{split}-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(-1, 1, 28, 28)
        y = np.frombuffer((raw / f"{split}-labels-idx1-ubyte").read_bytes()[8:], np.uint8)
        return torch.tensor(x).float().div_(255.0), torch.tensor(y, dtype=torch.int64)

    return read
