"""Live views of a run for other tools, chosen by `logger` from one registry (`LOGGERS`: name -> opener and the
package it needs), which core/checks.py validates against:

- `csv`: `metrics.csv`, the rows of metrics.jsonl as a table;
- `tensorboard`: event files under `tensorboard/`: every number of every row at its step and, when the run ends,
  its hyperparameters (the flattened config, with the final metrics) and its figures;
- `mlflow`: an MLflow run (a SQLite store `outputs/mlflow.db` under the working directory, or
  `$MLFLOW_TRACKING_URI`): params = the flattened config, metrics = every row at its step, tags = status, git
  commit, host, artifacts = summary.json and the figures; the jobs of a sweep share one MLflow experiment, and a
  resumed run continues its MLflow run.

metrics.jsonl stays the record node-report reads; a view only receives the same rows (`write`), is told when a
resumed run cut its log back (`sync`) and receives the summary each time it is written (`finish`)."""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("node_run")
FIGURES = (".png",)   # the run's own figures (a GIF is not an image TensorBoard shows; MLflow gets it anyway)


def _numbers(row: dict) -> dict:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


def _params(cfg) -> dict:
    """The composed config flattened to {dotted key: value} (Hydra's own keys aside)."""
    from omegaconf import OmegaConf

    from .compose import flat

    if cfg is None:
        return {}
    return flat({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"})


def _figures(path: Path, suffixes=FIGURES) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix in suffixes and p.is_file())


class CsvView:
    """metrics.csv, rewritten from metrics.jsonl at every row (one row per evaluation: small), so its columns
    always cover every key and a resumed run's table matches its log."""

    def __init__(self, path: Path, metrics: Path, cfg=None):
        self.file, self.metrics = Path(path) / "metrics.csv", metrics

    def write(self, row: dict) -> None:
        self.sync()

    def sync(self) -> None:
        from .tables import write_csv

        if self.metrics.is_file():
            write_csv(self.file, [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()])

    def finish(self, summary: dict) -> None:
        """Nothing beyond the rows."""


class TensorBoardView:
    def __init__(self, path: Path, metrics: Path, cfg=None):
        from torch.utils.tensorboard import SummaryWriter

        self.path, self.cfg = Path(path), cfg
        self.writer = SummaryWriter(log_dir=str(self.path / "tensorboard"))

    def write(self, row: dict) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, global_step=int(row["step"]))
        self.writer.flush()

    def sync(self) -> None:
        """A resumed run: TensorBoard shows the newest value written at a step, so nothing to redo."""

    def finish(self, summary: dict) -> None:
        """The hyperparameters (the flattened config; lists as text) with the final metrics, and the figures."""
        import matplotlib.image

        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in _params(self.cfg).items()}
        final = {f"hparam/{k}": v for k, v in _numbers(summary).items() if k.startswith("test_")}
        self.writer.add_hparams(hparams, final, run_name=".")
        step = int(summary.get("steps") or 0)
        for png in _figures(self.path):
            self.writer.add_image(f"figures/{png.stem}", matplotlib.image.imread(png)[..., :3], step,
                                  dataformats="HWC")
        self.writer.flush()


