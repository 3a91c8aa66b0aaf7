"""MNIST classification (paper section 3, Table 1, Figure 3): MLP, ResNet, RK-Net and ODE-Net.

data.py (fetching MNIST; `node-data`), models.py, task.py (the training task), report.py (Table 1, Figure 3,
memory), tolsweep.py (`node-report tolsweep`), bench.py + bench_memory.py (`node-bench step | memory`),
reference.py (the reference-style baseline node-bench measures against). Docs: docs/families/mnist.md.
"""
from ..base import Family, lazy

FAMILY = Family(
    name="mnist", task="classify", models=("mlp", "resnet", "rknet", "odenet"), headline=("test_error",),
    build=lazy(f"{__name__}.task:MnistTask"), check=lazy(f"{__name__}.task:check"),
    experiment_of=lambda run: f"mnist_{run.model}",
    sections=lazy(f"{__name__}.report:sections"),
    bench_commands=lazy(f"{__name__}.bench:commands"),
    tools=lambda: {"tolsweep": lazy(f"{__name__}.tolsweep:main")},
)
