"""node-report end to end, from tiny real runs made here: tables trace back to their runs, figures are written,
bad runs are listed, the tolerance sweep never touches a run's files, sweep exit status with the joblib launcher."""
import contextlib
import csv
import gzip
import hashlib
import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import _fake_split, node_run
from node_cli.mnist import convert_pickle
from node_cli import report, tolsweep

TINY = ["trainer=quick", "trainer.max_steps=2", "trainer.eval_every=null", "trainer.batch_size=8",
        "trainer.progress=false", "dataset.download=false"]


def cli(*args):
    """node-run in a subprocess with one thread per process: on a shared CPU, two threads each can make an
    ODE-Net step a hundred times slower."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        return node_run(*args)


@contextlib.contextmanager
def one_thread():
    """The same for the in-process tolerance sweeps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def files_digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory):
    """conftest's fake digits, fewer of them: the final evaluation of an ODE-Net dominates a tiny run."""
    root = tmp_path_factory.mktemp("small_mnist")
    rng = np.random.default_rng(1)
    with gzip.open(root / "mnist.pkl.gz", "wb") as f:
        pickle.dump((_fake_split(rng, 64), _fake_split(rng, 16), _fake_split(rng, 24)), f)
    return convert_pickle(root / "mnist.pkl.gz", root / "data")


