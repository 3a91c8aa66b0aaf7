#!/usr/bin/env bash
# Table 2 of the paper: predictive RMSE of the RNN, the RNN with time gaps and the latent ODE at 30, 50 and 100
# observations per spiral (the 3x3 grid, full budget: trainer=spirals), then the table from the runs' files.
#
#   scripts/spirals_table.sh                      # run the 9 jobs into outputs/multirun/spirals_table/<time>
#   scripts/spirals_table.sh seed=1               # extra overrides go to every job
#   scripts/spirals_table.sh --print DIR          # only print the table of runs already under DIR
#
# Jobs run one after another with OMP_NUM_THREADS=1 (these models are tiny: one thread is much faster than
# several fighting over a shared CPU). The table reads each run's .hydra/config.yaml and summary.json, never
# folder names.
set -euo pipefail

if [[ "${1:-}" == "--print" ]]; then
    DIR=${2:?usage: $0 --print DIR}
else
    DIR=outputs/multirun/spirals_table/$(date +%Y-%m-%d_%H-%M-%S)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    status=0
    node-run -m experiment=spiral_latent_ode,spiral_rnn,spiral_rnn_dt dataset.n_obs=30,50,100 \
        trainer.progress=false hydra.sweep.dir="$DIR" "$@" || status=$?
    [[ $status -eq 0 ]] || echo "spirals_table: node-run exited with $status; tabulating what finished" >&2
fi

python - "$DIR" <<'EOF'
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

PAPER = {"rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813}, "latent_ode": {30: 0.1642, 50: 0.1502, 100: 0.1346}}
NAMES = {"rnn": "RNN", "rnn_dt": "RNN + time gaps", "latent_ode": "Latent ODE"}
runs = {}
for summary_path in sorted(Path(sys.argv[1]).rglob("summary.json")):
    cfg = OmegaConf.load(summary_path.parent / ".hydra" / "config.yaml")
    summary = json.loads(summary_path.read_text())
    runs[(cfg.model.name, int(cfg.dataset.n_obs))] = (cfg, summary, summary_path.parent)
if not runs:
    sys.exit(f"spirals_table: no summary.json under {sys.argv[1]}")
cols = sorted({n for _, n in runs})
points = {int(cfg.dataset.n_points) for cfg, _, _ in runs.values()}
head = " | ".join(f"{n}/{'/'.join(map(str, sorted(points)))}" for n in cols)


def cell(key, fmt):
    cfg, s, _ = runs[key]
    return fmt(s) if s.get("status") == "ok" else s.get("status", "?")


print(f"Predictive RMSE on the test split (extrapolation), from {sys.argv[1]}\n")
print(f"| model | {head} |")
print("|---" * (len(cols) + 1) + "|")
for model in ("rnn", "rnn_dt", "latent_ode"):
    if any(m == model for m, _ in runs):
        row = [cell((model, n), lambda s: f"{s['test_rmse']:.4f}") if (model, n) in runs else "-" for n in cols]
        print(f"| {NAMES[model]} | " + " | ".join(row) + " |")
    if model in PAPER:
        print(f"| {NAMES[model]} (paper) | " + " | ".join(f"{PAPER[model].get(n, '-')}" for n in cols) + " |")

print("\nPer run: test metrics, NFE per training step (forward / backward), time")
print("| model | n_obs | test_rmse | clockwise / counter-cl. | median | test_recon_rmse | test_elbo / test_nll "
      "| NFE-F / NFE-B | s/step | wall s | solver |")
print("|---" * 11 + "|")
for (model, n), (cfg, s, path) in sorted(runs.items()):
    if s.get("status") != "ok":
        print(f"| {NAMES[model]} | {n} | {s.get('status')}: {s.get('error')} |" + " |" * 8)
        continue
    like = f"ELBO {s['test_elbo']:.2f}" if "test_elbo" in s else f"NLL {s['test_nll']:.2f}"
    solver = (f"{cfg.solver.method} rtol {cfg.solver.rtol:g} atol {cfg.solver.atol:g}"
              f"{' adjoint' if cfg.solver.adjoint else ''}; error vs rtol 1e-7: {s['extrap_solver_error']:.4f}"
              if model == "latent_ode" else "-")
    print(f"| {NAMES[model]} | {n} | {s['test_rmse']:.4f} | {s['test_rmse_clockwise']:.3f} / "
          f"{s['test_rmse_counter_clockwise']:.3f} | {s['test_rmse_median']:.3f} | {s['test_recon_rmse']:.4f} | {like} | "
          f"{s['nfe_forward']:.1f} / {s['nfe_backward']:.1f} | {s['sec_per_step']:.3f} | {s['wall_time']:.0f} | {solver} |")
EOF
