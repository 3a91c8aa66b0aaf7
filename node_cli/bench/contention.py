"""`node-bench contention`: one family's training step, idle and beside N busy processes, under each thread policy.

Why: on a shared CPU, OpenMP threads that spin while they wait for a descheduled sibling can make a step many
times slower. This measures it, so that node-run's defaults (core/threads.py) are chosen, and kept, by
measurement.

How: every (family, policy, load) cell is a fresh process (`python -m node_cli.bench.contention SPEC`), because
libgomp reads its wait settings only when torch loads; the cell's environment is the policy's, with the user's own
OpenMP variables removed. In the cell: compose the family's experiment, set the threads, build the task, then W
untimed and S timed training steps (loss, backward, optimizer step: the body of core/train.py's loop); seconds per
step is the median of the timed steps. A loaded cell runs beside N busy processes (`while True: pass`) started just
before it and killed just after it, in a `finally`; each also ends by itself after the cell's time limit, so none
is left behind even if this process is killed. Idle and loaded cells of a policy run back to back.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time



def specs() -> dict:
    """family -> its ContentionSpec (the experiment whose training step is timed), from the families' registry."""
    from .. import families

    return {f.name: f.contention for f in families.every() if f.contention is not None}


def default_families() -> tuple[str, ...]:
    return tuple(name for name, spec in specs().items() if spec.default)


# policy -> (threads: "all" = every core, a number, or "auto" = node-run's own choice; extra environment, or None
# for node-run's own wait setting: core/threads.py in an environment where the user set nothing)
POLICIES = {
    "all": ("all", {}),                                          # every core, libgomp's default spin
    "one": (1, {}),                                              # what OMP_NUM_THREADS=1 gives
    "all-passive": ("all", {"OMP_WAIT_POLICY": "PASSIVE"}),      # waiting threads sleep at once
    "all-spin1000": ("all", {"GOMP_SPINCOUNT": "1000"}),         # spin briefly, then sleep
    "all-spin10000": ("all", {"GOMP_SPINCOUNT": "10000"}),
    "all-spin30000": ("all", {"GOMP_SPINCOUNT": "30000"}),
    "all-spin100000": ("all", {"GOMP_SPINCOUNT": "100000"}),
    "auto": ("auto", None),                                      # what node-run does when the user sets nothing
}
DEFAULT_POLICIES = ("all", "one", "all-passive", "all-spin1000", "all-spin10000", "auto")
# removed from every cell's environment: the policy alone decides them
CLEARED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "KMP_BLOCKTIME")
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


# ------------------------------------------------------------------------------------------------ the parent
def cell_environment(policy: str, cores: int) -> tuple[dict, object]:
    """(environment, threads setting) of a policy's cell: the user's OpenMP variables removed, the policy's added."""
    from ..core import threads

    count, extra = POLICIES[policy]
    env = {k: v for k, v in os.environ.items() if k not in CLEARED and k != threads.MARK}
    env["PYTHONUNBUFFERED"] = "1"
    if extra is None:   # node-run's own choice, exactly as its entry points make it
        threads.prepare_environment(env)
        return env, "auto"
    env.update(extra)
    n = cores if count == "all" else count
    env["OMP_NUM_THREADS"] = str(n)   # as a user would set it, so libgomp starts with that many
    return env, n


def start_busy(n: int, seconds: float) -> list:
    """n busy processes, each ending by itself after `seconds` whatever happens to this one."""
    return [subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=seconds)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]


