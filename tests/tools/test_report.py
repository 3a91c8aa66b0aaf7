"""node-report end to end, from tiny real runs of two families made here: each family's tables trace back to their
runs, figures are real and linked, bad runs are listed, runs at other settings are not averaged in, and a sweep's
exit status with the joblib launcher says when a job failed."""
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from node_cli.core.page import differences
from node_cli.core.runs import load_run
from node_cli.families.spirals.report import PAPER_TABLE2
from node_cli.report.build import build, experiment_of

COMMON = ["trainer=quick", "trainer.max_steps=2", "trainer.eval_every=null", "trainer.progress=false"]
DENSITY = ["experiment=density_cnf", "dataset.test_size=100", "trainer.batch_size=32", "model.width=2"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def paper_diffs(run):
    return differences(run, experiment_of(run))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, node_run):
    """Spirals runs (Table 2), density-matching runs (Figure 4), a joblib sweep whose second job fails in its first
    solve, a half-written, a torn and an alien copy of a density run, an empty folder and a missing one."""
    root = tmp_path_factory.mktemp("runs")
    r = node_run("-m", "experiment=spiral_latent_ode,spiral_rnn", "dataset=spirals", "dataset.n_spirals=20",
                 "dataset.n_obs=30", *COMMON, f"hydra.sweep.dir={root / 'spirals'}")
    assert r.returncode == 0, r.stderr
    r = node_run("-m", *DENSITY, "dataset.target=u1,u2", *COMMON, f"hydra.sweep.dir={root / 'density'}")
    assert r.returncode == 0, r.stderr
    # two jobs in parallel processes: one finishes, the other fails in its first solve
    joblib = node_run("-m", *DENSITY, "solver.rtol=0.1", "solver.atol=${solver.rtol}", "solver.max_num_steps=null,1",
                      *COMMON, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                      f"hydra.sweep.dir={root / 'variants'}")
    source = root / "density" / "0"
    broken = root / "broken"
    shutil.copytree(source, broken / "half_written")                         # a run that did not end
    (broken / "half_written" / "summary.json").unlink()
    with open(broken / "half_written" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "test_k')
    shutil.copytree(source, broken / "torn")                                 # a summary cut in the middle
    text = (broken / "torn" / "summary.json").read_text()
    (broken / "torn" / "summary.json").write_text(text[: len(text) // 2])
    shutil.copytree(source, broken / "alien")                                # a run of a kind nobody knows
    cfg = OmegaConf.load(broken / "alien" / ".hydra" / "config.yaml")
    cfg.task = "alien"
    OmegaConf.save(cfg, broken / "alien" / ".hydra" / "config.yaml")
    (root / "empty").mkdir()
    out = tmp_path_factory.mktemp("report") / "rep"
    rep = build([str(root / d) for d in ("spirals", "density", "variants", "broken", "empty", "missing")], out)
    return dict(root=root, joblib=joblib, rep=rep, out=out)


def test_joblib_sweep_runs_both_jobs_and_reports_the_failure(runs):
    j, root = runs["joblib"], runs["root"]
    assert j.returncode == 1, j.stderr
    statuses = sorted(json.loads((root / "variants" / k / "summary.json").read_text())["status"] for k in "01")
    assert statuses == ["failed", "ok"]
    assert "did not finish ok" in j.stderr and "Traceback" not in j.stderr
    run = load_run(root / "variants" / "0")
    assert run.setting("solver.atol") == 0.1                               # interpolations are resolved when read


def test_spirals_and_flows_tables_trace_back(runs):
    out = runs["out"]
    t2 = {(row["model_name"], row["n_obs"]): row for row in read_csv(out / "table2.csv")}
    for model in ("latent_ode", "rnn"):
        row = t2[(model, "30")]
        assert float(row["paper_test_rmse"]) == PAPER_TABLE2[model][30]
        run = load_run(Path(row["run_dirs"]))
        assert run.model == model and float(row["test_rmse"]) == pytest.approx(run.summary["test_rmse"])
    assert t2[("latent_ode", "50")]["n_runs"] == "0"                     # paper cells without a run stay visible
    f4 = read_csv(out / "figure4.csv")
    assert {(r["target"], r["capacity"]) for r in f4} == {("u1", "2"), ("u2", "2")}
    for row in f4:
        run = load_run(Path(row["run_dirs"]))
        assert Path(row["run_dirs"]).parent == runs["root"] / "density"   # not the variants at rtol 0.1
        assert run.setting("dataset.target") == row["target"] and float(row["test_kl"]) == pytest.approx(run.number("test_kl"))
    names = set(runs["rep"].files)
    assert {"figure4_loss.png", "figure4_grid.png", "table2.csv", "figure4.csv", "runs.csv"} <= names
    assert any(n.startswith("fig8_latent_ode") for n in names) and any(n.startswith("fig9_") for n in names)


def test_every_figure_is_real_and_linked(runs, assert_png):
    out = runs["out"]
    pngs = [n for n in runs["rep"].files if n.endswith(".png")]
    assert len(pngs) >= 5
    for name in runs["rep"].files:
        assert (out / name).stat().st_size > 100, name
    for name in pngs:
        assert_png(out / name, min_height=250, min_width=250)
    md = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert set(pngs) <= set(links)                                         # every figure made is shown
    for link in links:
        assert (out / link).is_file(), link


def test_bad_runs_are_listed_and_the_rest_is_made(runs):
    out, root = runs["out"], runs["root"]
    md = (out / "report.md").read_text()
    rows = {row["run_dir"]: row for row in read_csv(out / "runs.csv")}
    half = rows[str((root / "broken" / "half_written").resolve())]
    assert half["status"] == "unfinished" and "no summary.json" in half["problems"]
    assert "unreadable line" in half["problems"]
    torn = rows[str((root / "broken" / "torn").resolve())]
    assert torn["status"] == "unreadable" and "not valid JSON" in torn["problems"]
    assert "unknown kind" in rows[str((root / "broken" / "alien").resolve())]["problems"]
    failed = [row for row in rows.values() if row["status"] == "failed"]
    assert len(failed) == 1 and "max_num_steps" in failed[0]["problems"]
    assert f"{half['run_id']} (unfinished)" in md                      # named in its Figure 4 cell, not dropped
    assert f"{torn['run_id']} (unreadable)" in md
    assert "empty: no runs found" in md and "missing: no such folder" in md
    assert "## Table 1" in md and "No MNIST runs found" in md           # a family without runs says how to make them
    assert "## Table 2" in md and "## Figures 4-6" in md and "## Problems" in md and "## Runs" in md
    assert len(rows) == len(runs["rep"].runs) == 2 + 2 + 2 + 3


def test_runs_at_another_lr_are_not_averaged_into_the_default_cell(runs, tmp_path):
    """An lr sweep is a setting, not seeds: node-report keeps only the experiment's own optimizer settings."""
    src = next(Path(row["run_dirs"]) for row in read_csv(runs["out"] / "figure4.csv") if row["target"] == "u1")
    assert paper_diffs(load_run(src)) == ["model.width=2"]               # the tiny fixture's width
    copy = tmp_path / "other_lr"
    shutil.copytree(src, copy)
    cfg = OmegaConf.load(copy / ".hydra" / "config.yaml")
    cfg.trainer.lr = cfg.trainer.lr * 3
    OmegaConf.save(cfg, copy / ".hydra" / "config.yaml")
    assert paper_diffs(load_run(copy)) == ["model.width=2", f"trainer.lr={cfg.trainer.lr}"]
    rep = build([str(src), str(copy)], tmp_path / "rep")
    f4 = read_csv(tmp_path / "rep" / "figure4.csv")
    assert len(f4) == 1 and f4[0]["run_dirs"] == str(src.resolve()) and f4[0]["n_runs"] == "1"
    assert {r.path for r in rep.runs} == {src.resolve(), copy.resolve()}


def test_report_cli_on_folders_without_runs_and_on_a_used_out_folder(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "node_cli.report.cli", str(tmp_path / "empty"), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "no runs found" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and not out.exists()          # no report folder for nothing
    before = sorted(p.name for p in tmp_path.iterdir())
    r = subprocess.run([sys.executable, "-m", "node_cli.report.cli", str(runs["root"] / "density"), "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "is not empty" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before             # nothing written there


def test_spirals_per_run_table_shows_solver_steps_consistent_with_nfe(runs):
    report = (runs["out"] / "report.md").read_text()
    section = report[report.index("### Per run"):]
    header = next(line for line in section.splitlines() if line.startswith("| run |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| R")]
    latent = next(r for r in rows if r[columns.index("model")] == "Latent ODE")
    nfe_f = float(latent[columns.index("NFE-F / NFE-B")].split("/")[0])
    accepted, rejected = (float(v) for v in latent[columns.index("steps acc./rej.")].split("/"))
    assert accepted > 0 and nfe_f == pytest.approx(2 + 6 * (accepted + rejected), abs=0.15)   # dopri5's count
    rnn = next(r for r in rows if r[columns.index("model")] == "RNN")
    assert rnn[columns.index("steps acc./rej.")] == "0.0 / 0.0"                 # no ODE block, no steps


@pytest.mark.parametrize("overrides, expected", [
    (["trainer=short"], []),                                           # short's cosine is its budget, not a change
    (["trainer=quick"], []),
    (["trainer=quick", "trainer.schedule=cosine"], ["trainer.schedule=cosine"]),   # not quick's: a change
    (["trainer.schedule=cosine"], ["trainer.schedule=cosine"]),
    (["trainer=short", "trainer.lr=0.05"], ["trainer.lr=0.05"]),
])
def test_a_budget_presets_schedule_is_not_a_difference_from_the_paper_setting(tmp_path, compose, overrides,
                                                                              expected):
    from omegaconf import OmegaConf

    from node_cli.core.runs import Run

    command = ["experiment=mnist_odenet", *overrides]
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(command)))
    run = Run(tmp_path, cfg=OmegaConf.to_container(compose(command), resolve=True))
    assert differences(run, "mnist_odenet") == expected
