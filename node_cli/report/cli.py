"""`node-report DIR...`: the paper's tables and figures, regenerated from node-run runs, the paper's values beside.

    node-report outputs/multirun/mnist_odenet/... outputs/mnist_mlp/... [--out REPORT_DIR] [--force]
    node-report tolsweep RUN_DIR [--tols ...]      # a family's extra tool (here the MNIST family's Figure 3 data)

The report folder holds report.md, the tables as CSV (each row with the IDs and folders of its runs) and the
figures as PNG (build.py).
"""
from __future__ import annotations

# First, before anything below loads torch: libgomp reads its wait settings once, when torch loads
from ..core.threads import prepare_environment

prepare_environment()

import argparse
import datetime
import sys
from pathlib import Path

from .. import families
from ..core.rundir import CHECKPOINT, SUMMARY
from ..core.runs import discover
from .build import build


def prepare_out(out: str | None, force: bool) -> Path:
    if out is None:
        return Path("outputs") / "report" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not (force and (path / "report.md").is_file()):
            raise SystemExit(f"node-report: error: {path} is not empty; choose a new --out folder "
                             "(or --force to replace an earlier report there)")
        for f in path.iterdir():
            if f.is_file() and f.suffix in (".md", ".csv", ".png"):
                f.unlink()
    if (path / SUMMARY).exists() or (path / CHECKPOINT).exists():
        raise SystemExit(f"node-report: error: {path} is a run folder; choose another --out")
    return path


def main(argv: list[str] | None = None) -> None:
    try:
        report(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:   # report.md is written last
        print("node-report: interrupted before it finished (a report folder without report.md is unfinished)",
              file=sys.stderr)
        sys.exit(130)


def report(argv: list[str]) -> None:
    tools = {name: tool for family in families.every() for name, tool in family.tools().items()}
    if argv and argv[0] in tools:
        return tools[argv[0]](argv[1:])
    p = argparse.ArgumentParser(
        prog="node-report",
        description="Regenerate the paper's tables and figures from node-run runs (single runs and multirun "
                    "sweeps, any mix), the paper's values beside. The families' own tools: "
                    + ", ".join(f"`node-report {name} ...`" for name in tools) + " (each with -h).")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders to scan for runs (recursively)")
    p.add_argument("--out", default=None, help="report folder (default outputs/report/<time>); must be new or empty")
    p.add_argument("--force", action="store_true", help="replace an earlier report in --out")
    args = p.parse_args(argv)
    found = discover(args.dirs)
    if not found[0]:   # say so before any report folder is made
        print("node-report: error: no runs found under " + " ".join(args.dirs), file=sys.stderr)
        sys.exit(1)
    out = prepare_out(args.out, args.force)
    rep = build(args.dirs, out, "node-report " + " ".join(argv), found)
    for m in rep.problems:
        print(f"node-report: warning: {m}", file=sys.stderr)
    ok = sum(r.ok for r in rep.runs)
    print(f"node-report: {len(rep.runs)} runs ({ok} ok), {len(rep.files)} tables/figures -> {out / 'report.md'}")


if __name__ == "__main__":
    main()
