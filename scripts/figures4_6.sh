#!/usr/bin/env bash
# Figures 4-6 of the paper (2-D flows), through the flows family's own sweep script scripts/flows_tables.sh:
# Figure 4: density matching of U1-U4, planar NF at depth K = 2, 8, 32 against planar CNF at width M = 2, 8, 32
# (the grid of each run's density.png, test KL against K/M); Figures 5-6: maximum likelihood on Two Circles and
# Two Moons, CNF M=64 against NF K=64 (each run's flow.png and density.png, test NLL).
#
#   scripts/figures4_6.sh              # trainer=quick
#   FULL=1 scripts/figures4_6.sh       # the family's full budgets (about 2.5 CPU-hours, docs/families/flows.md)
#
# Switches (FULL, STEPS, LAUNCHER, JOBS, OUT): scripts/_paper.sh. flows_tables.sh runs its sweeps in JOBS lanes
# (default 1; JOBS=2: two at once); with LAUNCHER=slurm the sweep points go to SLURM instead. Runs go to
# $OUT/runs, the report to $OUT/report.
source "$(dirname "$0")/_paper.sh"

mkdir -p "$OUT/runs"
RUNS=$(cd "$OUT/runs" && pwd)          # flows_tables.sh works from the repository root
EXTRA=()
[[ "$LAUNCHER" != slurm ]] || EXTRA=("${LAUNCH[@]}")
export JOBS
"$SCRIPTS/flows_tables.sh" "$RUNS" ${SEED[@]+"${SEED[@]}"} "${BUDGET[@]}" ${EXTRA[@]+"${EXTRA[@]}"} "$@" || {
    echo "$NAME: flows_tables.sh exited with $?; reporting what finished" >&2
    STATUS=1
}
report "$RUNS"
exit $STATUS
