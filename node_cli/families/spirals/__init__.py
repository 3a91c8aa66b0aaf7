"""Latent ODE against RNN baselines on irregularly sampled spirals (paper section 5, Table 2, Figures 8-9).

data.py (the generated spirals), models.py, task.py (training, evaluation protocol, checks), plots.py
(Figures 8-9 in each run), report.py (Table 2). Docs: docs/families/spirals.md.
"""
from ..base import BenchSpec, ContentionSpec, Family, lazy

FAMILY = Family(
    name="spirals", models=("rnn", "rnn_dt", "latent_ode"), headline=("test_rmse",),
    build=lazy(f"{__name__}.task:SpiralTask"), check=lazy(f"{__name__}.task:check"),
    experiment_of=lambda run: f"spiral_{run.model}",
    sections=lazy(f"{__name__}.report:sections"),
    # the reference script (torchdiffeq's latent_ode.py) solves at odeint's defaults
    bench=BenchSpec("spiral_latent_ode", ("solver.rtol=1e-7", "solver.atol=1e-9"), "test_rmse"),
    contention=ContentionSpec("spiral_latent_ode"),
    reference=lazy(f"{__name__}.reference:loops"),
)
