"""MNIST classification (paper section 3, Table 1, Figure 3): MLP, ResNet, RK-Net and ODE-Net.

data.py (fetching MNIST; `node-data`), models.py, task.py (the training task), report.py (Table 1, Figure 3,
memory), tolsweep.py (`node-report tolsweep`), bench.py + bench_memory.py (`node-bench step | memory`),
reference.py (the reference-style baseline node-bench measures against). Docs: docs/families/mnist.md.
"""
from ..base import BenchCommand, ContentionSpec, Family, lazy

_options = lazy(f"{__name__}.bench:add_arguments"), lazy(f"{__name__}.bench:check_arguments")
BENCH = {
    "step": BenchCommand("node-run's MNIST training step against the reference-style baseline", *_options,
                         lazy(f"{__name__}.bench:run_step"), default=True),
    "memory": BenchCommand("activation bytes / peak memory of one step: ODE-Net, RK-Net, ResNet depths", *_options,
                           lazy(f"{__name__}.bench_memory:run_memory"), default=True),
}

FAMILY = Family(
    name="mnist", models=("mlp", "resnet", "rknet", "odenet"), headline=("test_error",),
    build=lazy(f"{__name__}.task:MnistTask"), check=lazy(f"{__name__}.task:check"),
    experiment_of=lambda run: f"mnist_{run.model}",
    sections=lazy(f"{__name__}.report:sections"),
    bench_commands=lambda: BENCH,
    contention=ContentionSpec("mnist_odenet", ("solver.method=dopri5", "solver.rtol=1e-3", "solver.atol=1e-3",
                                               "trainer.batch_size=128"),
                              from_args=lambda args: (f"dataset.root={args.data_root}", "dataset.download=false")),
    tools=lambda: {"tolsweep": lazy(f"{__name__}.tolsweep:main")},
    reference=lazy(f"{__name__}.reference:loops"),
    threads=None,   # threads=auto: every core (its convolutions pay for a second thread; node-bench contention)
)
