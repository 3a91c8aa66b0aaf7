#!/usr/bin/env bash
# node-run as `pip install .` gives it to a user: build the wheel from this checkout, install it (not editable)
# into a fresh virtual environment and, from a folder outside the checkout, run every family for a few steps,
# node-report on those runs, node-eval on one, node-bench reference (every family, 2 steps) and each tool's --help.
# Any error ends it with a non-zero exit.
#
#   scripts/wheel_check.sh              # .ci/run calls it; a few minutes on 2 cores (most of it: pip installing torch)
#   KEEP=1 scripts/wheel_check.sh       # keep the temporary folder (wheel, venv, runs) and say where it is
#
# Needs what `pip install .` needs: PyPI or the pip index you configured (the build backend, the dependencies).
# The MNIST run uses the suite's tiny fake MNIST (tests/mnist_fake.py, made by the installed package): no download.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
tmp="$(mktemp -d -t node-run-wheel-XXXXXX)"
if [ "${KEEP:-0}" = 1 ]; then trap 'echo "wheel_check: kept $tmp"' EXIT; else trap 'rm -rf "$tmp"' EXIT; fi
say() { echo "wheel_check: $*"; }
fail() { echo "wheel_check: FAILED: $*" >&2; exit 1; }

# 1. The wheel, built the way `pip install .` builds it, from a copy of the checkout's files (tracked and untracked,
#    not ignored), so that no build/ folder left in the checkout plays a part.
mkdir "$tmp/src" "$tmp/dist" "$tmp/work"
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$tmp/src"
else
    cp -r "$repo/." "$tmp/src" && rm -rf "$tmp/src/build"
fi
"$python" -m pip wheel --quiet --no-deps -w "$tmp/dist" "$tmp/src"
wheel="$(ls "$tmp"/dist/node_run-*.whl)"
say "built $(basename "$wheel")"

# 2. A fresh virtual environment with the wheel and its dependencies; nothing of the checkout on the path.
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --quiet "$wheel"   # -qq: errors only
export PATH="$tmp/venv/bin:$PATH" OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
unset PYTHONPATH
cd "$tmp/work"
python - <<'EOF' || fail "the installed package is not the wheel's, or one of its modules does not import"
import importlib, pkgutil, sys, node_cli
assert sys.prefix in node_cli.__file__, f"node_cli comes from {node_cli.__file__}, not the fresh venv"
names = [m.name for m in pkgutil.walk_packages(node_cli.__path__, "node_cli.")]
for name in names:
    importlib.import_module(name)
print(f"wheel_check: {len(names)} modules import from {node_cli.__path__[0]}")
EOF

# 3. One tiny run of every family, each with the trainer's budget cut to a few steps.
mnist="$(python "$repo/tests/mnist_fake.py" "$tmp/mnist")"
declare -A runs=(
    [mnist]="experiment=mnist_odenet dataset.root=$mnist dataset.download=false trainer.batch_size=32 solver.rtol=1e-1 solver.atol=1e-1"
    [spirals]="experiment=spiral_latent_ode dataset.n_spirals=24 dataset.n_obs=12 trainer.batch_size=8"
    [flows]="experiment=cnf_moons model.width=4 trainer.batch_size=64 dataset.test_size=100 model.eval_tol=1e-3"
    [ffjord]="experiment=ffjord_pinwheel trainer.batch_size=64 dataset.test_size=100"
    [dynamics]="experiment=dynamics_spiral dataset.n_points=120"
)
for family in mnist spirals flows ffjord dynamics; do
    # shellcheck disable=SC2086  # the overrides are words
    node-run ${runs[$family]} trainer=quick trainer.max_steps=2 trainer.eval_every=null trainer.progress=false \
        "hydra.run.dir=runs/$family" > "$family.log" 2>&1 || { tail -30 "$family.log" >&2; fail "node-run ($family)"; }
    python -c "import json, sys; s = json.load(open('runs/$family/summary.json'))
assert s['status'] == 'ok' and s['steps'] == 2 and s['git_commit'] is None, (s['status'], s['steps'], s['error'])
print('wheel_check: node-run $family ok,', s['experiment'], 'objective', s['objective'], '=', s['objective_value'])" \
        || fail "the $family run's summary"
done

# 4. The tools, on those runs.
node-report runs --out report > report.log 2>&1 || { tail -30 report.log >&2; fail "node-report"; }
[ -s report/report.md ] || fail "node-report wrote no report.md"
say "node-report ok: $(ls report | wc -l) files"
node-eval runs/flows solver.rtol=1e-4 solver.atol=1e-4 > eval.log 2>&1 || { tail -30 eval.log >&2; fail "node-eval"; }
ls runs/flows/eval/*/eval.json > /dev/null || fail "node-eval wrote no eval.json"
say "node-eval ok"
# node-bench reference: node-run against each family's plain torchdiffeq loop, 2 timed steps each (MNIST on the fake)
OMP_NUM_THREADS=1 node-bench reference --reps 2 --warmup-steps 1 --field-reps 2 --data-root "$mnist" --out bench \
    > bench.log 2>&1 || { tail -30 bench.log >&2; fail "node-bench reference"; }
python -c "import csv; from node_cli.bench.reference import loops
rows, wanted = list(csv.DictReader(open('bench/reference.csv'))), sum(len(rows_of) for rows_of in loops().values())
assert len(rows) == wanted, (len(rows), wanted)
assert all(float(r['node_sec_per_step']) > 0 and float(r['ref_sec_per_step']) > 0 for r in rows), rows
print('wheel_check: node-bench reference ok:', ', '.join(r['family'] for r in rows))" || fail "node-bench reference.csv"
for tool in node-run node-bench node-report node-eval node-data; do
    "$tool" --help > help.log 2>&1 || { tail -30 help.log >&2; fail "$tool --help"; }
done
say "every tool's --help ok"
say "passed"
