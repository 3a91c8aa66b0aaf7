"""`node-eval RUN_DIR [solver.*=...]`: one tiny run per family, evaluated again from its checkpoint. At the run's
own settings it reproduces the run's final test metrics exactly; a tighter tolerance costs more evaluations; the
run's own files never change; anything but a solver override, and folders without a (trustworthy) run, are one
line and exit 2, with no eval folder."""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from node_cli import evaluate
from node_cli.core.rundir import CHECKPOINT, CONFIG, SUMMARY
from node_cli.experiment import configure, execute

FAMILIES = {   # a few seconds each on one thread; the ODE models train loose so that 1e-6 costs visibly more
    "mnist": ["experiment=mnist_odenet", "dataset.limit=128", "trainer.batch_size=32", "solver.rtol=1e-1",
              "solver.atol=1e-1", "trainer.milestones=[1]", "trainer.eval_every=null", "dataset.download=false"],
    "spirals": ["experiment=spiral_latent_ode", "dataset.n_spirals=60", "trainer.batch_size=16",
                "trainer.eval_every=null"],
    "flows": ["experiment=cnf_moons", "model.width=4", "trainer.batch_size=64", "dataset.test_size=100",
              "solver.rtol=1e-3", "solver.atol=1e-3", "model.eval_tol=1e-3", "trainer.eval_every=null"],
}


def digest(folder):
    """Every file of the run folder outside eval/, byte for byte."""
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] != "eval"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fake_mnist):
    """family -> (run folder, its summary): runs of 2 steps made as node-run makes them (config + execute)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    made = {}
    try:
        for family, overrides in FAMILIES.items():
            extra = [f"dataset.root={fake_mnist}"] if family == "mnist" else []
            cfg = configure(["trainer=quick", "trainer.max_steps=2", "trainer.progress=false", "device=cpu",
                             *overrides, *extra])
            folder = tmp_path_factory.mktemp("eval_runs") / family
            (folder / ".hydra").mkdir(parents=True)
            OmegaConf.save(cfg, folder / CONFIG)
            summary = execute(cfg, folder)
            assert summary["status"] == "ok", summary
            made[family] = (folder, json.loads((folder / SUMMARY).read_text()))
    finally:
        torch.set_num_threads(threads)
    return made


def node_eval(*args):
    """node-eval in this process (one torch thread); returns the summary it wrote."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        before = set(evaluate_dirs(args[0]))
        evaluate.main([str(a) for a in args])
        written = sorted(set(evaluate_dirs(args[0])) - before)
    finally:
        torch.set_num_threads(threads)
    assert len(written) == 1, written
    return json.loads((written[0] / "eval.json").read_text())


def evaluate_dirs(run_dir):
    base = Path(run_dir) / "eval"
    return list(base.iterdir()) if base.is_dir() else []


@pytest.mark.parametrize("family", FAMILIES)
def test_own_settings_reproduce_the_runs_final_test_metrics_exactly(runs, family):
    folder, run = runs[family]
    before = digest(folder)
    got = node_eval(folder)
    metrics = {k: v for k, v in run.items() if k.startswith("test_") and isinstance(v, (int, float))}
    assert metrics and {k: got[k] for k in metrics} == metrics          # the same evaluation, bit for bit
    assert got["eval_nfe_forward"] == run["eval_nfe_forward"]
    assert got["status"] == "ok" and got["split"] == "test" and got["checkpoint_step"] == run["steps"] == 2
    assert got["overrides"] == [] and got["device"] == "cpu" and got["run_dir"] == str(folder.resolve())
    assert got["wall_time"] > 0 and got["torch"] == torch.__version__
    if family == "flows":   # evaluated at model.eval_tol, as the run was
        assert got["tolerance_from"] == "model.eval_tol" and got["solver"]["rtol"] == got["solver"]["atol"] == 1e-3
    else:
        assert got["solver"]["rtol"] == run["solver"]["rtol"] and got["tolerance_from"] == "solver"
    assert digest(folder) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_a_tighter_tolerance_costs_more_evaluations_and_leaves_the_run_alone(runs, family):
    folder, run = runs[family]
    before = digest(folder)
    got = node_eval(folder, "solver.rtol=1e-6", "solver.atol=1e-6")
    assert got["eval_nfe_forward"] > run["eval_nfe_forward"] > 0
    assert got["solver"]["rtol"] == got["solver"]["atol"] == 1e-6 and isinstance(got["solver"]["rtol"], float)
    assert got["overrides"] == ["solver.rtol=1e-6", "solver.atol=1e-6"]
    if family == "flows":   # the override, not model.eval_tol, sets the evaluation's tolerance, and it says so
        assert got["tolerance_from"] == "solver overrides" and "model.eval_tol=0.001" in got["eval_tol_note"]
    assert digest(folder) == before
    assert OmegaConf.load(folder / CONFIG).solver.rtol == run["solver"]["rtol"]


