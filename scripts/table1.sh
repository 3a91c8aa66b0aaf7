#!/usr/bin/env bash
# Table 1 of the paper (MNIST): test error, parameters, memory, time and NFE of MLP, ResNet, RK-Net and ODE-Net.
#
#   scripts/table1.sh                  # trainer=quick: 200 steps per model (minutes on a CPU)
#   SHORT=1 scripts/table1.sh          # trainer=short: 3 epochs, cosine schedule (about an hour on a 2-core CPU)
#   FULL=1 scripts/table1.sh           # the paper's schedule: 160 epochs (a GPU: LAUNCHER=slurm or device=cuda)
#   STEPS=100 scripts/table1.sh        # cap the steps, to check the machinery
#   SEEDS=0,1,2 SHORT=1 scripts/table1.sh   # 3 seeds per model: the table averages them, and node-report says
#                                            # whether ODE-Net and RK-Net are within 0.3 points of the ResNet
#                                            # (paired by seed, 95% intervals; about 4 core-hours on a CPU)
#   scripts/table1.sh device=cuda      # extra overrides for every run
#
# Switches (FULL, SHORT, STEPS, SEEDS, LAUNCHER, JOBS, OUT): scripts/_paper.sh. Runs go to $OUT/runs, the report (report.md,
# table1.csv, ...) to $OUT/report.
source "$(dirname "$0")/_paper.sh"

sweep "$OUT/runs" experiment=mnist_mlp,mnist_resnet,mnist_rknet,mnist_odenet "$@"
report "$OUT/runs"
exit $STATUS
