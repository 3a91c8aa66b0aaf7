"""Shared fixtures: a tiny, learnable fake MNIST in torchvision's raw layout (no network, no real data)."""
import gzip
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from node_cli.mnist import convert_pickle

REPO = Path(__file__).resolve().parents[1]


def _fake_split(rng, n):
    """Digit c is a bright 8x8 square at one of 10 positions, plus noise: learnable in a few steps."""
    y = rng.integers(0, 10, size=n)
    x = rng.integers(0, 40, size=(n, 28, 28)).astype(np.float64)
    for i, c in enumerate(y):
        r, col = 2 + 8 * (c // 4), 2 + 6 * (c % 4)
        x[i, r:r + 8, col:col + 8] = 250
    return (x.reshape(n, 784) / 256).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    pkl = root / "mnist.pkl.gz"
    with gzip.open(pkl, "wb") as f:
        pickle.dump((_fake_split(rng, 384), _fake_split(rng, 128), _fake_split(rng, 200)), f)
    return convert_pickle(pkl, root / "data")


def node_run(*args, cwd=None, timeout=300):
    """Run the node-run CLI in a subprocess, as a user would; returns CompletedProcess (text)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.run([sys.executable, "-m", "node_cli.cli", *args], cwd=cwd or tempfile.gettempdir(), env=env,
                          capture_output=True, text=True, timeout=timeout)
