"""node-run as a user (and a scheduler) drives it: bad keys refused before any folder exists, runs never
overwritten or shared, SIGTERM saving the step, true messages, a requeued job continuing, untrusted files."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from node_cli.core.rundir import CLAIM, claim
from node_cli.core.checks import ConfigError

FLOW = ["experiment=nf_moons", "trainer=quick", "model.depth=2", "dataset.test_size=100", "trainer.progress=false"]


# ------------------------------------------------------------------------------------- 6: every key is checked
@pytest.mark.parametrize("args, message", [
    (["experiment=mnist_nope"], "unknown experiment 'mnist_nope'; accepted: "),
    (["model=transformer"], "unknown model 'transformer'"),
    (["solver=magic"], "unknown solver 'magic'"),
    (["solver.method=rk45"], "unknown solver.method 'rk45'"),
    (["dataset=imagenet"], "unknown dataset 'imagenet'"),
    (["solver.rtol=0"], "solver.rtol=0 is not allowed"),
    (["solver.atol=-1e-4"], "solver.atol=-0.0001 is not allowed"),
    (["-m", "solver.rtol=1e-3,-1e-2"], "solver.rtol=-0.01 is not allowed"),
    (["-m", "experiment=spiral_rnn,spiral_rnn_dt", "dataset.n_obs=30"], "also name the config group"),
    (["seed=abc"], "seed='abc' is not allowed"),
    (["seed=1.5"], "seed=1.5 is not allowed"),
    (["seed=null"], "seed=None is not allowed"),
    (["seed=123456789012345678901234567890"], "is not allowed: it must be an integer in 0..9223372036854775807"),
    (["trainer.momentum=abc"], "trainer.momentum='abc' is not allowed"),
    (["experiment=mnist_resnet", "model.channels=0"], "model.channels=0 is not allowed"),
    (["solver.rtol=inf"], "solver.rtol=inf is not allowed"),
    (["solver.atol=inf"], "solver.atol=inf is not allowed"),
    (["trainer.lr=inf"], "trainer.lr=inf is not allowed"),
    (["trainer.progress=maybe"], "trainer.progress='maybe' is not allowed: it must be true or false"),
    (["solver.fast_rk=maybe"], "solver.fast_rk='maybe' is not allowed: it must be true or false"),
    (["solver.first_step_grad=1"], "solver.first_step_grad=1 is not allowed: it must be true or false"),
    (["solver.compile=yes"], "solver.compile='yes' is not allowed: it must be true or false"),
    (["experiment=ffjord_8gaussians", "model.fast_trace=yes"], "model.fast_trace='yes' is not allowed"),
    (["threads=0"], "threads=0 is not allowed: it must be an integer >= 1 or auto"),
    (["+solver.rtl=1e-3"], "unknown key 'solver.rtl'"),
    (["solver.rtl=1e-3"], "(did you mean solver.rtol?)"),
    (["-m", "hydra/launcher=joblib", "seed=abc,0,1"], "seed='abc' is not allowed"),
    (["experiment=mnist_odenet", "model.channels=100000"], "the model this config describes cannot be built"),
])
def test_bad_keys_are_one_line_exit_2_and_no_folder(tmp_path, node_run, args, message):
    out = tmp_path / "never"
    r = node_run(*args, f"hydra.run.dir={out}", f"hydra.sweep.dir={out}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def _ro_folder(tmp_path):
    """A folder no one may write into (a read-only tmpfs where root may mount one: root ignores permissions)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                        capture_output=True).returncode != 0:
        pytest.skip("root, and no read-only tmpfs can be mounted here")
    return folder


@pytest.mark.parametrize("where, message", [
    (lambda tmp: Path("/"), "/ is not empty: a run folder must be new or empty"),
    (lambda tmp: _touch(tmp / "notes.txt").parent, "is not empty: a run folder must be new or empty"),
    (lambda tmp: _touch(tmp / "file"), "is a file: a run folder must be new or empty"),
    (lambda tmp: _touch(tmp / "file") / "run", "cannot make the run folder: Not a directory"),
    (lambda tmp: Path("/proc/node-run-test"), "cannot make the run folder: No such file or directory"),
    (lambda tmp: tmp / ("d" * 300), "cannot make the run folder: File name too long"),
    (lambda tmp: _ro_folder(tmp) / "run", "cannot make the run folder: "),
])
def test_a_run_folder_must_be_new_or_empty_and_makeable(tmp_path, capsys, where, message):
    from node_cli.cli import main

    folder = where(tmp_path)
    before = _listing(folder)
    try:
        with pytest.raises(SystemExit) as exit:
            main([*FLOW, "trainer.max_steps=2", f"hydra.run.dir={folder}"])
    finally:
        if folder.parent.name == "ro" and os.geteuid() == 0:
            subprocess.run(["umount", str(folder.parent)])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err and err.startswith("node-run: error: "), err
    assert err.strip().count("\n") == 0
    assert _listing(folder) == before   # nothing written there


