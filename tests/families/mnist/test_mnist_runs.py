"""node-run end to end on a tiny fake MNIST: the files every run writes, bad input, solver failure."""
import json
import math

import pytest
import torch

from conftest import node_run
from node_cli.run import RunDir, read_metrics
from node_cli.train import fit

TINY = ["trainer=quick", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.batch_size=32",
        "trainer.progress=false", "dataset.download=false"]


def run_ok(tmp_path, fake_mnist, *args):
    out = tmp_path / "run"
    r = node_run(*args, *TINY, f"dataset.root={fake_mnist}", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr
    return out, json.loads((out / "summary.json").read_text()), r


@pytest.mark.parametrize("experiment, params", [
    ("mnist_odenet", 208_266), ("mnist_rknet", 208_266), ("mnist_resnet", 576_778), ("mnist_mlp", 238_510)])
def test_each_mnist_experiment_writes_its_files(tmp_path, fake_mnist, experiment, params):
    out, s, r = run_ok(tmp_path, fake_mnist, f"experiment={experiment}")
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "checkpoint.pt").is_file()
    assert s["status"] == "ok" and s["experiment"] == experiment and s["params"] == params
    assert s["steps"] == 4 and 0 <= s["test_error"] <= 1 and s["test_examples"] == 200
    assert s["activation_bytes"] > 0 and s["peak_memory_bytes"] > 0 and s["sec_per_step"] > 0
    rows = read_metrics(out)
    assert [row["step"] for row in rows] == [2, 4] and rows[-1]["final"] is True
    assert {"train_loss", "test_error", "nfe_forward", "nfe_backward", "sec_per_step"} <= set(rows[0])
    if experiment == "mnist_odenet":
        assert s["nfe_forward"] >= 8 and s["nfe_backward"] >= 8          # adjoint: both directions counted
    elif experiment == "mnist_rknet":
        assert s["nfe_forward"] >= 8 and s["nfe_backward"] == 0 and "no adjoint" in s["nfe_backward_note"]
    else:
        assert s["nfe_forward"] == s["nfe_backward"] == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 4 and ckpt["metrics"]["test_error"] == s["test_error"]
    assert "test accuracy" in r.stdout and str(out) in r.stdout


def test_odenet_learns_the_fake_digits(tmp_path, fake_mnist):
    out = tmp_path / "run"
    r = node_run("experiment=mnist_mlp", "trainer=quick", "trainer.max_steps=60", "trainer.eval_every=30",
                 "trainer.batch_size=32", "trainer.progress=false", f"dataset.root={fake_mnist}",
                 "dataset.download=false", "dataset.augment=false", "trainer.lr=0.05", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr
    rows = read_metrics(out)
    assert rows[-1]["test_error"] < 0.2 < rows[0]["train_loss"]


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
])
def test_bad_input_is_one_line_and_no_run_folder(tmp_path, args, message):
    out = tmp_path / "never"
    r = node_run(*args, f"hydra.run.dir={out}", f"hydra.sweep.dir={out}")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_missing_data_set_without_download_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    r = node_run(*TINY, f"dataset.root={tmp_path / 'empty'}", f"hydra.run.dir={out}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "MNIST not found" in r.stderr and "node-data mnist" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "error" and not (out / "checkpoint.pt").exists()


def test_existing_run_is_never_overwritten(tmp_path, fake_mnist):
    out, s, _ = run_ok(tmp_path, fake_mnist, "experiment=mnist_mlp")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = node_run("experiment=mnist_mlp", *TINY, f"dataset.root={fake_mnist}", f"hydra.run.dir={out}")
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_solver_failure_is_recorded_not_a_traceback(tmp_path, fake_mnist):
    out = tmp_path / "run"
    r = node_run("experiment=mnist_odenet", *TINY, "solver.max_num_steps=1", f"dataset.root={fake_mnist}",
                 f"hydra.run.dir={out}")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "run failed" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "failed" and "max_num_steps" in s["error"]


class FlakyTask:
    """A task whose loss turns NaN at step 4: the loop must stop, keep step 2's checkpoint and say why."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1)
        self.calls = 0

    def steps_per_epoch(self):
        return 10

    def train_batches(self, epoch):
        for _ in range(10):
            yield torch.randn(8, 3)

    def loss(self, x):
        self.calls += 1
        out = self.model(x).pow(2).mean()
        return out * float("nan") if self.calls == 4 else out

    def evaluate(self, limit):
        return {"test_loss": self.model.weight.detach().abs().sum().item()}

    def memory_batch(self):
        return torch.randn(8, 3)

    def finish(self, run):
        return {}


def _trainer_cfg(name="flaky", **over):
    from omegaconf import OmegaConf
    t = dict(epochs=1, max_steps=None, batch_size=8, optimizer="sgd", lr=0.1, lr_batch_denom=None, momentum=0.0,
             weight_decay=0.0, milestones=[], gamma=0.1, eval_every=2, eval_limit=None, progress=False)
    return OmegaConf.create(dict(name=name, trainer={**t, **over}))


class SteadyTask(FlakyTask):
    def loss(self, x):
        return self.model(x).pow(2).mean()


@pytest.mark.parametrize("over, expected", [
    # cosine: stepped after every optimizer step, lr(k) = eta_min + (lr - eta_min)(1 + cos(pi k / total)) / 2
    (dict(schedule="cosine", min_lr_ratio=0.1, epochs=2),
     [0.01 + 0.09 * (1 + math.cos(math.pi * k / 20)) / 2 for k in range(2, 21, 2)]),
    (dict(schedule="cosine", max_steps=5, eval_every=1), [0.05 * (1 + math.cos(math.pi * k / 5)) for k in range(1, 6)]),
    # multistep: stepped once per epoch (10 steps), lr x gamma from epoch 1 on
    (dict(schedule="multistep", milestones=[1], epochs=2, eval_every=5), [0.1, 0.1, 0.01, 0.01]),
])
def test_lr_schedules_follow_the_optimizer_steps(tmp_path, over, expected):
    summary = fit(_trainer_cfg("steady", **over), SteadyTask(), RunDir(tmp_path), torch.device("cpu"))
    assert summary["status"] == "ok"
    lrs = [row["lr"] for row in read_metrics(tmp_path)]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_failure_mid_run_keeps_the_last_good_checkpoint(tmp_path):
    cfg = _trainer_cfg()
    run = RunDir(tmp_path)
    summary = fit(cfg, FlakyTask(), run, torch.device("cpu"))
    assert summary["status"] == "failed" and "non-finite training loss at step 4" in summary["error"]
    assert summary["steps"] == 3
    assert [row["step"] for row in read_metrics(tmp_path)] == [2]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert summary["test_loss"] == ckpt["metrics"]["test_loss"]
