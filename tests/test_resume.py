"""Stopping and resuming, per family, in process: a run of 2N steps against a run stopped (or finished) at N and
continued with node-run's resume path. Continuing must be exact on the CPU: identical weights, identical metrics
lines (timings aside), identical summary numbers."""
import json

import pytest
import torch

from node_cli.core import stop
from node_cli.core.checks import ConfigError
from node_cli.core.rundir import CHECKPOINT, CONFIG, METRICS
from node_cli.core.runs import load_checkpoint
from node_cli.core.train import Loop
from node_cli.experiment import configure, execute
from node_cli.resume import prepare

TIMINGS = {"sec_per_step", "wall_time"}
SUMMARY_TIMINGS = TIMINGS | {"examples_per_sec", "started", "finished", "command", "run_dir", "resumed"}
MEMORY = ("activation_bytes", "peak_memory_bytes")   # measured after training: storage sharing varies by a few bytes

FAMILIES = {   # experiment overrides that make a run of a few seconds; N = 6 steps
    "mnist": ["experiment=mnist_odenet", "logger=csv", "dataset.limit=256", "trainer.batch_size=64", "solver.rtol=1e-1",
              "solver.atol=1e-1", "trainer.milestones=[1]", "trainer.eval_every=2", "trainer.eval_limit=50"],
    "spirals": ["experiment=spiral_latent_ode", "dataset.n_spirals=60", "trainer.batch_size=16",
                "trainer.eval_every=4"],
    "flows": ["experiment=cnf_moons", "model.width=4", "trainer.batch_size=64", "dataset.test_size=100",
              "solver.rtol=1e-3", "solver.atol=1e-3", "model.eval_tol=1e-3", "trainer.eval_every=4"],
}


def _cfg(family, fake_mnist, *extra):
    base = ["trainer=quick", "trainer.progress=false", "device=cpu"] + FAMILIES[family] + list(extra)
    if family == "mnist":
        base += [f"dataset.root={fake_mnist}", "dataset.download=false"]
    return configure(base)


def _write_config(cfg, folder):
    from omegaconf import OmegaConf
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / CONFIG)


def _resume(folder, **changes):
    cfg, ckpt, history = prepare(folder, changes)
    return execute(cfg, folder, resume=ckpt, history=history)


def _rows(folder):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in (folder / METRICS).read_text().splitlines()]


def assert_same_run(a, b):
    assert _rows(a) == _rows(b)
    wa, wb = load_checkpoint(a / CHECKPOINT)["model"], load_checkpoint(b / CHECKPOINT)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (a, b))
    assert {k: v for k, v in sa.items() if k not in SUMMARY_TIMINGS | set(MEMORY)} == \
        {k: v for k, v in sb.items() if k not in SUMMARY_TIMINGS | set(MEMORY)}
    for key in MEMORY:
        assert sa[key] == pytest.approx(sb[key], rel=1e-3)


@pytest.mark.parametrize("family", ["mnist", "spirals", "flows"])
def test_finished_run_continued_with_a_larger_budget_equals_the_longer_run(tmp_path, fake_mnist, family):
    full = tmp_path / "full"
    cfg = _cfg(family, fake_mnist, "trainer.max_steps=12")
    _write_config(cfg, full)
    assert execute(cfg, full)["status"] == "ok"
    half = tmp_path / "half"
    cfg = _cfg(family, fake_mnist, "trainer.max_steps=6")
    _write_config(cfg, half)
    execute(cfg, half)
    summary = _resume(half, **{"trainer.max_steps": 12})
    assert summary["status"] == "ok" and summary["steps"] == 12 and summary["resumed"][0]["from_step"] == 6
    assert_same_run(full, half)


def stop_at(monkeypatch, step):
    """Ask the run to stop (as a signal would) once it has trained `step` steps."""
    original = Loop.train_step

    def train_step(self, batch):
        value = original(self, batch)
        if self.step == step:
            stop._active.requested, stop._active.name = True, "SIGTERM"
        return value

    monkeypatch.setattr(Loop, "train_step", train_step)


@pytest.mark.parametrize("family, extra", [("mnist", []), ("spirals", []),
                                           ("flows", ["experiment=density_cnf", "dataset.target=u2"])])