def stop_busy(procs: list) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def run_cell(spec: dict, env: dict, timeout: float) -> dict:
    """One cell in a fresh process; its result, or {'error': ...}. subprocess.run kills it on a time-out."""
    try:
        done = subprocess.run([sys.executable, "-m", "node_cli.bench.contention", json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:g} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        err = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return dict(error=err[:300])
    return json.loads(lines[-1])


def measure(args, log) -> tuple[list[dict], list[dict], list[int]]:
    """(table rows, every cell's result, the PIDs of every busy process started)."""
    from ..core.threads import every_core

    cores = every_core()
    cells, rows, pids = [], [], []
    for family in args.families:
        timed = specs()[family]
        experiment = timed.experiment
        overrides = [f"experiment={experiment}", "device=cpu", "trainer.progress=false", f"seed={args.seed}",
                     *timed.overrides, *timed.from_args(args)]
        for policy in args.policies:
            env, setting = cell_environment(policy, cores)
            spec = dict(family=family, overrides=overrides, threads=setting, steps=args.steps, warmup=args.warmup)
            result = {}
            for load in (0, args.load):
                procs = start_busy(load, args.cell_timeout + 30)
                pids += [p.pid for p in procs]
                try:
                    tic = time.perf_counter()
                    cell = run_cell(spec, env, args.cell_timeout)
                finally:
                    stop_busy(procs)
                cell.update(family=family, policy=policy, load=load, cell_seconds=time.perf_counter() - tic,
                            env={k: env[k] for k in CLEARED if k in env})
                cells.append(cell)
                result[load] = cell
                log(f"  contention {family} {policy} beside {load} busy: "
                    + (f"{cell['sec_per_step']:.3f} s/step, {cell['threads']} threads" if "error" not in cell
                       else cell["error"]))
            idle, loaded = result[0], result[args.load]
            wait = idle.get("omp_wait") or loaded.get("omp_wait") or {}
            rows.append(dict(family=family, experiment=experiment, policy=policy,
                             threads=idle.get("threads", loaded.get("threads")),
                             wait=", ".join(f"{k}={v}" for k, v in wait.items() if k != "source" and v) or "default",
                             idle=idle.get("sec_per_step"), loaded=loaded.get("sec_per_step"),
                             error=idle.get("error") or loaded.get("error")))
    for family in args.families:   # ratios, once every policy of the family is measured
        mine = [r for r in rows if r["family"] == family]
        best = min((r["idle"] for r in mine if r["idle"]), default=None)
        for r in mine:
            r["slowdown"] = r["loaded"] / r["idle"] if r["idle"] and r["loaded"] else None
            r["idle_vs_best"] = r["idle"] / best if r["idle"] and best else None
            r["loaded_vs_best"] = r["loaded"] / best if r["loaded"] and best else None
    return rows, cells, pids


COLUMNS = [("family", "family", str), ("policy", "policy", str), ("threads", "threads", "{}"),
           ("wait", "OpenMP wait", str), ("idle", "idle s/step", "{:.3f}"), ("loaded", "loaded s/step", "{:.3f}"),
           ("slowdown", "loaded / idle", "{:.2f}x"), ("idle_vs_best", "idle / best idle", "{:.2f}x"),
           ("loaded_vs_best", "loaded / best idle", "{:.2f}x"), ("error", "error", str)]


def header(args, env_start: dict, env_end: dict) -> str:
    return (f"## Contention: seconds per training step, idle and beside {args.load} busy processes\n"
            f"`{args.line}` on {env_start['machine']} ({env_start['cores']} cores; load average "
            f"{_load(env_start)} at the start, {_load(env_end)} at the end). Each cell is a fresh process with the "
            f"policy's environment (the user's OpenMP variables removed): {args.warmup} warm-up then {args.steps} "
            f"timed training steps (loss, backward, optimizer step), median seconds per step, on the CPU. Loaded: "
            f"beside {args.load} `while True: pass` processes started before the cell and killed after it. "
            f"threads: torch.get_num_threads() inside the cell; `auto`: node-run's own policy (core/threads.py) "
            f"when the user sets nothing. Ratios: loaded / idle of the same policy, and each against the family's "
            f"best idle time. Families: " + ", ".join(f"{f} = {specs()[f].experiment}" for f in args.families) + ".")


def _load(env: dict) -> str:
    la = env.get("load_average")
    return "/".join(f"{v:.1f}" for v in la) if la else "?"


def run(args, out, log) -> str:
    """Measure, write contention.md / .csv / .json under `out`, return the Markdown."""
    import torch

    from ..core.clock import environment
    from ..core.tables import write_table

    env_start = environment(args.line, torch.device("cpu"))
    rows, cells, pids = measure(args, log)
    env_end = environment(args.line, torch.device("cpu"))
    text = write_table(out, "contention", rows, COLUMNS, header(args, env_start, env_end))
    with open(out / "contention.json", "w") as f:
        json.dump(dict(environment=env_start, load_average_end=env_end["load_average"], rows=rows, cells=cells,
                       busy_pids=pids, steps=args.steps, warmup=args.warmup, load=args.load), f, indent=2)
    return text


# -------------------------------------------------------------------------------------------------- the cell
def cell(spec: dict) -> dict:
    """Time `steps` training steps of the family's experiment after `warmup` untimed ones (this process's
    environment is the policy's: see run_cell)."""
    import torch

    from .. import families
    from ..core import threads
    from ..core.train import make_optimizer
    from ..experiment import configure

    cfg = configure(spec["overrides"])
    used = threads.apply(spec["threads"], families.get(cfg.task).threads)
    device = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    task = families.build(cfg, device)
    optimizer = make_optimizer(cfg.trainer, task.model.parameters())

    def batches():
        epoch = 0
        while True:
            yield from task.train_batches(epoch)
            epoch += 1

    times, stream = [], batches()
    for i in range(spec["warmup"] + spec["steps"]):
        tic = time.perf_counter()
        loss = task.loss(next(stream))   # the batch included, as in node-bench step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - tic)
    return dict(sec_per_step=statistics.median(times), mean_sec_per_step=statistics.fmean(times), times=times,
                **used)


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    try:
        print(json.dumps(cell(json.loads(sys.argv[1]))), flush=True)
    except Exception as exc:  # noqa: BLE001 - one line back to the parent
        from ..core.checks import one_line

        print(f"{type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)
