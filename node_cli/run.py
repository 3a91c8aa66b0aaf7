"""What every run writes in its output dir: metrics.jsonl, summary.json and checkpoint.pt.

- `metrics.jsonl`: one JSON object per evaluation, appended and flushed as it happens.
- `summary.json`: written atomically (temp file, then rename) when the run ends, whatever its status.
- `checkpoint.pt`: written atomically at every evaluation whose metrics are finite: the last good state.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch

METRICS, SUMMARY, CHECKPOINT = "metrics.jsonl", "summary.json", "checkpoint.pt"
_UMASK = os.umask(0)
os.umask(_UMASK)


def _clean(value):
    """JSON-safe copy: NaN/inf become null, tensors become numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)`, then rename the temp file onto `path`: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes 0600 files; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: Path, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(_clean(obj), f, indent=2)
            f.write("\n")
    atomic_write(path, write)


class RunDir:
    """A run's output folder (Hydra's output dir)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def log(self, row: dict) -> None:
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(_clean(row)) + "\n")

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / SUMMARY, summary)

    def save_checkpoint(self, state: dict) -> None:
        atomic_write(self.path / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def read_metrics(path) -> list[dict]:
    with open(Path(path) / METRICS) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_summary(path) -> dict:
    with open(Path(path) / SUMMARY) as f:
        return json.load(f)
