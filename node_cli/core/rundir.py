"""The run-folder contract, the writing side: what every run writes (`RunDir`), atomically, and how a folder is
claimed and held by one node-run. Reading runs and checkpoints back is core/runs.py.

- `.hydra/config.yaml`: Hydra's record of the composed config: what a run *is* (never its folder name).
- `metrics.jsonl`: one JSON object per evaluation, appended and flushed as it happens.
- `summary.json`: written atomically (temp file, then rename) when the run ends, whatever its status.
- `checkpoint.pt`: written atomically at every evaluation whose metrics are finite: the last good state. It holds
  only tensors, numbers, strings, lists and dicts, so `runs.load_checkpoint` reads it with `weights_only=True`; its
  `format` says which keys it holds, and `runs.read_checkpoint` is the one reader that knows which formats it can read.
- `resumed.json`: every process that continued the run (resume=, a requeued job, a restart), written atomically
  when that process starts: the summary's `resumed`, even for processes that were killed.
- `.node-run.claim`: the claim marker; the process that runs the run holds an exclusive lock (flock) on it for its
  whole life (`lock`), so a second node-run is refused while the first lives, whatever killed it later.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import tempfile
from pathlib import Path

import torch

from .checks import ConfigError

METRICS, SUMMARY, CHECKPOINT, RESUMED = "metrics.jsonl", "summary.json", "checkpoint.pt", "resumed.json"
CLAIM = ".node-run.claim"   # made with O_EXCL before a run starts: two node-runs never share a folder
CONFIG = Path(".hydra") / "config.yaml"
MLFLOW_ARTIFACTS = "mlflow-artifacts"   # logger=mlflow's copies of summaries and figures (outputs/...): never runs
# What `node-run resume=RUN_DIR` may change in a run's config: its budget, and the progress bar
BUDGET = ("trainer.max_steps", "trainer.epochs")
RESUMABLE = BUDGET + ("trainer.progress",)
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
    except OSError as exc:   # a full disk's write errors name no file: name the one being written
        exc.filename = str(path) if exc.filename in (None, tmp) else exc.filename
        raise
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
    """A run's output folder (Hydra's output dir); `logger` names a live view of it (core/views.py), which gets
    the composed `cfg` (its parameters)."""

    def __init__(self, path, logger: str | None = None, cfg=None):
        from .views import open_view

        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.view = open_view(logger, self.path, self.path / METRICS, cfg)

    def log(self, row: dict) -> None:
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(_clean(row)) + "\n")
        if self.view is not None:
            self.view.write(_clean(row))

    def truncate(self, step: int, drop_final: bool = False) -> None:
        """Keep the metrics up to `step` (a resumed run continues its log from its checkpoint)."""
        truncate_metrics(self.path, step, drop_final)
        if self.view is not None:
            self.view.sync()

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / SUMMARY, summary)
        if self.view is not None:
            self.view.finish(_clean(summary))

    def save_checkpoint(self, state: dict) -> None:
        buffer = io.BytesIO()   # torch reports a failed file write as a RuntimeError; Python's is an OSError
        torch.save(state, buffer)
        atomic_write(self.path / CHECKPOINT, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


def read_metrics(path) -> list[dict]:
    with open(Path(path) / METRICS) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_summary(path) -> dict:
    """A run's summary; ValueError if it is not a JSON object."""
    with open(Path(path) / SUMMARY) as f:
        summary = json.load(f)
    if not isinstance(summary, dict):
        raise ValueError(f"{SUMMARY} holds a {type(summary).__name__}, not an object")
    return summary


def truncate_metrics(path, step: int, drop_final: bool = False) -> None:
    """Keep the metrics lines up to `step` (and drop a final line if `drop_final`): a resumed run continues the log
    from its checkpoint instead of restarting it. Rewritten atomically."""
    file = Path(path) / METRICS
    if not file.is_file():
        return
    kept = []
    for line in file.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue   # a half-written line of the interrupted process
        if isinstance(row, dict) and row.get("step", 0) <= step and not (drop_final and row.get("final")):
            kept.append(line)

    def write(tmp):
        Path(tmp).write_text("".join(k + "\n" for k in kept))
    atomic_write(file, write)


def claim(path) -> Path:
    """Make `path` and claim it for one node-run with a marker created atomically (O_EXCL); ConfigError if another
    node-run claimed it first. Returns the marker."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / CLAIM
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        raise ConfigError(f"{path} is already claimed by another node-run (it holds {CLAIM}); choose another "
                          "folder (node-run never writes two runs into one)") from None
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(dict(pid=os.getpid(), host=os.uname().nodename)) + "\n")
    return marker


_LOCKS: dict[str, list] = {}   # this process's locked run folders: [descriptor, depth] (flock is per open file)


@contextlib.contextmanager
def locked(path):
    """Hold the run folder `path` for this process while the block runs: an exclusive flock on its claim marker
    (made if missing), re-entrant within the process, released when the process ends however it ends.
    ConfigError if another process holds it."""
    key = str(Path(path).resolve())
    if key not in _LOCKS:
        Path(path).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(path) / CLAIM, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"{path} is in use by another node-run (running now); wait for it to end, or stop "
                              "it (Ctrl-C or SIGTERM saves its step)") from None
        _LOCKS[key] = [fd, 0]
    _LOCKS[key][1] += 1
    try:
        yield
    finally:
        _LOCKS[key][1] -= 1
        if not _LOCKS[key][1]:
            os.close(_LOCKS.pop(key)[0])


def in_use(path) -> bool:
    """Whether another process holds the run folder `path` (`locked`) now."""
    if not (Path(path) / CLAIM).is_file():
        return False
    try:
        with locked(path):
            return False
    except ConfigError:
        return True


def resumes(path) -> list:
    """The processes that continued the run in `path` so far (resumed.json; runs from before it: their summary's
    `resumed`); [] for none or an unreadable record."""
    for name in (RESUMED, SUMMARY):
        try:
            value = json.loads((Path(path) / name).read_text())
        except (OSError, ValueError):
            continue
        value = value if name == RESUMED else value.get("resumed") if isinstance(value, dict) else None
        if isinstance(value, list):
            return value
    return []


def holds_run(path) -> bool:
    """Whether a folder already holds (or is reserved for) a run."""
    path = Path(path)
    return any((path / name).exists() for name in (SUMMARY, METRICS, CHECKPOINT, CLAIM))