def test_an_rtol_override_alone_on_a_cnf_keeps_atol_at_eval_tol(runs):
    folder, _ = runs["flows"]
    got = node_eval(folder, "solver.rtol=1e-4", "solver.adjoint=false")
    assert got["solver"]["rtol"] == 1e-4 and got["solver"]["atol"] == 1e-3 and got["solver"]["adjoint"] is False
    assert "not overridden stays at eval_tol" in got["eval_tol_note"]


def _copy(runs, tmp_path, family="flows"):
    target = tmp_path / "copy"
    shutil.copytree(runs[family][0], target, ignore=shutil.ignore_patterns("eval"))
    return target


def _refused(capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.startswith("node-eval: error: ") and err.strip().count("\n") == 0 and message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["model.width=8"], "'model.width=8' cannot be given to node-eval: only solver.* settings may change"),
    (["trainer.lr=0.5"], "only solver.* settings may change"),
    (["solver=rk4"], "give solver.method=NAME"),
    (["+solver.foo=1"], "cannot add or delete keys"),
    (["solver.rtl=1e-3"], "(did you mean solver.rtol?)"),
    (["solver.rtol=-1"], "solver.rtol=-1 is not allowed"),
    (["solver.method=rk45"], "unknown solver.method 'rk45'"),
    (["rtol"], "'rtol' is not a key=value override"),
    (["--split", "train"], "--split 'train' is not available; accepted: test"),
    (["--device", "tpu"], "accepted: auto, cpu, cuda"),
])
def test_bad_overrides_are_one_line_exit_2_and_no_eval_folder(runs, tmp_path, capsys, args, message):
    folder = _copy(runs, tmp_path)
    before = digest(folder)
    _refused(capsys, [folder, *args], message)
    assert not (folder / "eval").exists() and digest(folder) == before


def _no_checkpoint(folder):
    (folder / CHECKPOINT).unlink()


def _garbage(folder):
    (folder / CHECKPOINT).write_bytes(b"not a checkpoint")


def _untrusted(folder):   # an object weights_only refuses to unpickle
    torch.save(dict(model={}, config={}, extra=argparse.Namespace(x=1)), folder / CHECKPOINT)


def _other_config(folder):
    cfg = OmegaConf.load(folder / CONFIG)
    cfg.model.width = 8
    OmegaConf.save(cfg, folder / CONFIG)


def _no_config(folder):
    (folder / CONFIG).unlink()


@pytest.mark.parametrize("damage, message", [
    (_no_checkpoint, "no checkpoint.pt in"),
    (_garbage, "as a node-run checkpoint"),
    (_untrusted, "as a node-run checkpoint"),
    (_other_config, "does not match the config in its checkpoint.pt (they differ in model.width)"),
    (_no_config, "is not a node-run run folder (no .hydra/config.yaml"),
])
def test_a_folder_without_a_trustworthy_run_is_one_line_exit_2(runs, tmp_path, capsys, damage, message):
    folder = _copy(runs, tmp_path)
    damage(folder)
    _refused(capsys, [folder], message)
    assert not (folder / "eval").exists()


def test_the_installed_command_refuses_a_missing_checkpoint_and_a_missing_folder(runs, tmp_path):
    folder = _copy(runs, tmp_path)
    _no_checkpoint(folder)
    command = shutil.which("node-eval") or pytest.fail("node-eval is not installed (pip install -e .)")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for target, message in [(folder, "no checkpoint.pt in"), (tmp_path / "nowhere", "no such folder")]:
        r = subprocess.run([command, str(target), "solver.rtol=1e-4"], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("node-eval: error: ") and message in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0 and r.stdout == ""
    assert not (folder / "eval").exists() and not (tmp_path / "nowhere").exists()


def test_ctrl_c_during_the_evaluation_is_one_line_exit_130_and_writes_nothing(runs, monkeypatch, capsys):
    folder, _ = runs["spirals"]
    before, evals, real = digest(folder), set(folder.glob("eval/*/eval.json")), evaluate.load_run

    def interrupted(*args, **kwargs):   # Ctrl-C arrives while the test split is being solved
        loaded = real(*args, **kwargs)
        loaded.task.evaluate = lambda limit: (_ for _ in ()).throw(KeyboardInterrupt)
        return loaded

    monkeypatch.setattr(evaluate, "load_run", interrupted)
    with pytest.raises(SystemExit) as exit:
        evaluate.main([str(folder)])
    err = capsys.readouterr().err
    assert exit.value.code == 130 and err == "node-eval: interrupted; no eval.json written\n"
    assert digest(folder) == before and set(folder.glob("eval/*/eval.json")) == evals
