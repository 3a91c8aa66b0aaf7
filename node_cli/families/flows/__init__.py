"""Continuous normalizing flows against planar normalizing flows in 2-D (paper section 4, Figures 4-6).

data.py (Two Circles, Two Moons, the energies U1-U4), models.py (CNF, planar NF), task.py (maximum likelihood and
density matching, checks), plots.py (density.png, flow.png in each run), report.py (Figures 4-6, the best-of-settings
grid, the seminorm table). Docs: docs/families/flows.md.
"""
from ..base import BenchSpec, Family

MODELS = ("cnf", "nf")


def build(cfg, device):
    from .task import FlowTask
    return FlowTask(cfg, device)


def check(cfg) -> None:
    from .task import check
    check(cfg)


def experiment_of(run) -> str:
    data = run.c("dataset.name")
    return f"density_{run.model}" if data == "density" else f"{run.model}_{data}"


def sections():
    from .report import flows
    return (flows,)


FAMILY = Family(name="flows", task="flow", models=MODELS, build=build, check=check, experiment_of=experiment_of,
                sections=sections, headline=("test_nll", "test_kl"),
                # the reference script (torchdiffeq's cnf.py) solves at rtol = atol = 1e-5
                bench=BenchSpec("cnf_circles", ("solver.rtol=1e-5", "solver.atol=1e-5"), "test_nll"))
