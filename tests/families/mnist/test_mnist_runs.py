"""node-run end to end on a tiny fake MNIST: the files every run writes, bad input, solver failure."""
import json

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from node_cli.core.rundir import read_metrics

from node_cli.core.runs import load_checkpoint
from node_cli.families.mnist.models import build_mnist_model

EVAL_LIMIT = 50   # smaller than the fake test set (200): a final evaluation that honoured it would show
TINY = ["trainer=quick", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.batch_size=32",
        f"trainer.eval_limit={EVAL_LIMIT}", "trainer.progress=false", "dataset.download=false"]


def run_ok(node_run, tmp_path, fake_mnist, *args):
    out = tmp_path / "run"
    r = node_run(*args, *TINY, f"dataset.root={fake_mnist}", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr
    return out, json.loads((out / "summary.json").read_text()), r


def recompute(out, test_x, test_y):
    """Test error and loss of the checkpoint in `out` on the whole test set, in eval mode."""
    ckpt = load_checkpoint(out / "checkpoint.pt")
    cfg = OmegaConf.create(ckpt["config"])
    model = build_mnist_model(cfg.model, cfg.solver)
    model.load_state_dict(ckpt["model"])
    model.eval()
    with torch.no_grad():
        logits = model(test_x)
    return ckpt, (logits.argmax(1) != test_y).sum().item() / len(test_y), F.cross_entropy(logits, test_y).item()


@pytest.mark.parametrize("experiment, params", [
    ("mnist_odenet", 208_266), ("mnist_rknet", 208_266), ("mnist_resnet", 576_778), ("mnist_mlp", 238_510)])
def test_each_mnist_experiment_writes_its_files(node_run, read_mnist, tmp_path, fake_mnist, experiment, params):
    out, s, r = run_ok(node_run, tmp_path, fake_mnist, f"experiment={experiment}")
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "checkpoint.pt").is_file()
    assert s["status"] == "ok" and s["experiment"] == experiment and s["params"] == params
    assert s["activation_bytes"] > 0 and s["peak_memory_bytes"] > 0 and s["sec_per_step"] > 0
    rows = read_metrics(out)
    assert [row["step"] for row in rows] == [2, 4] and rows[-1]["final"] is True
    # the intermediate evaluation honours eval_limit; the final one scores the whole test set
    test_x, test_y = read_mnist(fake_mnist)
    assert len(test_y) == 200 > EVAL_LIMIT
    assert rows[0]["test_examples"] == EVAL_LIMIT and rows[-1]["test_examples"] == s["test_examples"] == 200
    # the reported error is the saved model's on all 200 test images (recomputed from checkpoint.pt alone)
    ckpt, error, loss = recompute(out, test_x, test_y)
    assert s["steps"] == ckpt["step"] == 4 and ckpt["metrics"]["test_error"] == s["test_error"]
    assert s["test_error"] == error and s["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert {"train_loss", "test_error", "nfe_forward", "nfe_backward", "sec_per_step"} <= set(rows[0])
    if experiment == "mnist_odenet":
        assert s["nfe_forward"] >= 8 and s["nfe_backward"] >= 8          # adjoint: both directions counted
    elif experiment == "mnist_rknet":
        assert s["nfe_forward"] >= 8 and s["nfe_backward"] == 0 and "no adjoint" in s["nfe_backward_note"]
    else:
        assert s["nfe_forward"] == s["nfe_backward"] == 0
    assert "test accuracy" in r.stdout and str(out) in r.stdout


def test_odenet_learns_the_fake_digits(node_run, tmp_path, fake_mnist):
    out = tmp_path / "run"
    r = node_run("experiment=mnist_odenet", "trainer=quick", "trainer.max_steps=40", "trainer.eval_every=10",
                 "trainer.batch_size=32", "trainer.lr=0.1", "trainer.lr_batch_denom=null", "solver.rtol=0.1",
                 "solver.atol=0.1", "trainer.progress=false", f"dataset.root={fake_mnist}", "dataset.download=false",
                 "dataset.augment=false", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["model"] == "odenet" and s["nfe_forward"] > 0 and s["nfe_backward"] > 0   # the ODE block trained
    rows = read_metrics(out)
    assert [row["step"] for row in rows] == [10, 20, 30, 40]
    first, last = rows[0]["test_error"], rows[-1]["test_error"]
    assert last < 0.3                      # well below chance (0.9), on all 200 test images
    assert last < first - 0.3              # and far below its first evaluation: it learned


def test_missing_data_set_without_download_is_a_clear_error(node_run, tmp_path):
    out = tmp_path / "run"
    r = node_run(*TINY, f"dataset.root={tmp_path / 'empty'}", f"hydra.run.dir={out}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "MNIST not found" in r.stderr and "node-data mnist" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "error" and not (out / "checkpoint.pt").exists()


def test_existing_run_is_never_overwritten(node_run, tmp_path, fake_mnist):
    out, s, _ = run_ok(node_run, tmp_path, fake_mnist, "experiment=mnist_mlp")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = node_run("experiment=mnist_mlp", *TINY, f"dataset.root={fake_mnist}", f"hydra.run.dir={out}")
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_solver_failure_is_recorded_not_a_traceback(node_run, tmp_path, fake_mnist):
    out = tmp_path / "run"
    r = node_run("experiment=mnist_odenet", *TINY, "solver.max_num_steps=1", f"dataset.root={fake_mnist}",
                 f"hydra.run.dir={out}")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "run failed" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "failed" and "max_num_steps" in s["error"]
