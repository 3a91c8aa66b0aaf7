"""`node-bench reference`: each family's plain torchdiffeq loop trains the same model as node-run (same field,
weights and batches: the same loss on the first step), and the command writes its table."""
import csv

import pytest
import torch

from node_cli.bench import reference
from node_cli.bench.cli import main as node_bench
from node_cli.core.train import make_optimizer
from node_cli.experiment import configure

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"dynamics_cubic": [], "spiral_latent_ode": ["dataset.n_spirals=40"], "cnf_circles": ["trainer.batch_size=32"],
         "ffjord_8gaussians": ["trainer.batch_size=32"]}


def small(overrides_for):
    """configure() with a smaller batch or data set for the row (the loops read everything else from the config)."""
    return lambda overrides: configure(overrides + overrides_for)


@pytest.mark.parametrize("row", sorted(SMALL))
def test_reference_loop_starts_from_node_runs_model_and_batch(row):
    family = next(f for f, rows in reference.loops().items() if row in rows)
    loop = reference.loops()[family][row](small(SMALL[row]), torch.device("cpu"), 0, 2)
    node = reference.node_step(loop.task, make_optimizer(loop.cfg.trainer, loop.task.model.parameters()))
    torch.manual_seed(5)
    ref_loss, ref_f, ref_b = loop.step(loop.batches[0])
    torch.manual_seed(5)
    node_loss, node_f, node_b = node(loop.batches[0])
    assert node_loss == pytest.approx(ref_loss, rel=1e-4, abs=1e-5)      # same model, weights, batch and noise
    assert node_f > 0 and ref_f > 0
    if not loop.cfg.solver.adjoint and "adjoint" not in loop.settings:
        assert (node_f, node_b) == (ref_f, ref_b)                         # the same solve, step for step


def test_node_bench_reference_writes_its_table(tmp_path):
    out = tmp_path / "bench"
    assert node_bench(["reference", "--families", "dynamics", "--reps", "2", "--warmup-steps", "0",
                       "--split-reps", "1", "--field-reps", "2", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "reference.csv")))
    assert [r["family"] for r in rows] == ["dynamics_cubic"]
    r = rows[0]
    for key in ("node_sec_per_step", "ref_sec_per_step", "node_nfe", "ref_nfe", "per_step_ratio", "per_nfe_ratio",
                "field_share", "overhead_share", "threads"):
        assert r[key] != "", key
    assert float(r["node_nfe"]) == float(r["ref_nfe"]) > 0
    assert 0 < float(r["field_share"]) < 1 and float(r["overhead_share"]) < 1
    md = (out / "reference.md").read_text()
    assert "per_step_ratio" in md and "torch threads" in md


def test_reference_bad_family_is_one_line(capsys):
    assert node_bench(["reference", "--families", "imagenet", "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err
    assert "unknown --families family 'imagenet'" in err and err.count("\n") == 1
