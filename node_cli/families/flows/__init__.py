"""Continuous normalizing flows against planar normalizing flows in 2-D (paper section 4, Figures 4-6).

data.py (Two Circles, Two Moons, the energies U1-U4), models.py (CNF, planar NF), task.py (maximum likelihood and
density matching, checks), plots.py (density.png, flow.png in each run), report.py (Figures 4-6, the
best-of-settings grid, the seminorm table, the FFJORD tables). Beyond the paper: toys.py (FFJORD's 2-D toy sets),
ffjord.py (`model=ffjord`: free-form field, exact or Hutchinson trace, RNODE regularisers), bench.py
(`node-bench ffjord`: exact against Hutchinson trace as the dimension grows). Docs: docs/families/flows.md.
"""
from ..base import BenchCommand, BenchSpec, ContentionSpec, Family, lazy


def experiment_of(run) -> str:
    data = run.setting("dataset.name")
    if run.model == "ffjord" and run.setting("model.loss", "mle") != "mle":
        return f"fm_{data}"   # flow matching (model.loss=cfm|otcfm): experiments fm_<data>
    return f"density_{run.model}" if data == "density" else f"{run.model}_{data}"


BENCH = {
    "ffjord": BenchCommand("seconds per training step of FFJORD's exact against Hutchinson trace, d = 2 ... 128",
                           lazy(f"{__name__}.bench:add_arguments"), lazy(f"{__name__}.bench:check_arguments"),
                           lazy(f"{__name__}.bench:run")),
}

FAMILY = Family(
    name="flows", models=("cnf", "nf", "ffjord"), headline=("test_nll", "test_kl"),
    build=lazy(f"{__name__}.task:FlowTask"), check=lazy(f"{__name__}.task:check"), experiment_of=experiment_of,
    sections=lazy(f"{__name__}.report:sections"),
    # the reference script (torchdiffeq's cnf.py) solves at rtol = atol = 1e-5
    bench=BenchSpec("cnf_circles", ("solver.rtol=1e-5", "solver.atol=1e-5"), "test_nll"),
    contention=ContentionSpec("cnf_circles"),
    bench_commands=lambda: BENCH,
    reference=lazy(f"{__name__}.reference:loops"),
)