@pytest.fixture(scope="module")
def mnist(tmp_path_factory, small_mnist):
    """Four Table 1 runs (a sweep), an ODE-Net variant and a failed run (a joblib sweep), a half-written run, a run
    of an unknown kind, an empty folder, and a tolerance sweep of the ODE-Net."""
    root = tmp_path_factory.mktemp("report_runs")
    data = f"dataset.root={small_mnist}"
    r = cli("-m", "experiment=mnist_mlp,mnist_resnet,mnist_rknet,mnist_odenet", *TINY, data,
                 f"hydra.sweep.dir={root / 'table1'}")
    assert r.returncode == 0, r.stderr
    # two jobs in parallel processes: the loose-tolerance one finishes, the other fails in its first solve
    j = cli("-m", "experiment=mnist_odenet", "solver.rtol=0.1", "solver.atol=${solver.rtol}",
                 "solver.max_num_steps=null,1", *TINY, data, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 f"hydra.sweep.dir={root / 'variants'}")
    broken = root / "broken"
    shutil.copytree(root / "table1" / "0", broken / "half_written")           # an MLP run that did not end
    (broken / "half_written" / "summary.json").unlink()
    with open(broken / "half_written" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "test_err')
    shutil.copytree(root / "table1" / "0", broken / "torn")                   # a summary cut in the middle
    text = (broken / "torn" / "summary.json").read_text()
    (broken / "torn" / "summary.json").write_text(text[: len(text) // 2])
    shutil.copytree(root / "table1" / "0", broken / "alien")                  # a run of a kind nobody knows
    cfg = OmegaConf.load(broken / "alien" / ".hydra" / "config.yaml")
    cfg.task = "alien"
    OmegaConf.save(cfg, broken / "alien" / ".hydra" / "config.yaml")
    (root / "empty").mkdir()
    ode = root / "table1" / "3"
    before = files_digest(ode)
    with one_thread():
        tolsweep.main([str(ode), "--tols", "1e-1,1e-2,1e-3", "--reference", "1e-5", "--batch", "8", "--repeats", "1"])
    return dict(root=root, ode=ode, before=before, joblib=j)


@pytest.fixture(scope="module")
def built(mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "rep"
    root = mnist["root"]
    rep = report.build([str(root / "table1"), str(root / "variants"), str(root / "broken"), str(root / "empty"),
                        str(root / "missing")], out)
    return rep, out


def test_joblib_sweep_runs_both_jobs_and_reports_the_failure(mnist):
    j, root = mnist["joblib"], mnist["root"]
    assert j.returncode == 1, j.stderr
    statuses = sorted(json.loads((root / "variants" / k / "summary.json").read_text())["status"] for k in "01")
    assert statuses == ["failed", "ok"]
    assert "did not finish ok" in j.stderr and "Traceback" not in j.stderr


def test_table1_rows_trace_back_to_their_runs(built):
    rep, out = built
    rows = {row["model_name"]: row for row in read_csv(out / "table1.csv")}
    assert set(rows) == {"mlp", "resnet", "rknet", "odenet"}
    paper = {m: err for _, m, err, *_ in report.PAPER_TABLE1}
    md = (out / "report.md").read_text()
    for model, row in rows.items():
        assert float(row["paper_test_error"]) == paper[model]
        dirs = row["run_dirs"].split(";")
        assert len(dirs) == int(row["n_runs"]) == 1                # the variant ODE-Net is not in Table 1
        run = report.load_run(Path(dirs[0]))
        assert run.cfg["model"]["name"] == model and run.ok and not report.differences(run)
        s = run.summary
        assert float(row["test_error"]) == pytest.approx(s["test_error"])
        assert float(row["params"]) == s["params"]
        assert float(row["activation_bytes"]) == s["activation_bytes"]
        assert float(row["nfe_forward"]) == pytest.approx(s["nfe_forward"])
        rid = row["run_ids"]
        assert re.search(rf"\| {rid} \| ok \| classify/{model} \|", md)         # the run's line under 'Runs'
        assert any(line.startswith("| ") and f"| {rid}" in line and f"{100 * s['test_error']:.2f}%" in line
                   for line in md.splitlines())                              # the table line names it
    assert float(rows["odenet"]["nfe_backward"]) > 0 and float(rows["rknet"]["nfe_backward"]) == 0


def test_every_figure_is_written_and_linked(built):
    rep, out = built
    assert {"figure3.png", "memory.png", "table1.csv", "memory.csv", "runs.csv"} <= set(rep.files)
    for name in rep.files:
        data = (out / name).read_bytes()
        assert len(data) > 100, name
        if name.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / link).is_file(), link
    mem = read_csv(out / "memory.csv")
    series = {row["series"].split(":")[0] for row in mem}
    assert {"ODE-Net (adjoint)", "RK-Net (backprop through the solver)", "ResNet"} <= series
    for row in mem:
        assert json.loads((Path(row["run_dir"]) / "summary.json").read_text())["activation_bytes"] == \
            pytest.approx(float(row["activation_mib"]) * 2 ** 20)


def test_bad_runs_are_listed_and_the_rest_is_made(built, mnist):
    rep, out = built
    md = (out / "report.md").read_text()
    runs = {row["run_dir"]: row for row in read_csv(out / "runs.csv")}
    root = mnist["root"]
    half = runs[str((root / "broken" / "half_written").resolve())]
    assert half["status"] == "unfinished" and "no summary.json" in half["problems"]
    assert "unreadable line" in half["problems"]
    torn = runs[str((root / "broken" / "torn").resolve())]
    assert torn["status"] == "unreadable" and "not valid JSON" in torn["problems"]
    assert "unknown kind" in runs[str((root / "broken" / "alien").resolve())]["problems"]
    failed = [row for row in runs.values() if row["status"] == "failed"]
    assert len(failed) == 1 and "max_num_steps" in failed[0]["problems"]
    assert f"{half['run_id']} (unfinished)" in md                      # named in the MLP row, not dropped
    assert f"{torn['run_id']} (unreadable)" in md
    assert "empty: no runs found" in md and "missing: no such folder" in md
    assert "## Table 1" in md and "## Figure 3" in md and "## Problems" in md


def test_tolsweep_writes_its_own_folder_and_never_the_runs_files(mnist, built):
    ode = mnist["ode"]
    result = json.loads((ode / "tolsweep" / "tolsweep.json").read_text())
    rows = result["rows"]
    assert [r["tol"] for r in rows] == [0.1, 0.01, 0.001]
    assert result["adjoint"] is True and result["reference_nfe"] > rows[-1]["nfe_forward"]
    assert rows[-1]["error_rms"] < rows[0]["error_rms"]
    for r in rows:
        assert r["step_nfe_forward"] == r["nfe_forward"]              # same inputs, same tolerance, same solve
        assert r["step_nfe_backward"] > 0 and r["activation_bytes"] > 0 and r["forward_seconds"] > 0
    after = {p: h for p, h in files_digest(ode).items() if p.parts[0] != "tolsweep"}
    assert after == mnist["before"]
    csv_rows = read_csv(built[1] / "figure3_tolsweep.csv")
    assert len(csv_rows) == 3 and {r["run_dir"] for r in csv_rows} == {str(ode.resolve())}
    with one_thread():
        tolsweep.main([str(ode), "--tols", "0.1", "--reference", "1e-3", "--batch", "2", "--repeats", "1"])
    assert (ode / "tolsweep_2" / "tolsweep.json").is_file() and (ode / "tolsweep" / "tolsweep.json").is_file()


@pytest.mark.parametrize("which, message", [
    ("mlp", "tolsweep needs a model with one ODE block"),
    ("nothing", "has no checkpoint.pt"),
])
def test_tolsweep_bad_input_is_one_line(mnist, tmp_path, which, message):
    target = mnist["root"] / "table1" / "0" if which == "mlp" else tmp_path
    r = subprocess.run([sys.executable, "-m", "node_cli.report", "tolsweep", str(target)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_report_cli_on_folders_without_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "node_cli.report", str(tmp_path / "empty"), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "no runs found" in r.stderr and "Traceback" not in r.stderr
    assert "No MNIST runs found" in (out / "report.md").read_text()
    r = subprocess.run([sys.executable, "-m", "node_cli.report", str(tmp_path / "empty"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "is not empty" in r.stderr


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Tiny spirals and density-matching runs (each family's own task and figures)."""
    root = tmp_path_factory.mktemp("families")
    common = ["trainer=quick", "trainer.max_steps=2", "trainer.eval_every=null", "trainer.progress=false"]
    r = cli("-m", "experiment=spiral_latent_ode,spiral_rnn", "dataset=spirals", "dataset.n_spirals=20",
                 "dataset.n_obs=30", *common, f"hydra.sweep.dir={root / 'spirals'}")
    assert r.returncode == 0, r.stderr
    r = cli("-m", "experiment=density_cnf", "dataset.target=u1,u2", "dataset.test_size=100",
                 "trainer.batch_size=32", "model.width=2", *common, f"hydra.sweep.dir={root / 'density'}")
    assert r.returncode == 0, r.stderr
    out = root / "rep"
    return report.build([str(root)], out), out


def test_spirals_and_flows_tables_trace_back(families):
    rep, out = families
    t2 = {(row["model_name"], row["n_obs"]): row for row in read_csv(out / "table2.csv")}
    for model in ("latent_ode", "rnn"):
        row = t2[(model, "30")]
        assert float(row["paper_test_rmse"]) == report.PAPER_TABLE2[model][30]
        run = report.load_run(Path(row["run_dirs"]))
        assert run.model == model and float(row["test_rmse"]) == pytest.approx(run.summary["test_rmse"])
    assert t2[("latent_ode", "50")]["n_runs"] == "0"                     # paper cells without a run stay visible
    f4 = read_csv(out / "figure4.csv")
    assert {(r["target"], r["capacity"]) for r in f4} == {("u1", "2"), ("u2", "2")}
    for row in f4:
        run = report.load_run(Path(row["run_dirs"]))
        assert run.c("dataset.target") == row["target"] and float(row["test_kl"]) == pytest.approx(run.s("test_kl"))
    names = set(rep.files)
    assert {"figure4_loss.png", "figure4_grid.png"} <= names
    assert any(n.startswith("fig8_latent_ode") for n in names) and any(n.startswith("fig9_") for n in names)
    for name in names:
        assert (out / name).stat().st_size > 100


def test_runs_at_another_lr_are_not_averaged_into_the_default_cell(families, tmp_path):
    """An lr sweep is a setting, not seeds: node-report keeps only the experiment's own optimizer settings."""
    import shutil
    from omegaconf import OmegaConf
    rep, out = families
    src = next(Path(row["run_dirs"]) for row in read_csv(out / "figure4.csv") if row["target"] == "u1")
    assert report.differences(report.load_run(src)) == ["model.width=2"]     # the tiny fixture's width
    copy = tmp_path / "other_lr"
    shutil.copytree(src, copy)
    cfg = OmegaConf.load(copy / ".hydra" / "config.yaml")
    cfg.trainer.lr = cfg.trainer.lr * 3
    OmegaConf.save(cfg, copy / ".hydra" / "config.yaml")
    assert report.differences(report.load_run(copy)) == ["model.width=2", f"trainer.lr={cfg.trainer.lr}"]
