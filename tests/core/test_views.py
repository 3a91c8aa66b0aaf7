"""logger=csv and logger=tensorboard: live views that carry exactly the rows of metrics.jsonl, also after a
resume; metrics.jsonl stays the record."""
import csv
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


def test_an_unknown_logger_is_refused():
    with pytest.raises(ConfigError, match="unknown logger 'wandb'; accepted: none, csv, tensorboard"):
        check("wandb")
