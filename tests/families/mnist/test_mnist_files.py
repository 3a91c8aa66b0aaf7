"""MNIST files as a shared data folder needs them: the usual permissions; a folder node-run cannot write is said
to be one (not blamed on the network)."""
import gzip
import os
import pickle
import stat

import numpy as np
import pytest

from node_cli.core.checks import DataError
from node_cli.families.mnist.data import RAW_FILES, convert_pickle, load_mnist


def test_converted_files_are_readable_by_everyone_under_the_usual_umask(tmp_path):
    rng = np.random.default_rng(0)
    split = lambda n: (rng.random((n, 784)).astype(np.float32) * 0.99, rng.integers(0, 10, n))  # noqa: E731
    with gzip.open(tmp_path / "m.pkl.gz", "wb") as f:
        pickle.dump((split(4), split(2), split(3)), f)
    old = os.umask(0o022)
    try:
        root = convert_pickle(tmp_path / "m.pkl.gz", tmp_path / "data")
    finally:
        os.umask(old)
    for name in RAW_FILES:
        mode = stat.S_IMODE((root / "MNIST" / "raw" / name).stat().st_mode)
        assert mode == 0o644, (name, oct(mode))


def test_a_folder_that_cannot_be_written_is_said_to_be_one(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the data folder's parent should be")   # not writable, even for root
    with pytest.raises(DataError, match="not writable") as err:
        load_mnist(blocker / "data", download=True)
    assert "mirrors" not in str(err.value) and "network" not in str(err.value)
