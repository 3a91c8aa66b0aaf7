#!/usr/bin/env bash
# Table 2 of the paper (latent ODE against RNNs on irregularly sampled spirals, test RMSE at 30/50/100 observations)
# and Figures 8-9 (each run's own spirals.png and latent.png), through the spirals family's own sweep script
# scripts/spirals_table.sh (9 runs: spiral_latent_ode, spiral_rnn, spiral_rnn_dt x dataset.n_obs=30,50,100).
#
#   scripts/table2.sh                  # trainer=quick
#   FULL=1 scripts/table2.sh           # the family's full budget (trainer=spirals)
#
# Switches (FULL, STEPS, LAUNCHER, JOBS, OUT): scripts/_paper.sh. Runs go to $OUT/runs, the report to $OUT/report.
source "$(dirname "$0")/_paper.sh"

# dataset=spirals: Hydra composes a multirun's primary config before the swept experiment is applied, so keys of
# the spirals data set (dataset.n_obs) need the spirals data set there too.
echo "$NAME: spirals_table.sh into $OUT/runs" >&2
SWEEP_DIR="$OUT/runs" "$SCRIPTS/spirals_table.sh" ${SEED[@]+"${SEED[@]}"} dataset=spirals "$@" "${BUDGET[@]}" "${LAUNCH[@]}" || {
    echo "$NAME: spirals_table.sh exited with $?; reporting what finished" >&2
    STATUS=1
}
report "$OUT/runs"
exit $STATUS
