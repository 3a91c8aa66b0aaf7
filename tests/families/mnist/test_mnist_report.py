"""The MNIST sections of node-report (Table 1, Figure 3, memory) from tiny real runs made here: every table row
traces back to its runs, figures are real, other settings stay out of Table 1, and `node-report tolsweep` never
touches a run's files."""
import contextlib
import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from node_cli.core.page import differences
from node_cli.core.runs import load_run
from node_cli.families.mnist import tolsweep
from node_cli.families.mnist.report import PAPER_TABLE1
from node_cli.report.build import build, experiment_of

TINY = ["trainer=quick", "trainer.max_steps=2", "trainer.eval_every=null", "trainer.batch_size=8",
        "trainer.progress=false", "dataset.download=false"]


@contextlib.contextmanager
def one_thread():
    """One torch thread for the in-process tolerance sweeps (the CPU is shared)."""
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
def mnist(tmp_path_factory, make_fake_mnist, node_run):
    """Table 1's four runs (one sweep), a copy of the ODE-Net run at another tolerance, a copy of the MLP run that
    never finished, and a tolerance sweep of the ODE-Net. Fewer fake digits than `fake_mnist`: the final
    evaluation of an ODE-Net dominates a tiny run."""
    data = make_fake_mnist(64, 16, 24, seed=1)
    root = tmp_path_factory.mktemp("mnist_report")
    r = node_run("-m", "experiment=mnist_mlp,mnist_resnet,mnist_rknet,mnist_odenet", *TINY, f"dataset.root={data}",
                 f"hydra.sweep.dir={root / 'table1'}")
    assert r.returncode == 0, r.stderr
    ode = root / "table1" / "3"
    variant = root / "variants" / "odenet_loose"
    shutil.copytree(ode, variant)
    cfg = OmegaConf.load(variant / ".hydra" / "config.yaml")
    cfg.solver.rtol = 0.1
    OmegaConf.save(cfg, variant / ".hydra" / "config.yaml")
    half = root / "broken" / "half_written"                                   # an MLP run that did not end
    shutil.copytree(root / "table1" / "0", half)
    (half / "summary.json").unlink()
    with open(half / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "test_err')
    before = files_digest(ode)
    with one_thread():
        tolsweep.main([str(ode), "--tols", "1e-1,1e-2,1e-3", "--reference", "1e-5", "--batch", "8", "--repeats", "1"])
    out = tmp_path_factory.mktemp("report") / "rep"
    rep = build([str(root / "table1"), str(root / "variants"), str(root / "broken")], out)
    return dict(root=root, ode=ode, variant=variant, half=half, before=before, rep=rep, out=out)


def test_table1_rows_trace_back_to_their_runs(mnist):
    out = mnist["out"]
    rows = {row["model_name"]: row for row in read_csv(out / "table1.csv")}
    assert set(rows) == {"mlp", "resnet", "rknet", "odenet"}
    paper = {m: err for _, m, err, *_ in PAPER_TABLE1}
    md = (out / "report.md").read_text()
    for model, row in rows.items():
        assert float(row["paper_test_error"]) == paper[model]
        dirs = row["run_dirs"].split(";")
        assert len(dirs) == int(row["n_runs"]) == 1                # the ODE-Net at another tolerance is not in it
        run = load_run(Path(dirs[0]))
        assert run.cfg["model"]["name"] == model and run.ok and not differences(run, experiment_of(run))
        assert Path(dirs[0]).parent == mnist["root"] / "table1"
        s = run.summary
        assert float(row["test_error"]) == pytest.approx(s["test_error"])
        assert float(row["params"]) == s["params"]
        assert float(row["activation_bytes"]) == s["activation_bytes"]
        assert float(row["nfe_forward"]) == pytest.approx(s["nfe_forward"])
        assert float(row["test_examples"]) == s["test_examples"] == 24          # the whole (small) test set
        rid = row["run_ids"]
        assert re.search(rf"\| {rid} \| ok \| mnist/{model} \|", md)         # the run's line under 'Runs'
        assert any(line.startswith("| ") and f"| {rid}" in line and f"{100 * s['test_error']:.2f}%" in line
                   for line in md.splitlines())                              # the table line names it
    assert float(rows["odenet"]["nfe_backward"]) > 0 and float(rows["rknet"]["nfe_backward"]) == 0
    variant = load_run(mnist["variant"])
    assert differences(variant, experiment_of(variant)) == ["solver.rtol=0.1"]


def test_unfinished_run_is_named_in_its_table_1_cell(mnist):
    md = (mnist["out"] / "report.md").read_text()
    runs = {row["run_dir"]: row for row in read_csv(mnist["out"] / "runs.csv")}
    half = runs[str(mnist["half"].resolve())]
    assert half["status"] == "unfinished" and "no summary.json" in half["problems"]
    assert "unreadable line" in half["problems"]
    mlp_line = next(line for line in md.splitlines() if line.startswith("| 1-layer MLP |"))
    assert f"{half['run_id']} (unfinished)" in mlp_line                  # named in the MLP row, not dropped


def test_every_figure_is_written_and_linked(mnist, assert_png):
    rep, out = mnist["rep"], mnist["out"]
    assert {"figure3.png", "memory.png", "table1.csv", "memory.csv", "runs.csv", "figure3_tolsweep.csv"} <= \
        set(rep.files)
    for name in rep.files:
        assert (out / name).stat().st_size > 100, name
        if name.endswith(".png"):
            assert_png(out / name, min_height=400, min_width=1000)
    md = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"figure3.png", "memory.png"} <= set(links)
    for link in links:
        assert (out / link).is_file(), link
    assert "## Table 1" in md and "## Figure 3" in md and "## Memory" in md
    mem = read_csv(out / "memory.csv")
    series = {row["series"].split(":")[0] for row in mem}
    assert {"ODE-Net (adjoint)", "RK-Net (backprop through the solver)", "ResNet"} <= series
    for row in mem:
        assert json.loads((Path(row["run_dir"]) / "summary.json").read_text())["activation_bytes"] == \
            pytest.approx(float(row["activation_mib"]) * 2 ** 20)


