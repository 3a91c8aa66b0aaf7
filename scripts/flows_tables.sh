#!/usr/bin/env bash
# The flow grids of docs/families/flows.md, launched with Hydra multirun, then node-report on them: its flows
# section holds the tables (read from the runs' summary.json and .hydra/config.yaml, never from folder names),
# including each grid cell's best run over the settings tried and the seminorm table.
#
#   scripts/flows_tables.sh [OUT] [overrides for every run...]
#   scripts/flows_tables.sh outputs/flows_tables                 # full budgets (about 2.5 CPU-hours; JOBS=2 halves the wall time)
#   scripts/flows_tables.sh /tmp/flows_quick trainer=quick       # a smoke test of the whole pipeline
#   STAGES=report scripts/flows_tables.sh outputs/flows_tables   # only make the report again (OUT/report)
#
# STAGES (default "nll kl seminorm"): nll = CNF M=64 and NF K=64 on circles and moons; kl = CNF widths and NF
# depths 2, 8, 32 on U1-U4 (the NF at three learning rates, the CNF at two flow times); seminorm = cnf_circles again with solver.adjoint_norm=seminorm (same seed).
# JOBS=2 runs two lanes side by side (each with OMP_NUM_THREADS=1). Sweep folders that exist are never reused.
# One sweep per experiment: Hydra composes a multirun's shared overrides before it picks the experiment.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/flows_tables}
shift || true
EXTRA=("$@")
STAGES=${STAGES:-nll kl seminorm}
JOBS=${JOBS:-1}
mkdir -p "$OUT"

sweep() {   # sweep NAME overrides...: one Hydra multirun into $OUT/NAME, its log in $OUT/NAME.log
  local name=$1
  shift
  if [ -e "$OUT/$name" ]; then
    echo "flows_tables: $OUT/$name exists, skipping it (delete it or choose another OUT to run it again)" >&2
    return 0
  fi
  local start=$SECONDS
  nice -n 10 node-run -m "$@" trainer.progress=false hydra.sweep.dir="$OUT/$name" ${EXTRA[@]+"${EXTRA[@]}"} \
    > "$OUT/$name.log" 2>&1 || echo "flows_tables: some runs of $name failed, see $OUT/$name.log" >&2
  echo "flows_tables: $name took $((SECONDS - start)) s" >&2
}

has() { [[ " $STAGES " == *" $1 "* ]]; }

lane_a() {   # about half of the CPU time each
  if has nll; then sweep nll_cnf_circles experiment=cnf_circles; sweep nll_cnf_moons experiment=cnf_moons; fi
  if has nll; then sweep nll_nf_circles experiment=nf_circles; sweep nll_nf_moons experiment=nf_moons; fi
  if has seminorm; then sweep seminorm experiment=cnf_circles solver.adjoint_norm=seminorm; fi
  if has kl; then sweep kl_cnf_u1u2 experiment=density_cnf model.width=2,8,32 dataset.target=u1,u2; fi
  # the CNF gets a second flow time (the earlier default); the KL table shows each cell's best run
  if has kl; then sweep kl_cnf_t1_u1u2 experiment=density_cnf model.width=2,8,32 dataset.target=u1,u2 model.t1=1; fi
}
lane_b() {
  if has kl; then sweep kl_cnf_u3u4 experiment=density_cnf model.width=2,8,32 dataset.target=u3,u4; fi
  # the baseline gets three learning rates; the KL table shows its best run in each cell
  if has kl; then sweep kl_nf experiment=density_nf model.depth=2,8,32 dataset.target=u1,u2,u3,u4 trainer.lr=1e-2,3e-2,1e-1; fi
  if has kl; then sweep kl_cnf_t1_u3u4 experiment=density_cnf model.width=2,8,32 dataset.target=u3,u4 model.t1=1; fi
}

start=$SECONDS
if [ "$JOBS" -ge 2 ]; then
  export OMP_NUM_THREADS=1
  lane_a & a=$!
  lane_b & b=$!
  wait $a $b
else
  lane_a
  lane_b
fi
echo "flows_tables: all sweeps took $((SECONDS - start)) s" >&2
node-report "$OUT" --out "$OUT/report" --force
echo "flows_tables: tables in $OUT/report/report.md (section 'Figures 4-6')" >&2