def _touch(path):
    path.write_text("x")
    return path


def _listing(folder):
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return None


def test_appended_unknown_key_names_the_nearest_known_one(node_run, tmp_path):
    r = node_run("+solver.rtl=1e-3", f"hydra.run.dir={tmp_path / 'x'}")
    assert "did you mean solver.rtol?" in r.stderr


# -------------------------------------------------------------------------------- 2, 3: runs never overwritten
def test_a_multirun_into_an_existing_sweep_is_refused_before_any_job(tmp_path, node_run):
    sweep = tmp_path / "sweep"
    first = node_run("-m", *FLOW, "trainer.max_steps=2", "model.depth=2,3", f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    again = node_run("-m", *FLOW, "trainer.max_steps=2", "model.depth=2,3", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 2 and "already holds a run" in again.stderr and f"{sweep}/0" in again.stderr
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before


def test_a_folder_claimed_by_another_node_run_is_refused(tmp_path, node_run):
    folder = tmp_path / "run"
    claim(folder)                                         # as a node-run started a moment earlier would
    with pytest.raises(ConfigError, match="already claimed"):
        claim(folder)                                     # O_EXCL: only one claim can succeed
    r = node_run(*FLOW, "trainer.max_steps=2", f"hydra.run.dir={folder}")
    assert r.returncode == 2 and "claimed by another node-run" in r.stderr
    assert [p.name for p in folder.iterdir()] == [CLAIM]  # nothing written into it


# ------------------------------------------------------------------------------------------ 4: SIGTERM, requeue
def _start(args, cwd=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "node_cli.cli", *args], cwd=cwd or tempfile.gettempdir(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _terminate_after_first_evaluation(proc, folder, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = folder / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().strip():
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


SPIRALS = ["experiment=spiral_latent_ode", "trainer=quick", "dataset.n_spirals=60", "trainer.batch_size=16",
           "trainer.max_steps=400", "trainer.eval_every=2", "trainer.progress=false"]


def test_sigterm_saves_the_current_step_and_a_requeued_job_continues_it(tmp_path, node_run):
    folder = tmp_path / "run"
    code, err = _terminate_after_first_evaluation(_start([*SPIRALS, f"hydra.run.dir={folder}"]), folder)
    assert code == 128 + signal.SIGTERM, err
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"], summary
    ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == summary["steps"] >= 2 and ckpt["format"] == 2
    assert f"{folder / 'summary.json'} says so" in err
    # the command line refuses the folder ...
    again = node_run(*SPIRALS, f"hydra.run.dir={folder}")
    assert again.returncode == 2 and "already holds a run" in again.stderr and "resume=" in again.stderr
    # ... while the job itself, started again as submitit requeues it (same config, same folder, no pre-check),
    # continues from the checkpoint to the end of its budget
    requeue = (f"import sys; sys.argv = ['node-run', *{[*SPIRALS, f'hydra.run.dir={folder}']!r}]; "
               "from node_cli.cli import run; run()")
    r = subprocess.run([sys.executable, "-c", requeue], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tempfile.gettempdir())
    assert r.returncode == 0, r.stderr
    assert f"continuing from step {ckpt['step']}" in r.stderr
    done = json.loads((folder / "summary.json").read_text())
    assert done["status"] == "ok" and done["steps"] == 400 and done["resumed"][0]["from_step"] == ckpt["step"]
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 400   # continued, not restarted or duplicated


# ------------------------------------------------------------------------------------------ 5: true messages
def test_a_run_that_fails_before_its_first_evaluation_says_no_checkpoint_yet(tmp_path, node_run, fake_mnist):
    folder = tmp_path / "run"
    r = node_run("experiment=mnist_odenet", "trainer=quick", "trainer.max_steps=4", "solver.max_num_steps=1",
                 "trainer.progress=false", f"dataset.root={fake_mnist}", "dataset.download=false",
                 f"hydra.run.dir={folder}")
    assert r.returncode == 1 and "no checkpoint yet" in r.stderr and "last good checkpoint kept" not in r.stderr
    assert not (folder / "checkpoint.pt").exists()


def test_a_signal_while_the_data_load_writes_the_summary(tmp_path, monkeypatch):
    from node_cli import families
    from node_cli.experiment import configure, execute

    cfg = configure([*FLOW, "trainer.max_steps=2"])

    def interrupted_build(cfg, device):
        raise KeyboardInterrupt   # what the watcher raises for a signal before training starts

    monkeypatch.setattr(families, "build", interrupted_build)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "before the first training step" in summary["error"]


def test_a_full_disk_ends_the_run_with_status_error_and_keeps_the_earlier_files(tmp_path, monkeypatch):
    import errno
    from node_cli.core import rundir
    from node_cli.core.checks import StorageError
    from node_cli.experiment import configure, execute

    cfg = configure([*FLOW, "trainer.max_steps=4", "trainer.eval_every=1", "device=cpu"])
    real, saved = rundir.atomic_write, []

    def full(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))   # as a write to a full disk fails: no file named

    def atomic_write(path, write):   # the disk fills up after the first checkpoint
        real(path, full if path.name == "checkpoint.pt" and saved else write)
        saved.append(path.read_bytes()) if path.name == "checkpoint.pt" else None

    monkeypatch.setattr(rundir, "atomic_write", atomic_write)
    with pytest.raises(StorageError) as err:
        execute(cfg, tmp_path)
    assert str(err.value).startswith(f"no space left on device at {tmp_path / 'checkpoint.pt'}")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "error"
    assert summary["error"] == f"no space left on device at {tmp_path / 'checkpoint.pt'}"
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved[0]              # the step-1 checkpoint, intact
    assert not list(tmp_path.glob(".*.tmp"))
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_full_tmpfs_is_one_line_exit_1(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("no tmpfs can be mounted here (needs root)")
    try:
        (disk / "filler").write_bytes(b"\0" * (1024 - 72) * 1024)   # 72 KiB left: one checkpoint (28 KiB) fits, not two
        folder = disk / "run"
        proc = _start([*FLOW, "trainer.max_steps=50", "trainer.eval_every=5", f"hydra.run.dir={folder}"])
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1 and "Traceback" not in err, err
        errors = [line for line in err.splitlines() if line.startswith("node-run: error:")]
        assert len(errors) == 1 and errors[0].startswith(f"node-run: error: no space left on device at {folder}")
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "error" and summary["error"].startswith("no space left on device at")
        assert torch.load(folder / "checkpoint.pt", weights_only=True)["step"] >= 5
    finally:
        subprocess.run(["umount", str(disk)])


def test_a_run_folder_deleted_mid_run_is_one_line_exit_1(tmp_path):
    import shutil

    folder = tmp_path / "run"
    proc = _start([*SPIRALS, f"hydra.run.dir={folder}"])
    deadline = time.time() + 120
    while not (folder / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    shutil.rmtree(folder)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("node-run: error:")]
    assert len(errors) == 1 and f"{folder} no longer exists: was it deleted while the run was running?" in errors[0]
    assert "no summary.json could be written" in errors[0]


# ----------------------------------------------------------------------- 1: untrusted checkpoints never run code
class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_tolsweep_never_executes_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(str(marker)), "config": {}}, run / "checkpoint.pt")
    r = subprocess.run([sys.executable, "-c", "from node_cli.report.cli import main; main()", "tolsweep", str(run)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and not marker.exists()
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "cannot read" in r.stderr and "as a node-run checkpoint" in r.stderr


# --------------------------------------------------------------------------------------- provenance and logs
def test_summary_and_log_say_what_ran_where(tmp_path, node_run):
    folder = tmp_path / "run"
    r = node_run(*FLOW, "trainer.max_steps=2", "trainer.eval_every=1", "deterministic=true",
                 f"hydra.run.dir={folder}")
    assert r.returncode == 0, r.stderr
    s = json.loads((folder / "summary.json").read_text())
    assert s["versions"]["torch"] == torch.__version__ and s["versions"]["torchdiffeq"].startswith("0.2")
    assert s["host"] and s["threads"] == 1 and "nf_moons" in s["command"] and s["started"] <= s["finished"]
    assert s["evaluation"] == "final: the whole test set"
    log = (folder / "node-run.log").read_text()
    assert "name: nf_moons" in log and "evaluation at step 1" in log and "evaluation at step 2 (final)" in log
    assert "status ok after 2 steps" in log and "moons data: fresh samples every step from seed=0" in log
