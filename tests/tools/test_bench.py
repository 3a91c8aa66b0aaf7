"""node-bench's generic parts: the command line (every family's options, bad input in one line) and the cost to
reach a target accuracy that `node-bench families` reports."""
import pytest

from node_cli import families
from node_cli.bench.cli import commands, main as node_bench
from node_cli.bench.families import specs, to_target


@pytest.mark.parametrize("argv, message", [
    (["step", "--models", "transformer"], "unknown --models model 'transformer'; accepted: odenet, rknet, resnet"),
    (["step", "--variants", "turbo"], "unknown --variants variant 'turbo'"),
    (["memory", "--tols", "1e-3,abc"], "is not a comma-separated list of numbers"),
    (["step", "--steps", "0"], "--steps=0 is not allowed"),
    (["nonsense"], "invalid choice"),
    (["contention", "--policies", "turbo"], "unknown --policies policy 'turbo'"),
    (["contention", "--families", "imagenet"], "unknown --families family 'imagenet'"),
    (["contention", "--load", "0"], "--load must be a positive integer"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert node_bench(argv + ["--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cost_to_target_counts_steps_seconds_and_evaluations_until_the_first_good_evaluation():
    rows = [dict(step=10, sec_per_step=0.5, test_rmse=2.0, nfe_forward=20, nfe_backward=0),
            dict(step=20, sec_per_step=1.0, test_rmse=1.2, nfe_forward=26, nfe_backward=0),
            dict(step=40, sec_per_step=0.25, test_rmse=0.9, nfe_forward=32, nfe_backward=10)]
    got = to_target(rows, "test_rmse", 1.2)
    assert got == dict(reached_at_step=20, steps=20, seconds=15.0, seconds_median=15.0, nfe=460.0)
    got = to_target(rows, "test_rmse", 0.9)
    assert (got["reached_at_step"], got["seconds"], got["seconds_median"], got["nfe"]) == (40, 20.0, 20.0, 1300.0)
    never = to_target(rows, "test_rmse", 0.5)
    assert never["reached_at_step"] is None and never["steps"] == 40      # never reached: all it trained


def test_every_family_command_and_spec_is_offered():
    cmds = commands()
    for family in families.every():
        for name, cmd in family.bench_commands().items():
            assert cmds[name] is cmd and callable(cmd.run) and callable(cmd.add_arguments)
    assert {"step", "memory"} <= set(cmds) and all(cmds[n].default for n in ("step", "memory"))
    assert specs() == {f.name: f.bench for f in families.every() if f.bench is not None}
    assert {"spirals", "flows"} <= set(specs())          # a new family with a BenchSpec adds its row, no edit here


def test_families_bad_choice_is_one_line(capsys):
    assert node_bench(["families", "--families", "mnist", "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err
    assert "unknown --families family 'mnist'" in err and err.count("\n") == 1
