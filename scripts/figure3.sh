#!/usr/bin/env bash
# Figure 3 of the paper: statistics of a trained ODE-Net. (a) NFE against numerical error, (b) NFE against forward
# time, (c) NFE-F against NFE-B, (d) NFE over training.
#
#   scripts/figure3.sh                         # train an ODE-Net (trainer=quick), then sweep tolerances, then report
#   FULL=1 scripts/figure3.sh                  # the paper's 160-epoch ODE-Net
#   RUN=outputs/.../0 scripts/figure3.sh       # no training: sweep and report an ODE-Net run you already have
#   TOLS=1e-1,1e-2,1e-3,1e-4 scripts/figure3.sh   # the tolerances of the sweep (default: node-report tolsweep's)
#
# The sweep (`node-report tolsweep RUN`) evaluates the run's checkpoint.pt at every tolerance without retraining
# and writes RUN/tolsweep*/ (never the run's own files). TOLSWEEP_ARGS adds options (e.g. "--batch 256 --device cuda").
# Switches (FULL, STEPS, LAUNCHER, JOBS, OUT): scripts/_paper.sh.
source "$(dirname "$0")/_paper.sh"

if [[ -z "${RUN:-}" ]]; then
    sweep "$OUT/runs" experiment=mnist_odenet "$@"
    RUN=$OUT/runs/0
fi
read -r -a TOLSWEEP_EXTRA <<< "${TOLSWEEP_ARGS:-}"
node-report tolsweep "$RUN" ${TOLS:+--tols "$TOLS"} "${TOLSWEEP_EXTRA[@]}" || STATUS=1
report "$RUN"
exit $STATUS
