#!/usr/bin/env bash
# The benchmark runs quoted in docs/tools/bench.md, one after another, into one folder:
#
#   scripts/bench.sh                 # outputs/bench/<time>/{default,ablation,families}
#   scripts/bench.sh --threads 2     # extra flags go to every node-bench call
#
# default : `node-bench` (training step against the reference-style baseline, then memory scaling)
# ablation: ODE-Net step with each speed option on its own (variants), to see what pays
# families: spirals and flows, seconds to reach their quick config's accuracy against the reference tolerance
# Runs are niced: the CPU is shared. Ratios are measured inside one process with the runners alternated.
set -euo pipefail
OUT=outputs/bench/$(date +%Y-%m-%d_%H-%M-%S)
nice -n 10 node-bench all --out "$OUT/default" "$@"
nice -n 10 node-bench step --models odenet --variants plain_rk,seminorm,channels_last,compile --out "$OUT/ablation" "$@"
nice -n 10 node-bench families --out "$OUT/families" "$@"
echo "bench.sh: results in $OUT"