def test_stopped_run_resumed_equals_the_uninterrupted_run(tmp_path, fake_mnist, monkeypatch, family, extra):
    cfg = _cfg(family, fake_mnist, "trainer.max_steps=10", *extra)
    if family == "flows":   # density matching: the cosine schedule, which can only resume to its own budget
        assert cfg.trainer.schedule == "cosine"
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    for folder in (full, stopped):
        _write_config(cfg, folder)
    execute(cfg, full)
    stop_at(monkeypatch, 4)   # a step after which an evaluation is due (and, for MNIST, the epoch ends)
    summary = execute(cfg, stopped)
    assert summary["status"] == "interrupted" and summary["steps"] == 4 and "SIGTERM" in summary["error"]
    assert load_checkpoint(stopped / CHECKPOINT)["step"] == 4           # the step it stopped at
    monkeypatch.undo()
    assert _resume(stopped)["status"] == "ok"
    assert_same_run(full, stopped)
    if family == "mnist":   # the live csv view follows the continued log
        import csv
        with open(stopped / "metrics.csv") as f:
            assert [int(r["step"]) for r in csv.DictReader(f)] == [r["step"] for r in _rows(stopped)]


def test_resume_refuses_what_would_change_the_run(tmp_path, fake_mnist):
    cfg = configure(["experiment=density_nf", "trainer=quick", "trainer.max_steps=4", "model.depth=2",
                     "dataset.test_size=100", "trainer.progress=false", "device=cpu"])
    folder = tmp_path / "run"
    _write_config(cfg, folder)
    execute(cfg, folder)
    with pytest.raises(ConfigError, match="finished its budget"):
        prepare(folder, {})
    with pytest.raises(ConfigError, match="cosine"):
        prepare(folder, {"trainer.max_steps": 8})
    from node_cli.resume import parse
    with pytest.raises(ConfigError, match="cannot be combined with resume"):
        parse([f"resume={folder}", "trainer.lr=0.5"])
    with pytest.raises(ConfigError, match="trainer.max_steps=0 is not allowed"):
        parse([f"resume={folder}", "trainer.max_steps=0"])
    old = load_checkpoint(folder / CHECKPOINT)
    old.pop("format")
    torch.save(old, folder / CHECKPOINT)
    with pytest.raises(ConfigError, match="older node-run"):
        prepare(folder, {"trainer.max_steps": 8})


# ------------------------------------------------------------------------- a run that cannot be continued is one line
def _not_yaml(folder):
    with open(folder / CONFIG, "a") as f:
        f.write("broken: [\n")


def _python_tag(folder):   # a tag that would run a command if a YAML loader built it
    text = (folder / CONFIG).read_text()
    (folder / CONFIG).write_text(f"x: !!python/object/apply:os.system ['touch {folder / 'pwned'}']\n" + text)


def _no_final_pending(folder):
    ckpt = load_checkpoint(folder / CHECKPOINT)
    del ckpt["final"], ckpt["pending"]
    torch.save(ckpt, folder / CHECKPOINT)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    cfg = configure(["experiment=nf_moons", "trainer=quick", "trainer.max_steps=2", "model.depth=2",
                     "dataset.test_size=100", "trainer.progress=false", "device=cpu"])
    folder = tmp_path_factory.mktemp("finished") / "run"
    _write_config(cfg, folder)
    execute(cfg, folder)
    return folder


@pytest.mark.parametrize("damage, message", [
    (_not_yaml, "cannot read"),
    (_python_tag, "could not determine a constructor for the tag"),
    (_no_final_pending, "checkpoint.pt is damaged or was not written by node-run (no final, pending)"),
    (None, "resume= needs a run folder"),   # `node-run resume=`: not the working directory
])
def test_resume_of_a_damaged_run_is_one_line_exit_2(finished_run, tmp_path, capsys, damage, message):
    import shutil
    from node_cli.resume import main

    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    if damage is not None:
        damage(folder)
    with pytest.raises(SystemExit) as exit:
        main([f"resume={folder if damage else ''}", "trainer.max_steps=4"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("node-run: error: ") and message in err, err
    assert err.strip().count("\n") == 0
    assert not (folder / "pwned").exists() and load_checkpoint(folder / CHECKPOINT)["step"] == 2


def test_every_key_a_resume_reads_is_in_the_checkpoint_a_run_writes(finished_run):
    from node_cli.core.runs import STATE_KEYS, check_state

    ckpt = load_checkpoint(finished_run / CHECKPOINT)
    check_state(ckpt, finished_run / CHECKPOINT)
    assert set(STATE_KEYS) <= set(ckpt)
