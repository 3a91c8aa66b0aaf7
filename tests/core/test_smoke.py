"""`trainer=smoke`: every experiment in conf/experiment/ (enumerated here, so experiments added later are covered)
trains its few steps, evaluates once on the way and once at the end on at most `trainer.final_eval_limit` test
examples, says in its summary that the final evaluation was limited, and draws no figures. In-process (one
thread), so the whole set stays within seconds per experiment."""
from pathlib import Path

import pytest

from node_cli.core.rundir import read_metrics
from node_cli.experiment import configure, execute

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
FIGURES = (".png", ".gif")


def test_every_experiment_file_is_enumerated():
    assert len(EXPERIMENTS) >= 28 and "mnist_odenet" in EXPERIMENTS and "ffjord_rings" in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_smoke_run_finishes_ok_in_a_few_steps_with_a_limited_final_evaluation(name, tmp_path, fake_mnist,
                                                                              one_thread):
    overrides = [f"experiment={name}", "trainer=smoke", "trainer.progress=false", "threads=1"]   # see conftest: node_run
    if configure(overrides).dataset.name == "mnist":
        overrides.append(f"dataset.root={fake_mnist}")
    cfg = configure(overrides)
    summary = execute(cfg, tmp_path / "run")
    assert summary["status"] == "ok", summary.get("error")
    assert summary["steps"] == 3
    rows = read_metrics(tmp_path / "run")
    final = [r for r in rows if r["final"]]
    assert len(final) == 1 and final[0]["step"] == 3 and rows[-1] is final[0]
    every = cfg.trainer.eval_every                     # smoke's 2, unless the experiment sets its own
    assert [r["step"] for r in rows if not r["final"]] == list(range(every, 3, every))
    for key in ("test_examples", "test_trajectories"):   # the families that score a number of test examples
        if key in final[0]:
            assert final[0][key] <= 32
    assert "final_eval_limit=32" in summary["evaluation"]
    assert summary["figures"] == [] and "activation_bytes" not in summary
    assert not [p.name for p in (tmp_path / "run").rglob("*") if p.suffix in FIGURES]
