"""The thread policy (core/threads.py): the user's own settings always win, the wait setting reaches libgomp before
torch loads, and a run's summary says what it used."""
import ast
import json
import os
import subprocess
import sys
import tempfile
import re
from pathlib import Path

import pytest

from node_cli.core import threads

REPO = Path(__file__).resolve().parents[2]
FLOW = ["experiment=nf_moons", "trainer=quick", "model.depth=2", "dataset.test_size=100", "trainer.progress=false",
        "trainer.max_steps=2"]


# ------------------------------------------------------------------------------ the decision, on dict environments
@pytest.mark.parametrize("setting, env, family, cores, expected", [
    ("auto", {}, None, 2, (2, "auto policy (the family's: every core; 2 CPUs allowed, by CPU affinity)")),  # MNIST
    ("auto", {}, 1, 2, (1, "auto policy (the family's: 1)")),                       # spirals, flows, dynamics
    ("auto", {}, 4, 2, (2, "auto policy (the family's: 4; 2 CPUs allowed, by CPU affinity)")),  # never past the CPUs
    ("auto", {"OMP_NUM_THREADS": "1"}, None, 2, (1, "environment (OMP_NUM_THREADS)")),
    ("auto", {"OMP_NUM_THREADS": "3"}, 1, 2, (3, "environment (OMP_NUM_THREADS)")),   # even past the cores
    ("auto", {"OMP_NUM_THREADS": "4,2"}, 1, 8, (4, "environment (OMP_NUM_THREADS)")),  # nested list: first
    ("auto", {"OMP_NUM_THREADS": "lots"}, 1, 2, (1, "auto policy (the family's: 1)")),      # not a number: ignored
    (3, {}, 1, 2, (3, "threads key")),
    (2, {"OMP_NUM_THREADS": "1"}, 1, 2, (2, "threads key")),                        # the command line is explicit
    (1, {"OMP_NUM_THREADS": "2"}, None, 2, (1, "threads key")),
])
def test_decide_never_overrides_the_user(setting, env, family, cores, expected):
    before = dict(env)
    assert threads.decide(setting, env, family, cores) == expected
    assert env == before


# ------------------------------------------------------------------- the CPUs a run may use, from faked inputs
@pytest.mark.parametrize("affinity, env, quota, expected", [
    (2, {}, None, (2, "CPU affinity")),                                        # nothing else says anything
    (2, {"SLURM_CPUS_PER_TASK": "1"}, None, (1, "SLURM_CPUS_PER_TASK=1")),    # a 1-CPU job on 2 cores
    (8, {"SLURM_CPUS_PER_TASK": "4", "SLURM_CPUS_ON_NODE": "8"}, None, (4, "SLURM_CPUS_PER_TASK=4")),
    (8, {"SLURM_CPUS_ON_NODE": "3"}, None, (3, "SLURM_CPUS_ON_NODE=3")),       # one task: the node's allocation
    (8, {"SLURM_CPUS_ON_NODE": "4", "SLURM_NTASKS": "2"}, None, (8, "CPU affinity")),  # shared by 2 tasks: unknown
    (2, {"SLURM_CPUS_PER_TASK": "2"}, None, (2, "SLURM_CPUS_PER_TASK=2")),    # a tie names the scheduler
    (4, {"SLURM_CPUS_PER_TASK": "8"}, None, (4, "CPU affinity")),             # bound to fewer than allocated
    (4, {"SLURM_CPUS_PER_TASK": "x"}, None, (4, "CPU affinity")),             # not a number: ignored
    (8, {}, 1.5, (2, "cgroup CPU quota 1.5")),                                # 1.5 CPUs of time: 2 threads
    (8, {}, 0.25, (1, "cgroup CPU quota 0.25")),                              # never fewer than one
    (1, {}, 4.0, (1, "CPU affinity")),
    (16, {"SLURM_CPUS_PER_TASK": "6"}, 3.0, (3, "cgroup CPU quota 3")),
])
def test_cpus_is_the_smallest_limit_and_says_which(affinity, env, quota, expected):
    assert threads.cpus(affinity, env, quota) == expected


