"""core/stats.py: seed-paired differences with t intervals, checked against hand computations and a printed
t table; seeds counted as distinct seeds; the unpaired (Welch) view where the seeds do not share data."""
import math
from pathlib import Path

import pytest

from node_cli.core import stats
from node_cli.core.runs import Run

# Student's t, two-sided 95% (the 0.975 quantile), from a printed table
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262}


def run(model, seed, value, data_seed=0, metric="test_rmse", **summary):
    return Run(Path(f"{model}-{seed}-{data_seed}-{value}"), cfg={"seed": seed, "model": {"name": model},
                                                                   "dataset": {"seed": data_seed}},
               summary={metric: value, **summary}, status="ok")


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_the_printed_table(df):
    assert stats.t_quantile(0.975, df) == pytest.approx(T975[df], abs=1e-3)


def test_paired_interval_by_hand_on_a_four_seed_table():
    a = {0: 1.0, 1: 2.0, 2: 4.0, 3: 3.0}
    b = {0: 0.5, 1: 0.0, 2: 1.0, 3: 0.5, 7: 9.0}        # seed 7 has no partner: left out
    # differences 0.5, 2, 3, 2.5: mean 2, squared deviations 2.25 + 0 + 1 + 0.25 = 3.5, sd sqrt(3.5 / 3)
    half = T975[3] * math.sqrt(3.5 / 3) / math.sqrt(4)
    d = stats.paired(a, b)
    assert (d.design, d.n, d.n_a, d.n_b) == ("paired", 4, 4, 5)
    assert d.mean == pytest.approx(2.0)
    assert d.lo == pytest.approx(2.0 - half, abs=1e-3) and d.hi == pytest.approx(2.0 + half, abs=1e-3)
    assert d.lo > 0 and stats.verdict(d).startswith("reversed: A higher")
    assert stats.verdict(stats.paired(b, a)).startswith("established: A lower")
    assert d.cell(".2f") == f"2.00 [{2 - half:.2f}, {2 + half:.2f}]"


def test_pairing_removes_what_the_seeds_share():
    """B = A + 0.1 on every seed, A spread widely: paired, the difference is -0.1 with an interval of zero width;
    the unpaired view of the same numbers cannot tell the two apart."""
    a = {0: 1.0, 1: 3.0, 2: 2.0, 3: 5.0}
    b = {k: v + 0.1 for k, v in a.items()}
    d = stats.paired(a, b)
    assert d.mean == pytest.approx(-0.1) and d.lo == pytest.approx(-0.1) and d.hi == pytest.approx(-0.1)
    assert stats.verdict(d).startswith("established")
    u = stats.unpaired(list(a.values()), list(b.values()))
    assert u.lo < 0 < u.hi and stats.verdict(u).startswith("not established: the interval includes 0")


def test_seeds_are_counted_as_distinct_seeds():
    """Seed 0 run twice (e.g. on two machines) is one seed: its runs are averaged, n counts seeds."""
    ode = [run("latent_ode", 0, 0.5), run("latent_ode", 0, 0.7), run("latent_ode", 1, 0.4), run("latent_ode", 2, 0.8)]
    rnn = [run("rnn", 0, 1.0), run("rnn", 1, 0.9), run("rnn", 2, 1.4)]
    assert stats.by_seed(ode, "test_rmse") == {(0, 0): pytest.approx(0.6), (1, 0): 0.4, (2, 0): 0.8}
    d = stats.compare(ode, rnn, "test_rmse")
    # differences -0.4, -0.5, -0.6: mean -0.5, sd 0.1
    assert (d.design, d.n) == ("paired", 3)
    assert d.mean == pytest.approx(-0.5)
    assert d.hi == pytest.approx(-0.5 + T975[2] * 0.1 / math.sqrt(3), abs=1e-3)
    md, row = stats.comparison(("Latent ODE", ode), ("RNN", rnn), "test_rmse")
    assert md[3] == "0.6000 ± 0.2000 (3 seeds)" and row["seeds_a"] == 3 and row["n"] == 3
    assert row["verdict"].startswith("established: A lower")


def test_different_data_seeds_fall_back_to_welch():
    """Runs whose dataset.seed differs never pair: mean ± sd each and Welch's interval (hand computation)."""
    a = [run("latent_ode", s, v, data_seed=0) for s, v in enumerate((1.0, 2.0, 3.0))]
    b = [run("rnn", s, v, data_seed=1) for s, v in enumerate((2.0, 4.0, 6.0))]
    d = stats.compare(a, b, "test_rmse")
    # variances 1 and 4; se^2 = 1/3 + 4/3; Welch df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 2.94
    se = math.sqrt(5 / 3)
    assert (d.design, d.n_a, d.n_b) == ("unpaired", 3, 3) and d.mean == pytest.approx(-2.0)
    t = (d.hi - d.mean) / se
    assert T975[3] < t < T975[2]                 # between the quantiles at 3 and 2 degrees of freedom
    assert d.lo == pytest.approx(-2.0 - t * se)
    assert "unpaired, 3 and 3 seeds" in stats.verdict(d)


def test_one_seed_gives_no_interval_and_says_so():
    d = stats.compare([run("mlp", 0, 0.04)], [run("resnet", 0, 0.007)], "test_rmse")
    assert d.lo is None and d.hi is None and d.mean == pytest.approx(0.033)
    assert stats.verdict(d) == "not established: no interval from 1 seed (needs 2 or more)"
    assert stats.verdict(None) == "no runs to compare"


def test_within_a_margin():
    near = stats.Difference("paired", 3, 0.001, -0.001, 0.002, 3, 3).scaled(100)   # fractions -> points
    assert (near.lo, near.hi) == (pytest.approx(-0.1), pytest.approx(0.2))
    assert stats.verdict(near, "within", 0.3, " points").startswith("established: within ±0.3 points")
    far = stats.Difference("paired", 3, 0.1, -0.2, 0.4, 3, 3)
    assert stats.verdict(far, "within", 0.3).startswith("not established: the interval reaches beyond ±0.3")


def test_machines_names_cpu_threads_torch_and_seeds():
    runs = [run("rnn", s, 1.0, device_name="AMD EPYC", threads=1, versions={"torch": "2.14.1"}) for s in (2, 0)]
    assert stats.machines(runs) == "AMD EPYC; threads 1; torch 2.14.1; seeds 0, 2"
