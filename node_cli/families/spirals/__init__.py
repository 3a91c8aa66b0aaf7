"""Latent ODE against RNN baselines on irregularly sampled spirals (paper section 5, Table 2, Figures 8-9).

data.py (the generated spirals), models.py, task.py (training, evaluation protocol, checks), plots.py
(Figures 8-9 in each run), report.py (Table 2). Docs: docs/families/spirals.md.
"""
from ..base import BenchSpec, Family

MODELS = ("rnn", "rnn_dt", "latent_ode")


def build(cfg, device):
    from .task import SpiralTask
    return SpiralTask(cfg, device)


def check(cfg) -> None:
    from .task import check
    check(cfg)


def experiment_of(run) -> str:
    return f"spiral_{run.model}"


def sections():
    from .report import table2
    return (table2,)


FAMILY = Family(name="spirals", task="latent", models=MODELS, build=build, check=check, experiment_of=experiment_of,
                sections=sections, headline=("test_rmse",),
                # the reference script (torchdiffeq's latent_ode.py) solves at odeint's defaults
                bench=BenchSpec("spiral_latent_ode", ("solver.rtol=1e-7", "solver.atol=1e-9"), "test_rmse"))
