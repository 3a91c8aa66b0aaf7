"""A tiny, learnable fake MNIST in torchvision's raw layout (no network, no real data). The suite's fixtures
(conftest.make_fake_mnist) and scripts/wheel_check.sh (against the installed wheel) both make it here:

    python tests/mnist_fake.py ROOT [TRAIN]   # ROOT/data then serves as dataset.root (dataset.download=false)
"""
import gzip
import pickle
import sys
from pathlib import Path

import numpy as np

from node_cli.families.mnist.data import convert_pickle


def fake_split(rng, n):
    """Digit c is a bright 8x8 square at one of 10 positions, plus noise: learnable in a few steps."""
    y = rng.integers(0, 10, size=n)
    x = rng.integers(0, 40, size=(n, 28, 28)).astype(np.float64)
    for i, c in enumerate(y):
        r, col = 2 + 8 * (c // 4), 2 + 6 * (c % 4)
        x[i, r:r + 8, col:col + 8] = 250
    return (x.reshape(n, 784) / 256).astype(np.float32), y.astype(np.int64)


def write(root, train=384, val=128, test=200, seed=0) -> Path:
    """A fake mnist.pkl.gz in `root` (train + val = node-run's training set, as with the real one), converted by
    node-run's own converter; returns the dataset root, `root`/data."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pkl = root / "mnist.pkl.gz"
    with gzip.open(pkl, "wb") as f:
        pickle.dump((fake_split(rng, train), fake_split(rng, val), fake_split(rng, test)), f)
    return convert_pickle(pkl, root / "data")


if __name__ == "__main__":
    print(write(Path(sys.argv[1]), *map(int, sys.argv[2:3])))
