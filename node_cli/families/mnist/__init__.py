"""MNIST classification (paper section 3, Table 1, Figure 3): MLP, ResNet, RK-Net and ODE-Net.

data.py (fetching MNIST; `node-data`), models.py, task.py (the training task), report.py (Table 1, Figure 3,
memory), tolsweep.py (`node-report tolsweep`), bench.py + bench_memory.py (`node-bench step | memory`),
reference.py (the reference-style baseline node-bench measures against). Docs: docs/families/mnist.md.
"""
from ..base import BenchCommand, Family

MODELS = ("mlp", "resnet", "rknet", "odenet")


def build(cfg, device):
    from .task import MnistTask
    return MnistTask(cfg, device)


def check(cfg) -> None:
    from .task import check
    check(cfg)


def experiment_of(run) -> str:
    return f"mnist_{run.model}"


def sections():
    from .report import figure3, memory, table1
    return (table1, figure3, memory)


def bench_commands():
    from . import bench
    return {
        "step": BenchCommand("node-run's MNIST training step against the reference-style baseline",
                             bench.add_arguments, bench.check_arguments, bench.run_step, default=True),
        "memory": BenchCommand("activation bytes / peak memory of one step: ODE-Net, RK-Net, ResNet depths",
                               bench.add_arguments, bench.check_arguments, bench.run_memory, default=True),
    }


def tools():
    from .tolsweep import main
    return {"tolsweep": main}


FAMILY = Family(name="mnist", task="classify", models=MODELS, build=build, check=check, experiment_of=experiment_of,
                sections=sections, bench_commands=bench_commands, tools=tools, headline=("test_error",))
