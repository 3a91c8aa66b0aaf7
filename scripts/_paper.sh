# Sourced by the paper scripts (table1.sh, figure3.sh, memory.sh, table2.sh, figures4_6.sh, reproduce_all.sh):
# the budget, the launcher and the output folder, from environment switches.
#
#   FULL=1         each experiment's full paper budget; default trainer=quick (a CPU budget of minutes per run)
#   SHORT=1        trainer=short: 3 epochs with a cosine schedule (MNIST: about an hour for Table 1 on a 2-core CPU)
#   STEPS=N        cap every run at N optimizer steps (trainer.max_steps=N), e.g. STEPS=100 to check the machinery
#   SEEDS=0,1,2    model seeds swept for every run (seed=0,1,2); node-report then averages them and compares the
#                  models seed-paired with 95% intervals (default: the config's one seed)
#   LAUNCHER=...   joblib (default): sweep points in parallel on this machine, JOBS at a time (Hydra joblib launcher)
#                  slurm: one SLURM job per sweep point (Hydra submitit launcher, conf/hydra/launcher/slurm.yaml;
#                         cluster settings in SLURM_ARGS, e.g. SLURM_ARGS="hydra.launcher.partition=gpu")
#                  basic: one after another in this process (Hydra's default launcher)
#   JOBS=N         parallel jobs for joblib (default: 2); each gets OMP_NUM_THREADS = cores / JOBS unless set
#   OUT=DIR        runs and report folder (default outputs/paper/<script>/<time>)
# Arguments after the script name are extra overrides for every run (e.g. seed=1 device=cuda).
set -euo pipefail

SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NAME=$(basename "$0" .sh)
OUT=${OUT:-outputs/paper/$NAME/$(date +%Y-%m-%d_%H-%M-%S)}
LAUNCHER=${LAUNCHER:-joblib}
JOBS=${JOBS:-2}
STATUS=0

BUDGET=()
if [[ "${FULL:-0}" == 1 && "${SHORT:-0}" == 1 ]]; then
    echo "$NAME: FULL=1 and SHORT=1 contradict each other; choose one" >&2
    exit 2
elif [[ "${SHORT:-0}" == 1 ]]; then
    BUDGET+=(trainer=short)
elif [[ "${FULL:-0}" != 1 ]]; then
    BUDGET+=(trainer=quick)
fi
[[ -z "${STEPS:-}" ]] || BUDGET+=("trainer.max_steps=$STEPS")
SEED=()   # swept first, so that whole seeds finish one after another (a cut-short sweep leaves whole seeds)
[[ -z "${SEEDS:-}" ]] || SEED=("seed=$SEEDS")
BUDGET+=(trainer.progress=false)

case "$LAUNCHER" in
    joblib)
        LAUNCH=(hydra/launcher=joblib "hydra.launcher.n_jobs=$JOBS")
        CORES=$(nproc 2>/dev/null || echo 1)
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))} ;;
    slurm)
        read -r -a SLURM_EXTRA <<< "${SLURM_ARGS:-}"
        LAUNCH=(hydra/launcher=slurm "${SLURM_EXTRA[@]}") ;;
    basic)
        LAUNCH=() ;;
    *)
        echo "$NAME: unknown LAUNCHER=$LAUNCHER; accepted: joblib, slurm, basic" >&2
        exit 2 ;;
esac

# sweep DIR OVERRIDES...: one Hydra multirun into DIR; a failed run does not stop the script (the report lists it).
sweep() {
    local dir=$1
    shift
    echo "$NAME: node-run -m $* hydra.sweep.dir=$dir" >&2
    node-run -m "${SEED[@]}" "$@" "${BUDGET[@]}" "${LAUNCH[@]}" "hydra.sweep.dir=$dir" || {
        local rc=$?
        echo "$NAME: some runs in $dir did not finish ok (exit $rc); the report lists them" >&2
        STATUS=1
    }
}

# report DIR...: the paper's tables and figures from every run under DIR... into $OUT/report.
report() {
    node-report "$@" --out "$OUT/report" --force || STATUS=1
    echo "$NAME: report in $OUT/report/report.md" >&2
}
