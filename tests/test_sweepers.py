"""Search sweepers drive node-run: each job returns its experiment's objective, Optuna minimises it; glob()
picks experiments; search syntax is validated where it can be and refused where only a search sweeper could
expand it."""
import json

import yaml

NF = ["experiment=nf_moons", "trainer=quick", "trainer.max_steps=3", "model.depth=2", "dataset.test_size=100",
      "trainer.progress=false"]


def test_an_optuna_search_minimises_the_experiments_objective(tmp_path, node_run):
    sweep = tmp_path / "search"
    r = node_run("-m", "hparams_search=nf_lr", *NF, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(2)]
    assert all(s["status"] == "ok" and s["objective"] == "test_nll" for s in summaries)
    assert all(s["objective_value"] == s["test_nll"] for s in summaries)
    lrs = [yaml.safe_load((sweep / str(i) / ".hydra" / "config.yaml").read_text())["trainer"]["lr"] for i in range(2)]
    assert all(1e-3 <= lr <= 3e-1 for lr in lrs) and lrs[0] != lrs[1]          # sampled from the search space
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(summaries, key=lambda s: s["objective_value"])
    assert result["best_value"] == best["objective_value"]
    assert result["best_params"]["trainer.lr"] == lrs[summaries.index(best)]


def test_a_glob_sweep_runs_every_matching_experiment(tmp_path, node_run):
    sweep = tmp_path / "glob"
    r = node_run("-m", "experiment=glob(nf_*)", "trainer=quick", "trainer.max_steps=2", "trainer.progress=false",
                 f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    names = sorted(json.loads(p.read_text())["experiment"] for p in sweep.glob("*/summary.json"))
    assert names == ["nf_circles", "nf_moons"]


def test_search_syntax_is_checked_before_any_job(tmp_path, node_run):
    out = tmp_path / "never"
    basic = node_run("-m", *NF, "trainer.lr=interval(0.01,0.1)", f"hydra.sweep.dir={out}")
    assert basic.returncode == 2 and "needs a search sweeper: add hydra/sweeper=optuna" in basic.stderr
    bad_end = node_run("-m", "hydra/sweeper=optuna", *NF, "trainer.lr=interval(-1,0.1)", f"hydra.sweep.dir={out}")
    assert bad_end.returncode == 2 and "trainer.lr=-1.0 is not allowed" in bad_end.stderr
    no_match = node_run("-m", "experiment=glob(transformer_*)", f"hydra.sweep.dir={out}")
    assert no_match.returncode == 2 and "matches no experiment" in no_match.stderr
    for r in (basic, bad_end, no_match):
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert not out.exists()


def test_a_search_where_every_trial_fails_ends_in_one_line_exit_1(tmp_path, node_run):
    sweep = tmp_path / "search"
    r = node_run("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "experiment=dynamics_spiral",
                 "trainer=quick", "trainer.max_steps=2", "trainer.progress=false", "solver.max_num_steps=1",
                 "trainer.lr=interval(1e-3,1e-2)", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1] == ("node-run: error: the sweep ended with an error: ValueError: No trials are "
                                         "completed yet. (2 of its jobs did not finish ok; each one's summary.json "
                                         "says why)")
    assert [json.loads((sweep / str(i) / "summary.json").read_text())["status"] for i in range(2)] == ["failed"] * 2