def test_tolsweep_writes_its_own_folder_and_never_the_runs_files(mnist):
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
    csv_rows = read_csv(mnist["out"] / "figure3_tolsweep.csv")
    assert len(csv_rows) == 3 and {r["run_dir"] for r in csv_rows} == {str(ode.resolve())}
    with one_thread():
        tolsweep.main([str(ode), "--tols", "0.1", "--reference", "1e-3", "--batch", "2", "--repeats", "1"])
    assert (ode / "tolsweep_2" / "tolsweep.json").is_file() and (ode / "tolsweep" / "tolsweep.json").is_file()


def test_tolsweep_backward_study_measures_each_adjoint_variant_against_an_independent_gradient(mnist):
    ode = mnist["ode"]
    result = json.loads((ode / "tolsweep" / "tolsweep.json").read_text())
    back = result["backward"]
    assert back["reference_tol"] == 1e-5 and back["loose"] == 10
    rows = {(r["variant"], r["tol"]): r for r in back["rows"]}
    assert set(rows) == {(v, t) for v in ("default", "seminorm", "adjoint tol x10") for t in (0.1, 0.01, 0.001)}
    forward = {r["tol"]: r for r in result["rows"]}
    for (variant, tol), r in rows.items():
        assert r["step_nfe_forward"] == forward[tol]["nfe_forward"]      # same batch, same forward solve
        assert r["ratio"] == pytest.approx(r["step_nfe_backward"] / r["step_nfe_forward"])
        assert r["adjoint_tol"] == pytest.approx(tol * (10 if variant.startswith("adjoint tol") else 1))
    # The reference, computed here another way: backprop through a float64 solve at 1e-7 on the same 8 images.
    task, block, _, _ = tolsweep.load(ode, "cpu")
    model = task.model.double()
    x, y = task.images(task.test_x[:8]).double(), task.test_y[:8]
    with block.tolerance(1e-7):
        g_ref, _, _, _ = tolsweep.gradient(model, block, x, y)
    model.float()
    with block.tolerance(1e-3), block.backward_solve("default", 1e-3, 1e-3):
        g, _, _, _ = tolsweep.gradient(model, block, x.float(), y)
    independent = ((g - g_ref.float()).norm() / g_ref.norm()).item()
    assert rows[("default", 0.001)]["grad_error"] == pytest.approx(independent, rel=0.2, abs=1e-5)
    assert rows[("default", 0.001)]["grad_error"] < rows[("default", 0.1)]["grad_error"]
    assert len(read_csv(ode / "tolsweep" / "backward.csv")) == 9
    assert len(read_csv(mnist["out"] / "figure3_backward.csv")) == 9
    text = " ".join((mnist["out"] / "report.md").read_text().split())
    assert "torchdiffeq issue #97" in text
    for variant in ("default", "seminorm", "adjoint tol x10"):      # the sentence's averages are the rows' averages
        mean = sum(r["ratio"] for (v, _), r in rows.items() if v == variant) / 3
        assert f"{mean:.2f} ({variant})" in text


