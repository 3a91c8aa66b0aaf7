"""`node-bench`: how fast node-run trains and how much memory a training step keeps, measured, not assumed.

    node-bench                      # every family's default commands (MNIST: `step` then `memory`, ~3 minutes)
    node-bench step | memory        # a family's own command (MNIST: training step against the reference-style
                                    # baseline; activation bytes / peak memory against depth)
    node-bench families             # each family with a bench spec: seconds to reach the quick config's accuracy,
                                    # node-run's tolerance against the reference script's default tolerance
    node-bench contention           # a training step idle and beside busy processes, for each thread policy
    node-bench reference            # every family's training step against a plain torchdiffeq loop written the
                                    # way its reference script writes it (same field, weights, batches)

Everything is written under --out (default outputs/bench/<time>/): CSV and Markdown tables, PNGs, and bench.json
with the command, the machine and the thread count.
"""
from __future__ import annotations

# First, before anything below loads torch: libgomp reads its wait settings once, when torch loads
from ..core.threads import prepare_environment

prepare_environment()

import argparse
import datetime
import json
import sys
import warnings
from pathlib import Path

import torch

from .. import families
from ..core.checks import ConfigError, DataError, one_line, resolve_device
from ..core.clock import environment
from ..core.progress import say
from . import contention, families as cross, reference


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, no usage block
        raise ConfigError(f"{message} (see node-bench --help)")


def commands() -> dict:
    """name -> BenchCommand of every family, in registry order."""
    out = {}
    for family in families.every():
        out.update(family.bench_commands())
    return out


def parse(argv, cmds: dict):
    p = _Parser(prog="node-bench", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="all", choices=("all", *cmds, "families", "contention", "reference"),
                   help="what to measure (default: every family's default commands: "
                        + ", ".join(n for n, c in cmds.items() if c.default) + ")")
    p.add_argument("--out", type=Path, default=None, help="output folder (default outputs/bench/<time>)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a shared CPU more threads "
                   "mostly wait for each other; every runner gets the same)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", default=None, help="families: comma-separated of " + ",".join(cross.specs())
                   + " (default all); contention: of " + ",".join(contention.specs())
                   + " (default " + ",".join(contention.default_families()) + "); reference: of "
                   + ",".join(reference.loops()) + " (default all)")
    p.add_argument("--family-steps", type=int, default=None, help="families: optimizer steps (default: trainer=quick)")
    p.add_argument("--eval-every", type=int, default=25, help="families: steps between evaluations (default 25)")
    p.add_argument("--load", type=int, default=None, help="contention: busy background processes (default: one per "
                   "core)")
    p.add_argument("--policies", default=",".join(contention.DEFAULT_POLICIES), help="contention: thread policies, "
                   "comma-separated of " + ",".join(contention.POLICIES))
    p.add_argument("--cell-timeout", type=float, default=300, help="contention: seconds one cell may take before it "
                   "is killed (default 300)")
    p.add_argument("--reps", type=int, default=20, help="reference: timed training steps of each loop (default 20)")
    p.add_argument("--warmup-steps", type=int, default=3, help="reference: untimed steps of each loop first "
                   "(default 3)")
    p.add_argument("--split-reps", type=int, default=5, help="reference: extra node-run steps with the ODE blocks "
                   "timed (default 5)")
    p.add_argument("--node-overrides", default="", help="reference: node-run config overrides for every row, "
                   "space-separated (e.g. 'solver.first_step_grad=false'; the reference loops keep their own)")
    p.add_argument("--field-reps", type=int, default=50, help="reference: evaluations of the field timed alone "
                   "(default 50)")
    adders = []
    for cmd in cmds.values():
        if cmd.add_arguments not in adders:
            adders.append(cmd.add_arguments)
            cmd.add_arguments(p)
    args = p.parse_args(argv)
    args.line = "node-bench " + " ".join(argv)   # the command as typed, for every table's header
    for key in ("threads", "family_steps", "eval_every", "reps", "split_reps", "field_reps"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise ConfigError(f"--{key.replace('_', '-')}={value} is not allowed: it must be a positive integer")
    if args.command == "contention":
        args.families = _items(args.families or ",".join(contention.default_families()), tuple(contention.specs()),
                               "--families family")
        args.policies = _items(args.policies, tuple(contention.POLICIES), "--policies policy")
        from ..core.threads import every_core
        args.load = every_core() if args.load is None else args.load
        if args.load < 1 or not args.cell_timeout > 0:
            raise ConfigError("--load must be a positive integer and --cell-timeout a positive number of seconds")
    elif args.command == "reference":
        offered = tuple(reference.loops())
        args.families = _items(args.families or ",".join(offered), offered, "--families family")
        if args.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps={args.warmup_steps} is not allowed: it must be at least 0")
    else:
        args.families = _items(args.families or ",".join(cross.specs()), tuple(cross.specs()), "--families family")
    checked = []
    for cmd in cmds.values():
        if cmd.check_arguments not in checked:
            checked.append(cmd.check_arguments)
            cmd.check_arguments(args, _items, _numbers)
    return args


def _items(value, accepted, key):
    out = [v for v in value.split(",") if v]
    bad = [v for v in out if v not in accepted]
    if bad:
        raise ConfigError(f"unknown {key} {bad[0]!r}; accepted: {', '.join(accepted)}")
    return out


def _numbers(value, key, kind):
    try:
        out = [kind(v) for v in value.split(",") if v]
    except ValueError:
        raise ConfigError(f"--{key}={value!r} is not a comma-separated list of numbers") from None
    if not out or any(v <= 0 for v in out):
        raise ConfigError(f"--{key}={value!r}: every value must be positive")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cmds = commands()
        args = parse(argv, cmds)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA device is available; use --device auto or cpu")
        device = resolve_device(args.device)
        torch.set_num_threads(args.threads)
        out = args.out or Path("outputs") / "bench" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        if out.exists() and any(out.glob("*.csv")):
            raise ConfigError(f"{out} already holds benchmark results; choose another --out (nothing is overwritten)")
        out.mkdir(parents=True, exist_ok=True)
    except ConfigError as exc:
        print(f"node-bench: error: {exc}", file=sys.stderr)
        return 2

    def log(msg):   # above the progress bars of the benchmarks
        say(msg, file=sys.stderr)

    from ..experiment import configure
    args.configure = configure   # how a family's benchmark composes and checks a config
    if args.command == "all":
        chosen = [c for c in cmds.values() if c.default]
    elif args.command in ("families", "contention", "reference"):
        chosen = []
    else:
        chosen = [cmds[args.command]]
    report = []
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ii]nference.*")
            for cmd in chosen:
                report += cmd.run(args, device, out, log)
            if args.command == "families":
                from ..core.tables import write_table
                rows = cross.family_rows(args, out, log)
                report.append(write_table(out, "families", rows, cross.COLUMNS, cross.header(args, device)))
            if args.command == "contention":
                report.append(contention.run(args, out, log))
            if args.command == "reference":
                report.append(reference.run(args, device, out, log))
    except (ConfigError, DataError) as exc:
        print(f"node-bench: error: {one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    with open(out / "bench.json", "w") as f:
        json.dump(environment(args.line, device), f, indent=2)
    print("\n\n".join(report))
    print(f"\nnode-bench: tables in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