def test_auto_in_a_one_cpu_slurm_job_uses_one_thread_and_says_why():
    n, source = threads.decide("auto", {}, None, *threads.cpus(2, {"SLURM_CPUS_PER_TASK": "1"}, None))
    assert (n, source) == (1, "auto policy (the family's: every core; 1 CPU allowed, by SLURM_CPUS_PER_TASK=1)")
    assert threads.decide("auto", {"OMP_NUM_THREADS": "2"}, None, 1, "SLURM_CPUS_PER_TASK=1")[0] == 2   # the user's


def write(folder, **files):
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


@pytest.mark.parametrize("proc, files, expected", [
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),                                  # v2, a container's root
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),                                    # v2, no limit
    ("0::/user.slice/job\n", {"user.slice/job/cpu.max": "max 100000", "user.slice/cpu.max": "200000 100000",
                               "cpu.max": "max 100000"}, 2.0),                           # v2, a parent's limit
    ("0::/a/b\n", {"a/b/cpu.max": "50000 100000", "a/cpu.max": "300000 100000"}, 0.5),  # v2, the smallest
    ("0::/not/mounted\n", {"cpu.max": "400000 100000"}, 4.0),                          # own path absent: the root
    ("2:cpuacct:/\n1:cpu:/\n0::/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ("3:cpu,cpuacct:/docker/x\n", {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "250000",
                                   "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000"}, 2.5),  # v1, named mount
    ("3:cpu,cpuacct:/docker/x\n", {"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "50000"}, 2.0),
    ("0::/\n", {"cpu.max": "garbage"}, None),                                          # unreadable: no limit
    ("0::/\n", {"cpu.max": "lots 100000"}, None),
    ("5:memory:/x\n", {"cpu.max": "100000 100000"}, None),                             # no cpu controller listed
])
def test_cgroup_quota_reads_v1_and_v2_files(tmp_path, proc, files, expected):
    write(tmp_path / "fs", **files)
    (tmp_path / "cgroup").write_text(proc)
    assert threads.cgroup_quota(tmp_path / "fs", tmp_path / "cgroup") == expected
    assert threads.cgroup_quota(tmp_path / "fs", tmp_path / "missing") is None


def test_this_process_counts_no_more_cpus_than_its_affinity():
    n, source = threads.available_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0)) and source


@pytest.mark.parametrize("user", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"},
                                  {"GOMP_SPINCOUNT": "infinity"}, {"GOMP_SPINCOUNT": "0"},
                                  {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "5"}])
def test_a_users_wait_setting_is_left_alone(user):
    env = dict(user, OMP_NUM_THREADS="2")
    assert threads.wait_environment(env) == {}
    assert threads.prepare_environment(env) == {} and env == dict(user, OMP_NUM_THREADS="2")
    assert threads.wait_record(env)["source"] == "user environment"
    assert {k: v for k, v in threads.wait_record(env).items() if k != "source" and v} == user


def test_without_a_user_setting_node_run_bounds_the_spin_and_says_so():
    env = {"OMP_NUM_THREADS": "1"}
    assert threads.prepare_environment(env) == {"GOMP_SPINCOUNT": threads.SPINCOUNT}
    assert env["GOMP_SPINCOUNT"] == threads.SPINCOUNT and env["OMP_NUM_THREADS"] == "1"   # never touched
    assert threads.wait_record(env) == dict(OMP_WAIT_POLICY=None, GOMP_SPINCOUNT=threads.SPINCOUNT,
                                            source="node-run policy")
    assert threads.wait_record({})["source"] == "libgomp defaults (nothing set)"
    # a child that inherits our setting, then gets a user's value on top, reports the user
    assert threads.wait_record(dict(env, OMP_WAIT_POLICY="PASSIVE"))["source"] == "user environment"


def test_too_late_is_never_pretended():
    """Once torch is loaded libgomp has read its environment: os.environ is then left as it is."""
    import torch  # noqa: F401

    before = dict(os.environ)
    assert threads.prepare_environment() == {} and dict(os.environ) == before


# ------------------------------------------------------------------ the entry points set it before torch loads
def entry_modules() -> dict:
    """console script -> its module, from pyproject.toml's [project.scripts] (node-data only fetches files)."""
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    scripts = dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.]+):\w+"', section, re.M))
    assert "node-run" in scripts and "node-bench" in scripts
    return {name: module for name, module in scripts.items() if name != "node-data"}


