"""The training loop every family shares (core/train.py), on tasks made here: lr schedules follow the optimizer
steps, the run length is trainer.max_steps else epochs, a failure mid-run keeps the last good checkpoint."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from node_cli.core.rundir import RunDir, read_metrics

from node_cli.core.runs import load_checkpoint
from node_cli.core.train import fit


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
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert summary["test_loss"] == ckpt["metrics"]["test_loss"]


class CountingTask(SteadyTask):
    """Counts the loss evaluations and records the limit of every evaluation."""

    def __init__(self):
        super().__init__()
        self.losses, self.limits = 0, []

    def loss(self, x):
        self.losses += 1
        return super().loss(x)

    def evaluate(self, limit):
        self.limits.append(limit)
        return super().evaluate(limit)


@pytest.mark.parametrize("over, steps, epochs, limits", [
    (dict(max_steps=25, epochs=1), 25, 2, [5, 5, None]),     # max_steps: the run's length, whatever the epochs
    (dict(max_steps=None, epochs=3), 30, 3, [5, 5, None]),   # null: trainer.epochs passes of 10 steps
    (dict(max_steps=4, epochs=5), 4, 0, [None]),             # shorter than one epoch
])
def test_run_length_is_max_steps_else_epochs_and_only_the_final_evaluation_is_unlimited(tmp_path, over, steps,
                                                                                        epochs, limits):
    task = CountingTask()
    summary = fit(_trainer_cfg("count", eval_every=None, eval_limit=5, **over), task, RunDir(tmp_path),
                  torch.device("cpu"))
    assert summary["status"] == "ok" and summary["steps"] == steps and summary["epochs"] == epochs
    assert task.losses == steps + 2           # + the memory measurement's two forward passes
    assert task.limits == limits              # intermediate evaluations per epoch at eval_limit, the final at None
    assert read_metrics(tmp_path)[-1]["step"] == steps


class NanFinalTask(SteadyTask):
    """Intermediate evaluations (limited) are finite; the final one (limit None) is NaN."""

    def evaluate(self, limit):
        return {"test_loss": 0.5 if limit is not None else float("nan"), "test_examples": limit or 100}


def test_a_final_evaluation_that_is_not_finite_fails_the_run_and_reports_it(tmp_path):
    cfg = _trainer_cfg("nan", max_steps=4, eval_limit=10)
    summary = fit(cfg, NanFinalTask(), RunDir(tmp_path), torch.device("cpu"))
    assert summary["status"] == "failed" and "final evaluation is not finite: test_loss=nan" in summary["error"]
    assert math.isnan(summary["test_loss"]) and summary["test_examples"] == 100   # the final numbers, not step 2's
    assert [r["final"] for r in read_metrics(tmp_path)] == [False, True]


def test_a_batch_larger_than_the_training_split_scales_the_lr_by_the_real_batch_and_says_so(tmp_path, caplog):
    task = SteadyTask()
    task.batch_size = 8            # what a task uses when trainer.batch_size exceeds its training split (8 examples)
    cfg = _trainer_cfg("steady", batch_size=10 ** 8, lr_batch_denom=4, max_steps=2, eval_every=1)
    summary = fit(cfg, task, RunDir(tmp_path), torch.device("cpu"))
    assert summary["status"] == "ok" and summary["batch_size"] == 8
    assert [row["lr"] for row in read_metrics(tmp_path)] == pytest.approx([0.1 * 8 / 4] * 2)   # not 0.1 * 1e8 / 4
    assert "trainer.batch_size=100000000 is larger than the training split: each step uses all 8 examples and the " \
           "lr is scaled by 8/4" in caplog.text
