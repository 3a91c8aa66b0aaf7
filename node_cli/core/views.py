"""Live views of a run's metrics for other tools: `logger=csv` keeps `metrics.csv` (the rows of metrics.jsonl as a
table) and `logger=tensorboard` writes TensorBoard event files under `tensorboard/` (every number of every row,
at its step). metrics.jsonl stays the record node-report reads; a view only receives the same rows."""
from __future__ import annotations

import json
from pathlib import Path

class CsvView:
    """metrics.csv, rewritten from metrics.jsonl at every row (one row per evaluation: small), so its columns
    always cover every key and a resumed run's table matches its log."""

    def __init__(self, path: Path, metrics: Path):
        self.file, self.metrics = Path(path) / "metrics.csv", metrics

    def write(self, row: dict) -> None:
        self.sync()

    def sync(self) -> None:
        from .tables import write_csv

        if self.metrics.is_file():
            write_csv(self.file, [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()])


class TensorBoardView:
    def __init__(self, path: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(path) / "tensorboard"))

    def write(self, row: dict) -> None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step",):
                self.writer.add_scalar(key, value, global_step=int(row["step"]))
        self.writer.flush()

    def sync(self) -> None:
        """A resumed run: TensorBoard shows the newest value written at a step, so nothing to redo."""


def open_view(name: str | None, path: Path, metrics: Path):
    """The view `logger` names (checked by core.checks.logger), or None."""
    if name in (None, "none"):
        return None
    return CsvView(path, metrics) if name == "csv" else TensorBoardView(path)
