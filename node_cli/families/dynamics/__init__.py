"""Learning known 2-D dynamical systems with a neural vector field (torchdiffeq's ode_demo): phase
portraits, learned against true vector fields, a GIF of training.

data.py (the systems, solved at tight tolerance), models.py (the field MLP inside an ODEBlock), task.py (training as
ode_demo, evaluation protocol, checks), plots.py (phase.png, timeseries.png, vector_field.png, training.gif in each
run), crossing.py (experiment=anode_crossing, augmented ODEs), report.py (systems x fields table of node-report). Docs: docs/families/dynamics.md.
"""
from ..base import BenchSpec, ContentionSpec, Family, lazy

FAMILY = Family(
    name="dynamics", models=("field",), headline=("test_mse",),
    build=lazy(f"{__name__}.task:build"), check=lazy(f"{__name__}.task:check"),
    experiment_of=lambda run: {"crossing": "anode_crossing", "annuli": "anode_annuli"}.get(
        run.setting("dataset.system"), f"dynamics_{run.setting('dataset.system')}"),
    sections=lazy(f"{__name__}.report:sections"),
    # the reference script (torchdiffeq's ode_demo.py) solves at odeint's defaults
    bench=BenchSpec("dynamics_spiral", ("solver.rtol=1e-7", "solver.atol=1e-9"), "test_mse"),
    contention=ContentionSpec("dynamics_spiral", default=False),
    reference=lazy(f"{__name__}.reference:loops"),
)
