#!/usr/bin/env bash
# The memory column of Table 1, measured: activation bytes of one training step against depth, for ODE-Net with
# the adjoint and RK-Net (backprop through dopri5) as the tolerance sets the number of evaluations (NFE), and for
# ResNet as model.blocks sets the number of layers. Paper: O(1), O(L~) and O(L).
#
#   scripts/memory.sh                  # trainer=quick (each run measures memory after training)
#   STEPS=20 scripts/memory.sh         # memory does not need a trained model: a few steps are enough
#   TOLS=1e-1,1e-3,1e-5 BLOCKS=1,4,16 scripts/memory.sh
#
# Switches (FULL, STEPS, LAUNCHER, JOBS, OUT): scripts/_paper.sh.
source "$(dirname "$0")/_paper.sh"

TOLS=${TOLS:-1e-1,1e-2,1e-3,1e-4}
BLOCKS=${BLOCKS:-1,2,4,6,8}
# solver.atol follows solver.rtol (one tolerance per run)
sweep "$OUT/runs/solvers" experiment=mnist_odenet,mnist_rknet "solver.rtol=$TOLS" 'solver.atol=${solver.rtol}' "$@"
sweep "$OUT/runs/resnet" experiment=mnist_resnet "model.blocks=$BLOCKS" "$@"
report "$OUT/runs"
exit $STATUS
