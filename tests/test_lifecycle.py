"""A run's life when it is killed, stopped or shared, on a tiny dynamics_spiral run of 20 steps with an
evaluation every 5. Each stopped, killed or restarted run is compared with the same run never stopped: the same
metrics lines, weights and summary (timings aside), every frame of training.gif.

The moments are exact: a signal is sent by the run to itself from inside the code it must interrupt (os.kill from
a patched function), or the test waits for a file the paused run writes. Real SIGKILLs run in a subprocess
(`python -c` with the patch, then node-run's own main()); SIGTERM is sent in this process, whose handlers are
node-run's while it runs. A "kill" in this process is an exception that nothing in node-run catches: no summary,
no checkpoint written on the way out, as after a SIGKILL. The memory measurement, which none of this concerns, is
left out of the runs made in this process (test_resume compares it)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from PIL import Image

from node_cli import cli, resume
from node_cli.core.checks import ConfigError
from node_cli.core.rundir import CHECKPOINT, METRICS, SUMMARY
from node_cli.core.runs import load_checkpoint
from node_cli.core.solve import ODEBlock, TooManyEvaluations
from node_cli.core.train import Loop
from node_cli.experiment import configure, execute
from node_cli.families.dynamics import plots
from node_cli.families.dynamics.task import DynamicsTask
from test_resume import SUMMARY_TIMINGS, _resume, _rows, _write_config

ARGS = ["experiment=dynamics_spiral", "trainer=quick", "trainer.progress=false", "device=cpu", "threads=1",
        "dataset.n_points=100", "trainer.max_steps=20", "trainer.eval_every=5"]


@pytest.fixture(autouse=True)
def no_memory_measurement():
    with pytest.MonkeyPatch.context() as patch:   # not the test's monkeypatch, which tests undo
        patch.setattr("node_cli.core.train.measure_memory", lambda task, device: {})
        yield


def _run(folder, *extra):
    cfg = configure(ARGS + list(extra))
    _write_config(cfg, folder)
    return execute(cfg, folder)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run never stopped."""
    folder = tmp_path_factory.mktemp("straight") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("node_cli.core.train.measure_memory", lambda task, device: {})
        assert _run(folder)["status"] == "ok"
    return folder


def _summary(folder):
    return json.loads((folder / SUMMARY).read_text())


def _same_as_straight(folder, straight):
    """The same metrics lines, weights and summary as the run never stopped (timings aside)."""
    assert _rows(folder) == _rows(straight)
    a, b = (load_checkpoint(f / CHECKPOINT)["model"] for f in (folder, straight))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = _summary(folder), _summary(straight)
    assert {k: v for k, v in sa.items() if k not in SUMMARY_TIMINGS} == \
        {k: v for k, v in sb.items() if k not in SUMMARY_TIMINGS}
    frames = _summary(folder)["gif_frames"]
    assert frames == len((folder / METRICS).read_text().splitlines()) == 4   # steps 5, 10, 15 and the final 20
    with Image.open(folder / "training.gif") as gif:
        assert gif.n_frames == frames


def _node_run(patch: str, *args):
    """node-run in a subprocess with `patch` (Python) applied first; returns the Popen."""
    code = f"import os, signal, sys, time, pathlib\n{patch}\nfrom node_cli.cli import main\nmain({list(args)!r})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=tempfile.gettempdir(), text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# -------------------------------------------------------- 1, 3: one process per folder; runs killed before a checkpoint
def test_a_running_run_holds_its_folder_and_a_run_killed_before_its_first_checkpoint_starts_again(
        tmp_path, straight, capsys):
    folder, ready = tmp_path / "run", tmp_path / "ready"
    paused = ("from node_cli.families.dynamics.task import DynamicsTask\n"
              "loss, calls = DynamicsTask.loss, []\n"
              "def pause(self, batch):\n"
              "    calls.append(1)\n"
              f"    if len(calls) == 3:\n        pathlib.Path({str(ready)!r}).touch()\n        time.sleep(600)\n"
              "    return loss(self, batch)\n"
              "DynamicsTask.loss = pause")
    proc = _node_run(paused, *ARGS, f"hydra.run.dir={folder}")
    try:
        deadline = time.time() + 120
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate()[1]
        # the run trains its third step, before its first checkpoint: no second process may enter its folder
        with pytest.raises(SystemExit) as exit_code:
            resume.main([f"resume={folder}"])
        assert exit_code.value.code == 2 and "is in use by another node-run" in capsys.readouterr().err
        with pytest.raises(ConfigError, match="is in use by another node-run"):
            cli.precheck([*ARGS, f"hydra.run.dir={folder}"])
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (folder / CHECKPOINT).exists()
    again = tmp_path / "again"
    shutil.copytree(folder, again)

    # resume= starts it again from step 0, with its own config ...
    resume.main([f"resume={folder}"])
    assert "starting it again from step 0" in capsys.readouterr().err
    _same_as_straight(folder, straight)
    assert [r["from_step"] for r in _summary(folder)["resumed"]] == [0]
    # ... and so does a fresh start of the same run (its pre-check accepts the folder; another config is refused)
    with pytest.raises(ConfigError, match="already holds a run"):
        cli.precheck([*ARGS, "seed=1", f"hydra.run.dir={again}"])
    try:
        assert cli.precheck([*ARGS, f"hydra.run.dir={again}"]) == [f"hydra.run.dir={again}"]
    finally:
        cli.HELD.close()
    cfg = configure(ARGS)   # what node-run's task function then does
    assert execute(cfg, again, **cli.requeued(cfg, again))["status"] == "ok"
    _same_as_straight(again, straight)
    assert [r["from_step"] for r in _summary(again)["resumed"]] == [0]


