"""node-report on single runs: every finished run of every family appears in a table with its numbers (a single
FFJORD run, which no comparison table takes, and smoke runs, which no paper table takes, in their family's per-run
table), and a mean over runs counts distinct seeds, not runs."""
import csv
import json
import shutil

import pytest
from omegaconf import OmegaConf

from node_cli.experiment import configure, execute
from node_cli.report.build import build


def _run(folder, overrides):
    """A smoke run made in this process, with the .hydra/config.yaml node-run's Hydra would have written."""
    cfg = configure(overrides + ["trainer=smoke", "trainer.progress=false", "threads=1"])
    summary = execute(cfg, folder)
    assert summary["status"] == "ok", summary.get("error")
    (folder / ".hydra").mkdir()
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    return summary


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory, make_fake_mnist):
    root = tmp_path_factory.mktemp("single")
    mnist = make_fake_mnist()
    made = {name: _run(root / name, [f"experiment={name}"] + extra) for name, extra in [
        ("mnist_mlp", [f"dataset.root={mnist}"]), ("spiral_rnn", ["dataset.n_spirals=20"]),
        ("ffjord_8gaussians", []), ("dynamics_spiral", [])]}
    return root, made


def test_every_finished_single_run_is_in_a_table_with_its_numbers(single_runs, tmp_path, one_thread):
    root, made = single_runs
    rep = build([str(root)], tmp_path / "rep")
    assert len(rep.runs) == 4 and all(r.ok for r in rep.runs)
    assert all(r.used for r in rep.runs), {r.setting("name"): r.used for r in rep.runs}
    ffjord = next(r for r in rep.runs if r.model == "ffjord")
    assert ffjord.used == ["flows per-run table"]
    with open(tmp_path / "rep" / "runs_flows.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["run_id"] == ffjord.id and row["metric"] == "test_nll"
    assert float(row["value"]) == pytest.approx(made["ffjord_8gaussians"]["test_nll"], rel=1e-12)
    assert "final_eval_limit=32" in row["evaluation"]           # a smoke run says its evaluation was limited
    assert all("figure" not in p for r in rep.runs for p in r.problems)   # its skipped figures are no problem
    assert all(u.endswith("per-run table") for r in rep.runs for u in r.used)   # smoke runs: in no paper table
    md = (tmp_path / "rep" / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith(f"| {ffjord.id} | ffjord_8gaussians |"))
    assert f"test_nll {made['ffjord_8gaussians']['test_nll']:.4g}" in line


def test_a_mean_over_runs_counts_distinct_seeds(tmp_path, one_thread):
    cell = tmp_path / "cell"   # the same spirals run twice, seed 0 both times, evaluated on the whole test split
    _run(cell / "a", ["experiment=spiral_rnn", "dataset.n_spirals=20", "trainer.final_eval_limit=null"])
    shutil.copytree(cell / "a", cell / "b")
    build([str(cell)], tmp_path / "rep1")
    assert "(2 runs, 1 seed)" in (tmp_path / "rep1" / "report.md").read_text()
    cfg = OmegaConf.load(cell / "b" / ".hydra" / "config.yaml")
    cfg.seed = 1
    OmegaConf.save(cfg, cell / "b" / ".hydra" / "config.yaml")
    summary = json.loads((cell / "b" / "summary.json").read_text())
    (cell / "b" / "summary.json").write_text(json.dumps(dict(summary, seed=1)))
    build([str(cell)], tmp_path / "rep2")
    text = (tmp_path / "rep2" / "report.md").read_text()
    assert "(2 seeds)" in text and "(2 runs" not in text
