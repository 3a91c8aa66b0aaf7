#!/usr/bin/env bash
# FFJORD's two measured claims (docs/families/flows.md, section "FFJORD: free-form flows, ..."), then node-report on the runs:
#   1. dimension scaling: `node-bench ffjord` (seconds per training step, exact against Hutchinson trace,
#      d = 2, 8, 32, 128, one fixed-step solver, runners alternated in one process);
#   2. regularisation: ffjord_<data> unregularised against RNODE (model.kinetic = model.jacobian = lambda, for each
#      lambda in LAMBDAS) on three toy sets, the flow time fixed in every run (model.learn_t1=false, as RNODE: with a
#      learnable time the kinetic term is lowered by lengthening the flow): NFE-F in training and at evaluation,
#      test NLL; node-report's flows section has the table and the NFE-over-training figure;
#   3. RNODE's lambda chosen on the validation split (stage `select`): per data set, the largest lambda whose mean
#      val NLL is within 0.05 nats of the unregularised runs', then that lambda's test NLL and NFE only, over SEEDS.
#
#   scripts/ffjord_tables.sh [OUT] [overrides for every training run...]
#   scripts/ffjord_tables.sh outputs/ffjord_tables                   # about 10 CPU-minutes; JOBS=2 halves the wall time
#   STEPS=20 scripts/ffjord_tables.sh /tmp/ffjord_smoke               # a smoke test of the whole pipeline
#   STAGES=report scripts/ffjord_tables.sh outputs/ffjord_tables     # only make the report again (OUT/report)
#   STAGES="reg select" DATA="8gaussians pinwheel" LAMBDAS="0.05 0.1 0.2" STEPS=3000 SEEDS="0 1" JOBS=2 \
#       scripts/ffjord_tables.sh outputs/rnode_3000                  # RNODE's claim, lambda chosen on validation
#
# STAGES (default "reg bench report"; `select` makes the report and prints only the lambda-selection table);
# DATA (default "8gaussians pinwheel rings"); LAMBDAS (default "0.05 0.5"); SEEDS (default "0": runs of seed s > 0
# are named ..._seed<s>); STEPS (default 400 optimizer steps per run); JOBS=2 runs two trainings side by side
# (OMP_NUM_THREADS=1 each).
# Run folders that exist are never reused.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/ffjord_tables}
shift || true
EXTRA=("$@")
STAGES=${STAGES:-reg bench report}
DATA=${DATA:-8gaussians pinwheel rings}
LAMBDAS=${LAMBDAS:-0.05 0.5}
STEPS=${STEPS:-400}
SEEDS=${SEEDS:-0}
JOBS=${JOBS:-1}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
has() { [[ " $STAGES " == *" $1 "* ]]; }

train() {   # train NAME overrides...: one run into $OUT/NAME, its log in $OUT/NAME.log
  local name=$1
  shift
  if [ -e "$OUT/$name" ]; then
    echo "ffjord_tables: $OUT/$name exists, skipping it" >&2
    return 0
  fi
  local start=$SECONDS
  node-run "$@" trainer.max_steps="$STEPS" trainer.eval_every=100 trainer.progress=false \
    hydra.run.dir="$OUT/$name" $EXTRA_ARGS > "$OUT/$name.log" 2>&1 \
    || echo "ffjord_tables: $name failed, see $OUT/$name.log" >&2
  echo "ffjord_tables: $name took $((SECONDS - start)) s" >&2
}

run_list() {   # one line per training run: NAME overrides...
  for seed in $SEEDS; do
    local tag=""
    [ "$seed" = 0 ] || tag="_seed$seed"
    for data in $DATA; do
      echo "reg_${data}_plain$tag experiment=ffjord_$data model.learn_t1=false seed=$seed"
      for lam in $LAMBDAS; do
        echo "reg_${data}_rnode$lam$tag experiment=ffjord_$data model.learn_t1=false model.kinetic=$lam" \
          "model.jacobian=$lam seed=$seed"
      done
    done
  done
}

start=$SECONDS
if has reg; then
  export -f train
  export OUT STEPS EXTRA_ARGS="${EXTRA[*]:-}"   # overrides must not contain spaces
  run_list | xargs -P "$JOBS" -L 1 bash -c 'train "$@"' _
fi
if has bench && [ ! -e "$OUT/bench" ]; then
  s=$SECONDS
  node-bench ffjord --out "$OUT/bench" > "$OUT/bench.log" 2>&1 || echo "ffjord_tables: node-bench ffjord failed, see $OUT/bench.log" >&2
  echo "ffjord_tables: bench took $((SECONDS - s)) s" >&2
fi
echo "ffjord_tables: training and bench took $((SECONDS - start)) s of wall time" >&2
if has report || has select; then
  rm -rf "$OUT/report"
  node-report "$OUT" --out "$OUT/report" > /dev/null
fi
if has report; then
  awk '/^### FFJORD/{on=1} on && /^## /{exit} on' "$OUT/report/report.md"
elif has select; then
  awk '/^#### RNODE.s λ chosen/{on=1; print; next} on && /^#/{exit} on' "$OUT/report/report.md"
fi