@pytest.mark.parametrize("which, message", [
    ("mlp", "tolsweep needs a model with one ODE block"),
    ("nothing", "no checkpoint.pt in"),
])
def test_tolsweep_bad_input_is_one_line(mnist, tmp_path, which, message):
    target = mnist["root"] / "table1" / "0" if which == "mlp" else tmp_path
    r = subprocess.run([sys.executable, "-m", "node_cli.report.cli", "tolsweep", str(target)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_epoch_matched_third_party_error_is_the_last_logged_epoch_not_beyond_ours():
    from node_cli.core.runs import Run
    from node_cli.families.mnist.report import epoch_matched

    def run(epochs, limit=None):
        return Run(Path("."), cfg={"dataset": {"limit": limit}}, summary={"epochs": epochs})

    assert epoch_matched("odenet", [run(3)]) == (2, 0.0159)          # logged at 1, 2, 5: 2 is the last not beyond 3
    assert epoch_matched("resnet", [run(5), run(12)]) == (5, 0.0101)  # several runs: the fewest epochs among them
    assert epoch_matched("rknet", [run(40)]) == (30, 0.0065)
    assert epoch_matched("odenet", [run(0)]) is None                  # under one epoch: nothing logged to match
    assert epoch_matched("odenet", [run(3, limit=1000)]) is None      # a subset of the training set: not comparable
    assert epoch_matched("mlp", [run(3)]) is None and epoch_matched("odenet", []) is None


def test_table1_comparisons_with_one_seed_say_there_is_no_interval(mnist):
    rows = read_csv(mnist["out"] / "table1_comparisons.csv")
    assert [(r["a"], r["b"]) for r in rows] == [("ODE-Net", "ResNet"), ("RK-Net", "ResNet"), ("ODE-Net", "1-layer MLP"),
                                               ("ResNet", "1-layer MLP")]
    table = {load_run(Path(d)).model: load_run(Path(d)).number("test_error")
             for d in (r["run_dirs"] for r in read_csv(mnist["out"] / "table1.csv"))}
    for r in rows:
        assert r["n"] == "1" and r["verdict"] == "not established: no interval from 1 seed (needs 2 or more)"
    assert float(rows[0]["difference"]) == pytest.approx(100 * (table["odenet"] - table["resnet"]))


def test_table1_comparisons_pair_by_seed_within_the_margin(tmp_path):
    """Three seeds: the ODE-Net 0.1 points above the ResNet on every seed (established within ±0.3 points); the
    RK-Net 0.1 below, 0.5 above, 0.1 above (not established)."""
    from node_cli.core.page import Page
    from node_cli.core.runs import Run
    from node_cli.families.mnist.report import comparisons

    def runs(model, errors):
        return [Run(Path(f"{model}{s}"), cfg={"seed": s, "model": {"name": model}}, summary={"test_error": e},
                    status="ok") for s, e in enumerate(errors)]

    resnet = runs("resnet", (0.007, 0.009, 0.008))
    cells = {"resnet": ("ResNet", resnet), "odenet": ("ODE-Net", runs("odenet", (0.008, 0.010, 0.009))),
             "rknet": ("RK-Net", runs("rknet", (0.006, 0.014, 0.009))), "mlp": ("1-layer MLP", [])}
    page = Page(tmp_path, [tmp_path], [], [], lambda r: None, lambda r: True)
    comparisons(page, cells)
    rows = {(r["a"], r["b"]): r for r in read_csv(tmp_path / "table1_comparisons.csv")}
    assert set(rows) == {("ODE-Net", "ResNet"), ("RK-Net", "ResNet")}        # no MLP runs: no MLP rows
    ode = rows[("ODE-Net", "ResNet")]
    assert float(ode["difference"]) == pytest.approx(0.1) and float(ode["lo"]) == pytest.approx(0.1)
    assert ode["verdict"] == "established: within ±0.3 points (paired, n = 3)"
    rk = rows[("RK-Net", "ResNet")]          # differences -0.1, 0.5, 0.1 points: mean 0.1667, sd 0.3055
    assert float(rk["hi"]) == pytest.approx(0.5 / 3 + 4.303 * 0.30551 / 3 ** 0.5, abs=2e-3)
    assert rk["verdict"].startswith("not established: the interval reaches beyond ±0.3 points")
