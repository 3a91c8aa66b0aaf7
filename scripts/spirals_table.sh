#!/usr/bin/env bash
# Table 2 of the paper: predictive RMSE of the RNN, the RNN with time gaps and the latent ODE at 30, 50 and 100
# observations per spiral (the 3x3 grid, full budget: trainer=spirals), then node-report on them (Table 2 with the
# paper's values, a per-run table and Figures 8-9, in DIR/report/report.md).
#
#   scripts/spirals_table.sh                      # run the 9 jobs into outputs/multirun/spirals_table/<time>
#   scripts/spirals_table.sh seed=1               # extra overrides go to every job
#   scripts/spirals_table.sh --print DIR          # only make the report of runs already under DIR
#   SWEEP_DIR=DIR scripts/spirals_table.sh        # the sweep folder (default outputs/multirun/spirals_table/<time>)
#
# Jobs run one after another with OMP_NUM_THREADS=1 (these models are tiny: one thread is much faster than
# several fighting over a shared CPU). node-report reads each run's .hydra/config.yaml and summary.json, never
# folder names.
set -euo pipefail

if [[ "${1:-}" == "--print" ]]; then
    DIR=${2:?usage: $0 --print DIR}
else
    DIR=${SWEEP_DIR:-outputs/multirun/spirals_table/$(date +%Y-%m-%d_%H-%M-%S)}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    status=0
    node-run -m experiment=spiral_latent_ode,spiral_rnn,spiral_rnn_dt dataset.n_obs=30,50,100 \
        trainer.progress=false hydra.sweep.dir="$DIR" "$@" || status=$?
    [[ $status -eq 0 ]] || echo "spirals_table: node-run exited with $status; tabulating what finished" >&2
fi

node-report "$DIR" --out "$DIR/report" --force
echo "spirals_table: Table 2 and the per-run table in $DIR/report/report.md" >&2
