"""The thread policy: how many torch threads a run uses, and how long idle OpenMP threads spin before they sleep.

Why: torch's OpenMP (GNU libgomp) threads spin while they wait for a sibling. On a shared CPU the
sibling is often descheduled, so the spinning eats the core it needs: a 2-thread MNIST step beside two busy
processes ran up to 12x slower than idle. A bounded spin (`GOMP_SPINCOUNT`) keeps the idle speed and removes most
of that loss; tiny models (spirals, flows, dynamics) are fastest on one thread anyway. `node-bench contention`
measures both.

Two parts, because libgomp reads its environment only once, when torch is loaded:
- `prepare_environment()`: the wait behaviour, put into os.environ by each console entry point before anything
  imports torch (a child process, such as a joblib worker, inherits it);
- `apply(setting, family_auto)`: the thread count (`torch.set_num_threads`) at the start of a run, once its
  family is known; returns what the summary and the log record.

The user always wins: an `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` already in the environment is left alone (and none is
added), an explicit `threads=N` is used as given, and with `threads=auto` an `OMP_NUM_THREADS` in the environment
is used as given. Only when the user said nothing does the family's own preference apply, and then never with more
threads than the CPUs the process may use (`cpus()`: its affinity, SLURM's allocation, its cgroup quota; a 1-CPU
SLURM job on a 2-core node would otherwise run 2 threads on 1 CPU).

This module must not import torch at its top: the entry points import it before torch is loaded.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# Spin this many times, then sleep (libgomp's default spins 300000 times, far longer with OMP_WAIT_POLICY=ACTIVE).
# Chosen with `node-bench contention` on the idle 2-core CPU (docs/tools/bench.md): beside two busy processes the
# 2-thread MNIST step stayed at about 2.5x its idle time in every run (the default spin: 3.4-7.8x), at an idle cost
# of 3-17% against the default spin; tiny models run one thread (their auto count), where the spin is moot.
SPINCOUNT = "1000"
MARK = "NODE_RUN_SET_ENV"   # names the variables node-run itself put there (children inherit it with them)


def wait_environment(env) -> dict:
    """What node-run adds to the environment `env` (a mapping): GOMP_SPINCOUNT, unless the user set either
    wait variable (a user's OMP_WAIT_POLICY=ACTIVE must not be shortened by our spin count)."""
    if any(k in env for k in WAIT_VARS):
        return {}
    return {"GOMP_SPINCOUNT": SPINCOUNT}


def prepare_environment(env=None) -> dict:
    """Put node-run's wait behaviour into `env` (os.environ by default) if torch is not loaded yet; returns what
    it added. After torch has loaded it would be a lie (libgomp has read its settings), so it adds nothing."""
    env = os.environ if env is None else env
    if "torch" in sys.modules and env is os.environ:
        return {}
    added = wait_environment(env)
    if added:
        env.update(added)
        env[MARK] = ",".join(sorted(added))
    return added


def omp_threads(env) -> int | None:
    """The thread count an `OMP_NUM_THREADS` in `env` asks for (its first number: libgomp also takes lists such as
    "4,2" for nested levels), or None when it is unset or not a positive number."""
    value = str(env.get("OMP_NUM_THREADS", "")).split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def decide(setting, env, family_auto: int | None, cores: int, cores_from: str = "CPU affinity") -> tuple[int, str]:
    """(threads, where the number comes from) for the `threads` key `setting` ("auto" or a positive integer), the
    environment `env`, the family's preference `family_auto` (None: every core), the number of CPUs a run may use
    and what said so (`cpus()`). Pure: the tests call it with dict environments."""
    if setting != "auto":
        return int(setting), "threads key"
    user = omp_threads(env)
    if user is not None:
        return user, "environment (OMP_NUM_THREADS)"
    allowed = f"{cores} CPU{'' if cores == 1 else 's'} allowed, by {cores_from}"
    if family_auto is None:
        return cores, f"auto policy (the family's: every core; {allowed})"
    if family_auto > cores:
        return cores, f"auto policy (the family's: {family_auto}; {allowed})"
    return family_auto, f"auto policy (the family's: {family_auto})"


def cpus(affinity: int, env, quota: float | None) -> tuple[int, str]:
    """(the CPUs a run may use, what said so): the smallest of the scheduler's allocation in `env`
    (SLURM_CPUS_PER_TASK; else, for a job of one task, SLURM_CPUS_ON_NODE), the cgroup CPU quota `quota` (in CPUs,
    rounded up as joblib does: 1.5 CPUs of time keep 2 threads busy 75% of it) and the CPU affinity `affinity` (the
    CPUs the process may run on: taskset, a cpuset). On a tie the first of that order names it. Pure."""
    found = []
    for key in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = str(env.get(key, "")).strip()
        applies = key == "SLURM_CPUS_PER_TASK" or env.get("SLURM_NTASKS", "1") == "1"   # ON_NODE: one task only
        if value.isdigit() and int(value) > 0 and applies:
            found.append((int(value), f"{key}={value}"))
            break
    if quota is not None and quota > 0:
        found.append((max(1, math.ceil(quota)), f"cgroup CPU quota {quota:g}"))
    found.append((max(1, affinity), "CPU affinity"))
    return min(found, key=lambda f: f[0])


def cgroup_quota(root="/sys/fs/cgroup", proc="/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (quota / period; the smallest along its path, since a limit on
    a parent applies to its children), or None where there is none or nothing can be read. cgroup v2: `cpu.max`
    ("max 100000" or "150000 100000"); v1: `cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`."""
    root, found = Path(root), []
    try:
        lines = Path(proc).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":                                    # v2: one hierarchy at the root
            bases, files = [root], ("cpu.max",)
        elif "cpu" in controllers.split(","):                   # v1: the cpu controller's own hierarchy
            bases, files = [root / controllers, root / "cpu"], ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        parts = [p for p in path.strip().split("/") if p]
        for base in bases:
            for depth in range(len(parts), -1, -1):   # the process's own cgroup, then each parent (in a container
                folder = base.joinpath(*parts[:depth])   # its own path is often not mounted: the root is)
                try:
                    values = " ".join(folder.joinpath(f).read_text() for f in files).split()
                    quota = None if values[0] in ("max", "-1") else int(values[0])
                    period = int(values[1])
                except (OSError, IndexError, ValueError):
                    continue
                if quota is not None and quota > 0 and period > 0:
                    found.append(quota / period)
    return min(found) if found else None


def wait_record(env) -> dict:
    """The wait settings libgomp saw, and who set them: the user, node-run, or nobody (libgomp's defaults)."""
    values = {k: env.get(k) for k in WAIT_VARS}
    ours = set(filter(None, str(env.get(MARK, "")).split(",")))
    set_vars = {k for k, v in values.items() if v is not None}
    if not set_vars:
        source = "libgomp defaults (nothing set)"
    elif set_vars <= ours:
        source = "node-run policy"
    else:
        source = "user environment"
    return dict(values, source=source)


def available_cpus() -> tuple[int, str]:
    """(the CPUs this process may use, what said so), read from this process: its CPU affinity (a taskset or a
    container's cpuset counts, where os.cpu_count() would see the whole host), SLURM's environment, its cgroup."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # macOS has no sched_getaffinity
        affinity = os.cpu_count() or 1
    return cpus(affinity, os.environ, cgroup_quota())


def every_core() -> int:
    """The number of CPUs this process may use (available_cpus())."""
    return available_cpus()[0]


def apply(setting="auto", family_auto: int | None = None) -> dict:
    """Set torch's thread count for a run; returns the summary's fields: `threads` (what torch then reports),
    `threads_from`, `omp_wait` (the wait variables and their source)."""
    import torch

    n, source = decide(setting, os.environ, family_auto, *available_cpus())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return dict(threads=torch.get_num_threads(), threads_from=source, omp_wait=wait_record(os.environ))


def describe(record: dict) -> str:
    """One line for the log: `threads 2 (auto policy ...); OpenMP wait GOMP_SPINCOUNT=1000 (node-run policy)`."""
    wait = record["omp_wait"]
    values = ", ".join(f"{k}={v}" for k, v in wait.items() if k != "source" and v is not None) or "default"
    return f"threads {record['threads']} ({record['threads_from']}); OpenMP wait {values} ({wait['source']})"
