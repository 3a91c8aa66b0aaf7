"""How a run ends when its final evaluation is not finite: failed, with the final numbers, never the last limited
evaluation passed off as the final one."""
import math

import torch
from omegaconf import OmegaConf

from node_cli.core.rundir import RunDir, read_metrics
from node_cli.core.train import fit


class Task:
    """Intermediate evaluations (limited) are finite; the final one (limit None) is NaN."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1)
        self.batch_size = 8

    def steps_per_epoch(self):
        return 4

    def train_batches(self, epoch):
        g = torch.Generator().manual_seed(epoch)
        for _ in range(4):
            yield torch.randn(8, 3, generator=g)

    def loss(self, x):
        return self.model(x).pow(2).mean()

    def evaluate(self, limit):
        return {"test_loss": 0.5 if limit is not None else float("nan"), "test_examples": limit or 100}

    def memory_batch(self):
        return torch.randn(8, 3)

    def finish(self, run):
        return {}


def test_a_final_evaluation_that_is_not_finite_fails_the_run_and_reports_it(tmp_path):
    t = dict(epochs=1, max_steps=4, batch_size=8, optimizer="sgd", lr=0.1, lr_batch_denom=None, momentum=0.0,
             weight_decay=0.0, milestones=[], gamma=0.1, eval_every=2, eval_limit=10, progress=False)
    summary = fit(OmegaConf.create(dict(name="nan", trainer=t)), Task(), RunDir(tmp_path), torch.device("cpu"))
    assert summary["status"] == "failed" and "final evaluation is not finite: test_loss=nan" in summary["error"]
    assert math.isnan(summary["test_loss"]) and summary["test_examples"] == 100   # the final numbers, not step 2's
    assert [r["final"] for r in read_metrics(tmp_path)] == [False, True]