class MlflowView:
    """One MLflow run per node-run run, through MlflowClient (no global active run: a sweep in one process opens
    one view per job). A tracking failure is logged as a warning and never fails the run: metrics.jsonl is the
    record."""
    RUN_ID = "mlflow.json"   # in the run folder: the store and run id a resumed run continues

    def __init__(self, path: Path, metrics: Path, cfg=None):
        self.path, self.cfg, self.client, self.run_id = Path(path), cfg, None, None
        self._try("open the MLflow run", self._open, opening=True)

    def _try(self, what: str, action: Callable, opening: bool = False) -> None:
        """Do a tracking action; a failure is a warning in the log (after a failed open, nothing more is tried)."""
        if self.client is None and not opening:
            return
        try:
            action()
        except Exception as exc:  # MLflow's and its database's errors: the run goes on, metrics.jsonl is the record
            from .checks import one_line
            log.warning("logger=mlflow: could not %s: %s", what, one_line(exc, 300))
            if opening:
                self.client = None

    def _open(self) -> None:
        for name in ("mlflow", "alembic", "sqlalchemy"):   # their INFO lines (database set-up) are not ours
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        saved = self.path / self.RUN_ID
        if saved.is_file():   # a resumed run: the same MLflow run, in the store it was made in
            known = json.loads(saved.read_text())
            self.client, self.run_id = MlflowClient(tracking_uri=known["tracking_uri"]), known["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            logged = self.client.get_run(self.run_id).data.params
        else:
            uri = tracking_uri()
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self._experiment(uri)
            name = f"{self.cfg.name} {self.path.name}" if self.cfg is not None else self.path.name
            run = self.client.create_run(experiment, run_name=name, tags={"status": "running",
                                                                           "run_dir": str(self.path.resolve())})
            self.run_id, logged = run.info.run_id, {}
            from .rundir import write_json
            write_json(saved, dict(tracking_uri=uri, run_id=self.run_id, experiment_id=experiment))
        # params never change in MLflow: a resumed run adds the keys it did not have, and tags what it changed
        params = {k: str(v)[:6000] for k, v in _params(self.cfg).items()}
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        for k, v in params.items():
            if k in logged and logged[k] != v:
                self.client.set_tag(self.run_id, f"resumed_with.{k}", v)

    def _experiment(self, uri: str) -> str:
        """The MLflow experiment: the sweep folder for the jobs of a sweep (Hydra writes multirun.yaml there), else
        the run's `name`. In the default store its artifacts live beside the database, not in the working
        directory's ./mlruns."""
        sweep = self.path.parent.resolve() if (self.path.parent / "multirun.yaml").is_file() else None
        if sweep is not None:   # relative to the working directory where it is below it (outputs/multirun/...)
            name = str(sweep.relative_to(Path.cwd())) if sweep.is_relative_to(Path.cwd()) else str(sweep)
        else:
            name = str(self.cfg.name if self.cfg is not None else "node-run")
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        artifacts = None
        if uri == default_uri():
            from .rundir import MLFLOW_ARTIFACTS
            artifacts = (Path("outputs") / MLFLOW_ARTIFACTS).resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except Exception:   # another job of the sweep made it first
            return self.client.get_experiment_by_name(name).experiment_id

    def write(self, row: dict) -> None:
        from mlflow.entities import Metric

        def log_row():
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, int(row["step"])) for k, v in _numbers(row).items()]
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        self._try("log a metrics row", log_row)

    def sync(self) -> None:
        """A resumed run logs its rows after the checkpoint again; MLflow keeps both values at such a step."""

    def finish(self, summary: dict) -> None:
        def close():
            status = str(summary.get("status", "unknown"))
            tags = dict(status=status, host=summary.get("host"), git_commit=summary.get("git_commit"),
                        git_dirty=summary.get("git_dirty"), node_run=summary.get("node_run"),
                        error=summary.get("error"))
            for k, v in tags.items():
                if v is not None:
                    self.client.set_tag(self.run_id, k, str(v)[:5000])
            summary_file = self.path / "summary.json"
            if summary_file.is_file():
                self.client.log_artifact(self.run_id, str(summary_file))
            for figure in _figures(self.path, FIGURES + (".gif",)):
                self.client.log_artifact(self.run_id, str(figure), "figures")
            done = {"ok": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            self.client.set_terminated(self.run_id, status=done)
        self._try("close the MLflow run", close)


def default_uri() -> str:
    return "sqlite:///" + str((Path("outputs") / "mlflow.db").resolve())


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI when set, else a SQLite store outputs/mlflow.db under the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    Path("outputs").mkdir(exist_ok=True)
    return default_uri()


@dataclass(frozen=True)
class Logger:
    opener: Callable | None           # (run folder, metrics.jsonl, cfg) -> a view; None: no view
    packages: tuple[str, ...] = ()    # the modules it needs
    extra: str = ""                   # pip install 'node-run[EXTRA]' installs them


LOGGERS = {
    "none": Logger(None),
    "csv": Logger(CsvView),
    "tensorboard": Logger(TensorBoardView, ("tensorboard",), "tensorboard"),
    "mlflow": Logger(MlflowView, ("mlflow", "sqlalchemy", "alembic"), "mlflow"),
}


def open_view(name: str | None, path: Path, metrics: Path, cfg=None):
    """The view `logger` names (checked by core.checks.logger), or None."""
    spec = LOGGERS.get(name or "none")
    return spec.opener(path, metrics, cfg) if spec is not None and spec.opener is not None else None
