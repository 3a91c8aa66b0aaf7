"""logger=csv, logger=tensorboard and logger=mlflow: live views that carry exactly the rows of metrics.jsonl, also
after a resume; metrics.jsonl stays the record. TensorBoard and MLflow also get the config (hyperparameters /
params) and the figures; MLflow is read back through MlflowClient."""
import csv
import importlib.util
import json

import pytest

from node_cli.core.checks import ConfigError
from node_cli.core.checks import logger as check

NF = ["experiment=nf_moons", "trainer=quick", "trainer.max_steps=4", "trainer.eval_every=2", "model.depth=2",
      "dataset.test_size=100", "trainer.progress=false"]


def _jsonl(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_csv_view_holds_the_rows_of_metrics_jsonl(tmp_path, node_run):
    r = node_run(*NF, "logger=csv", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "run" / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    rows = _jsonl(tmp_path / "run")
    assert [int(t["step"]) for t in table] == [row["step"] for row in rows] == [2, 4]
    for t, row in zip(table, rows):
        assert float(t["test_nll"]) == pytest.approx(row["test_nll"], rel=1e-12)


def test_tensorboard_view_holds_every_number_at_its_step(tmp_path, node_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = node_run(*NF, "logger=tensorboard", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    rows = _jsonl(tmp_path / "run")
    scalars = events.Scalars("test_nll")
    assert [s.step for s in scalars] == [row["step"] for row in rows]
    assert [s.value for s in scalars] == pytest.approx([row["test_nll"] for row in rows], rel=1e-6)
    assert "train_loss" in events.Tags()["scalars"] and "step" not in events.Tags()["scalars"]
    # the run's figures as images, and the hyperparameters (the flattened config) with the final metrics
    figures = sorted(p.stem for p in (tmp_path / "run").glob("*.png"))
    assert figures and sorted(events.Tags()["images"]) == [f"figures/{f}" for f in figures]
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    info = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()]
    hparams = next(i.session_start_info.hparams for i in info if i.HasField("session_start_info"))
    assert hparams["trainer.max_steps"].number_value == 4 and hparams["model.depth"].number_value == 2
    assert hparams["experiment" if "experiment" in hparams else "name"].string_value == "nf_moons"


def test_an_unknown_logger_is_refused_naming_the_registry():
    from node_cli.core.views import LOGGERS

    assert list(LOGGERS) == ["none", "csv", "tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match="unknown logger 'wandb'; accepted: none, csv, tensorboard, mlflow$"):
        check("wandb")


def _flat(node, prefix=""):   # written here, not node-run's: the params MLflow must hold
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="logger=mlflow needs pip install 'node-run[mlflow]' (in the test extra)")


@needs_mlflow
def test_mlflow_holds_params_metrics_tags_artifacts_and_a_resume_continues_the_run(tmp_path, node_run):
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    r = node_run(*NF, "logger=mlflow", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    db = tmp_path / "outputs" / "mlflow.db"   # the default store: outputs/ under the working directory
    client = MlflowClient(f"sqlite:///{db}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "nf_moons"]
    (run,) = client.search_runs([experiment.experiment_id])
    config = _flat(OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=True))
    assert run.data.params == {k: str(v) for k, v in config.items()}
    rows = _jsonl(run_dir)
    history = client.get_metric_history(run.info.run_id, "test_nll")
    assert [(m.step, m.value) for m in history] == [(row["step"], pytest.approx(row["test_nll"])) for row in rows]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "ok"
    assert run.data.tags["host"] == summary["host"] and run.data.tags.get("git_commit") == summary.get("git_commit")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    figures = {f"figures/{a.path.split('/')[-1]}" for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "summary.json" in artifacts and figures == {f"figures/{p.name}" for p in run_dir.glob("*.png")} != set()
    assert not (tmp_path / "mlruns").exists()   # artifacts beside the store, not in the working directory
    from node_cli.core.runs import discover       # and their copy of summary.json is not taken for a run
    assert [r.path for r in discover([tmp_path])[0]] == [run_dir.resolve()]

    r = node_run(f"resume={run_dir}", "trainer.max_steps=6", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (again,) = client.search_runs([experiment.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_nll")][-1] == 6
    assert again.data.params["trainer.max_steps"] == "4" and again.data.tags["resumed_with.trainer.max_steps"] == "6"


@needs_mlflow
def test_mlflow_groups_the_jobs_of_a_sweep_under_one_experiment(tmp_path, node_run):
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "outputs" / "multirun" / "s"
    r = node_run("-m", *NF, "trainer=smoke", "seed=0,1", "logger=mlflow", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "outputs/multirun/s"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert {r.data.tags["run_dir"] for r in runs} == {str(sweep / "0"), str(sweep / "1")}


@needs_mlflow
def test_an_unreachable_mlflow_store_is_a_warning_and_the_run_finishes_ok(tmp_path, monkeypatch, caplog, one_thread):
    from node_cli.experiment import configure, execute

    (tmp_path / "a_file").write_text("")   # a store inside a file: no database can be made there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}")
    cfg = configure([*NF, "logger=mlflow", "threads=1"])
    summary = execute(cfg, tmp_path / "run")
    assert summary["status"] == "ok"
    assert any("logger=mlflow: could not open the MLflow run" in r.getMessage() for r in caplog.records)
    assert [row["step"] for row in _jsonl(tmp_path / "run")] == [2, 4]   # metrics.jsonl is still the record