@pytest.mark.parametrize("script", sorted(entry_modules()))
def test_every_entry_point_prepares_the_environment_first(script):
    """The first statement after the docstring and `from __future__` imports core.threads and the next calls
    prepare_environment(): nothing that could load torch comes before it (node-data only fetches files)."""
    module = entry_modules()[script]
    path = REPO / (module.replace(".", "/") + ".py")
    body = [n for n in ast.parse(path.read_text()).body
            if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
            and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    first, second = body[0], body[1]
    assert isinstance(first, ast.ImportFrom) and first.module.endswith("core.threads"), (module, ast.dump(first))
    assert isinstance(second, ast.Expr) and ast.unparse(second) == "prepare_environment()", module


def test_node_run_sets_the_wait_before_torch_and_keeps_the_users():
    """In a fresh interpreter: prepare_environment refuses once torch is loaded, so finding GOMP_SPINCOUNT set
    shows it ran before torch; a user's OMP_WAIT_POLICY stays the only setting."""
    code = "import os, node_cli.cli; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    clean = {k: v for k, v in os.environ.items() if k not in threads.WAIT_VARS + (threads.MARK,)}
    mine = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=120)
    user = subprocess.run([sys.executable, "-c", code], env=dict(clean, OMP_WAIT_POLICY="PASSIVE"),
                          capture_output=True, text=True, timeout=120)
    assert mine.stdout.split() == [threads.SPINCOUNT, "None"], mine.stderr
    assert user.stdout.split() == ["None", "PASSIVE"], user.stderr


# ------------------------------------------------------------------------------ what a run records
# node-run in a subprocess that prints, when it exits, the thread count torch reports inside that process
PROBE = ("import node_cli.cli as cli, atexit, sys, torch; "
         "atexit.register(lambda: print('TORCH_THREADS', torch.get_num_threads())); "
         "sys.argv = ['node-run'] + sys.argv[1:]; cli.main()")


@pytest.mark.parametrize("omp, key, threads_used, source", [
    (None, None, 1, "auto policy (the family's: 1)"),             # flows: one thread by itself
    ("1", 2, 2, "threads key"),                                    # an explicit threads=N wins over the variable
])
def test_the_summary_records_the_threads_used(tmp_path, omp, key, threads_used, source):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY",
                                                            threads.MARK)}
    env["PYTHONUNBUFFERED"] = "1"
    if omp:
        env["OMP_NUM_THREADS"] = omp
    folder = tmp_path / "run"
    args = FLOW + ([f"threads={key}"] if key else []) + [f"hydra.run.dir={folder}"]
    r = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=300,
                       cwd=tempfile.gettempdir())
    assert r.returncode == 0, r.stderr
    inside = int(r.stdout.split("TORCH_THREADS")[-1].split()[0])
    s = json.loads((folder / "summary.json").read_text())
    assert s["threads"] == inside == threads_used and s["threads_from"] == source
    assert s["omp_wait"] == dict(OMP_WAIT_POLICY=None, GOMP_SPINCOUNT=threads.SPINCOUNT, source="node-run policy")
    log = (folder / "node-run.log").read_text()
    assert f"threads {threads_used} ({source}); OpenMP wait GOMP_SPINCOUNT={threads.SPINCOUNT}" in log


# ------------------------------------------------------------------------------ sweeps that share the machine
def test_a_joblib_sweeps_jobs_share_the_cores(tmp_path):
    """joblib's workers get OMP_NUM_THREADS = cores // n_jobs when it is unset (joblib's own oversubscription guard);
    threads=auto takes it from the environment, and the summary says so."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY",
                                                            threads.MARK)}
    r = subprocess.run([sys.executable, "-m", "node_cli.cli", "-m", *FLOW, "seed=0,1", "hydra/launcher=joblib",
                        "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}"], env=env, capture_output=True,
                       text=True, timeout=300, cwd=tempfile.gettempdir())
    assert r.returncode == 0, r.stderr
    share = max(1, threads.every_core() // 2)
    for job in ("0", "1"):
        s = json.loads((tmp_path / job / "summary.json").read_text())
        assert s["threads"] == share and s["threads_from"] == "environment (OMP_NUM_THREADS)", s