# ------------------------------------------------------------------ 2: killed or stopped after the final evaluation
def test_a_run_killed_while_drawing_its_figures_is_finished_by_resume(tmp_path, straight, capsys):
    folder = tmp_path / "run"
    kill = ("import node_cli.families.dynamics.plots as plots\n"
            "plots.training_gif = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)")
    proc = _node_run(kill, *ARGS, f"hydra.run.dir={folder}")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    assert not (folder / SUMMARY).exists() and load_checkpoint(folder / CHECKPOINT)["final"]
    with pytest.raises(ConfigError, match="already holds a run"):   # a fresh start is refused: resume= finishes it
        cli.precheck([*ARGS, f"hydra.run.dir={folder}"])
    resume.main([f"resume={folder}"])
    assert "making the final evaluation, figures and summary again" in capsys.readouterr().err
    _same_as_straight(folder, straight)
    with pytest.raises(ConfigError, match=r"finished its budget \(20 steps, status ok\)"):
        resume.prepare(folder, {})


# --------------------------------------------------------------------------- 6: a stop during the final evaluation
def test_sigterm_during_the_final_evaluation_stops_it_and_resume_makes_it(tmp_path, straight, monkeypatch):
    folder = tmp_path / "run"
    evaluate = DynamicsTask.evaluate

    def signalled(self, limit):
        if limit is None:   # the final evaluation (the intermediate ones use trainer.eval_limit)
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self, limit)

    monkeypatch.setattr(DynamicsTask, "evaluate", signalled)
    summary = _run(folder)
    assert summary["status"] == "interrupted" and "SIGTERM during the final evaluation" in summary["error"]
    ckpt = load_checkpoint(folder / CHECKPOINT)
    assert ckpt["step"] == 20 and ckpt["final"]                       # training complete, saved
    assert [json.loads(line)["step"] for line in (folder / METRICS).read_text().splitlines()] == [5, 10, 15]
    monkeypatch.undo()
    assert _resume(folder)["status"] == "ok"
    _same_as_straight(folder, straight)


# ---------------------------------------------------------------- 7: a stop inside a solve; a solve that will not end
def test_sigterm_inside_a_solve_drops_that_step_and_saves_the_one_before(tmp_path, straight, monkeypatch):
    folder = tmp_path / "run"
    evaluations = []
    forward = DynamicsTask.loss

    def signalled(self, batch):   # step 8's loss: the signal comes before its solve, which must stop at once
        evaluations.append(1)
        if len(evaluations) == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, batch)

    monkeypatch.setattr(DynamicsTask, "loss", signalled)
    summary = _run(folder)
    assert summary["status"] == "interrupted", summary
    assert "inside a solve of step 8: that step is dropped; checkpoint of step 7 saved" in summary["error"]
    assert load_checkpoint(folder / CHECKPOINT)["step"] == summary["steps"] == 7
    monkeypatch.undo()
    assert _resume(folder)["status"] == "ok"
    _same_as_straight(folder, straight)


@pytest.mark.parametrize("cap, fails", [(4, False), (3, True)])
def test_max_nfe_fails_a_solve_that_needs_more_evaluations(cap, fails):
    """Euler with step 0.25 over [0, 1] evaluates the field exactly 4 times."""
    from omegaconf import OmegaConf

    class Decay(torch.nn.Module):
        def forward(self, t, y):
            return -y

    block = ODEBlock(Decay(), OmegaConf.create(dict(method="euler", rtol=1e-3, atol=1e-3,
                                                                  adjoint=False, adjoint_norm="default",
                                                                  step_size=0.25, max_nfe=cap)))
    if fails:
        with pytest.raises(TooManyEvaluations, match="solver.max_nfe=3"):
            block(torch.ones(1, 2))
    else:
        block(torch.ones(1, 2))
        assert block.nfe_forward == 4


def test_a_solve_that_will_not_end_fails_the_run_and_the_cap_is_recorded(tmp_path, straight):
    assert _summary(straight)["solver"]["max_nfe"] == 100000   # the default, recorded
    summary = _run(tmp_path / "run", "solver.max_nfe=40")      # training solves take ~14; the evaluations more
    assert summary["status"] == "failed" and summary["solver"]["max_nfe"] == 40
    assert "TooManyEvaluations" in summary["error"] and "solver.max_nfe=40" in summary["error"]


# ------------------------------------------ 11 (and 2 with SIGTERM): killed and resumed again and again, then stopped
class Killed(BaseException):
    """What a SIGKILL leaves behind, in this process: nothing in node-run handles it."""


def test_every_resume_is_recorded_and_the_gif_keeps_every_frame(tmp_path, straight, monkeypatch):
    """Killed at step 7 and, resumed, at 13; resumed again and stopped by SIGTERM while drawing the figures (training
    and the final evaluation complete); resumed, it finishes."""
    folder = tmp_path / "run"
    step = Loop.train_step
    kill_at = []

    def train_step(self, batch):
        value = step(self, batch)
        if kill_at and self.step == kill_at[0]:
            kill_at.pop(0)
            raise Killed
        return value

    monkeypatch.setattr(Loop, "train_step", train_step)
    for at, run in ((7, _run), (13, _resume)):   # each process killed in its turn, before it writes a summary
        kill_at[:] = [at]
        with pytest.raises(Killed):
            run(folder)
        assert not (folder / SUMMARY).exists()
    with monkeypatch.context() as patch:
        patch.setattr(plots, "training_gif", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
        summary = _resume(folder)
    assert summary["status"] == "interrupted" and "drawing the figures" in summary["error"]
    assert f"node-run resume={folder}" in summary["error"]
    assert _resume(folder)["status"] == "ok"
    assert [r["from_step"] for r in _summary(folder)["resumed"]] == [5, 10, 20]
    _same_as_straight(folder, straight)
