"""node-run on a real SLURM cluster (`hydra/launcher=slurm`): skipped, with the reason, when no cluster answers.
Start one on this machine with `scripts/slurm_local.sh start` (Debian, root; .ci/run does it).

Four cases, all sweeps of the same tiny spirals run (seed 0), started at once so that SLURM's waits overlap:
(a) a sweep of 2 jobs, both ok; its seed-0 job is the uninterrupted run the other cases must equal exactly;
(b) a time limit: 1 minute, SLURM's signal 5 s before it (SLURM may send it up to a minute earlier: it looks at time
    limits every 30 s); the job saves, submitit requeues it, the requeued job continues from its checkpoint;
(c) a preemption: `scontrol requeue JOBID` mid-training (SLURM sends SIGTERM and requeues the job itself);
(d) the signal during start-up, twice: while the job imports (before submitit handles its signal) and while
    node-run loads the data and builds the model; each start ends requeued, the third finishes.
To make "mid-training" and "during start-up" certain on a machine of any speed, the test freezes the job's Python
process (SIGSTOP) at the moment it wants, lets SLURM's signal arrive (pending), then lets it go on (SIGCONT).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slurm

ARGS = ["experiment=spiral_latent_ode", "trainer=quick", "dataset.n_spirals=60", "trainer.batch_size=16",
        "trainer.max_steps=60", "trainer.eval_every=5", "trainer.progress=false", "seed=0"]
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            "hydra.launcher.timeout_min=10"]
CASES = {   # extra overrides of each case's sweep
    "a_sweep": ["seed=0,1"],
    "b_time_limit": ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=5",
                     "hydra.launcher.max_num_timeout=5"],
    "c_preemption": [],
    "d_startup": [],
}
TIMEOUT_S = 600


def _sinfo() -> str | None:
    """Why no cluster answers, or None when one does (a node idle, mixed or allocated)."""
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (no sinfo)"
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    states = set(r.stdout.split())
    if r.returncode != 0 or not states & {"idle", "mix", "alloc"}:
        said = (r.stderr or r.stdout).strip().splitlines()
        return f"no SLURM node answers ({said[-1] if said else 'sinfo lists no node'})"
    nodes = subprocess.run(["sinfo", "-h", "-o", "%n"], capture_output=True, text=True, timeout=30).stdout.split()
    if os.uname().nodename.split(".")[0] not in nodes:   # the test watches and pauses the job's own process
        return f"this machine is not a node of the SLURM cluster that answers (nodes: {' '.join(nodes)})"
    return None


# ------------------------------------------------------------------------------------------------ the job
def _job_id(sweep: Path) -> str:
    ids = [p.name for p in (sweep / ".submitit").glob("*") if p.name.isdigit()]
    return ids[0] if ids else ""


def _python(job: str) -> int | None:
    """The PID of the job's Python process (submitit's job runner, not srun), if it runs now."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"submitit.core._submit" in cmd and Path(cmd[0].decode()).name.startswith("python")
                and f"SLURM_JOB_ID={job}".encode() in env):
            return int(proc.name)
    return None


def _signals(pid: int, field: str) -> int:
    """A signal mask of /proc/PID/status (SigCgt: handled; SigPnd/ShdPnd: pending), 0 if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(re.search(rf"^{field}:\s*([0-9a-f]+)", text, re.M).group(1), 16)


def _has(mask: int, signum: int) -> bool:
    return bool(mask >> (signum - 1) & 1)


def _wait(what: str, until, deadline: float, step=0.05):
    while time.time() < deadline:
        value = until()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"waited in vain for {what}")


def _frozen_signal(pid: int, signum: int, send, deadline: float) -> None:
    """Freeze the process, `send()` (something that makes SLURM signal it), wait until `signum` is pending, go on."""
    os.kill(pid, signal.SIGSTOP)
    try:
        send()
        _wait(f"signal {signum} pending in {pid}", lambda: not Path(f"/proc/{pid}").exists() or any(
            _has(_signals(pid, f), signum) for f in ("SigPnd", "ShdPnd")), deadline)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _new_python(job: str, old: set, deadline: float) -> int:
    return _wait(f"a new Python process of job {job}", lambda: (p := _python(job)) not in old and p, deadline)


def _metrics_lines(folder: Path) -> int:
    try:
        return len((folder / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


# --------------------------------------------------------------------------------------- the cases' drivers
def drive_b(sweep: Path, deadline: float, notes: list) -> None:
    """Freeze the job once training is under way; SLURM's time-limit signal then arrives mid-training."""
    job = _wait("the job's id", lambda: _job_id(sweep), deadline)
    _wait("two evaluations", lambda: _metrics_lines(sweep / "0") >= 2, deadline)
    pid = _wait("the job's Python", lambda: _python(job), deadline)
    started = time.time()
    _frozen_signal(pid, signal.SIGUSR2, lambda: None, deadline)
    notes.append(f"job {job}: frozen at {_metrics_lines(sweep / '0')} metrics lines; SLURM's time-limit signal came "
                 f"{time.time() - started:.0f} s later")


def drive_c(sweep: Path, deadline: float, notes: list) -> None:
    """Freeze the job once training is under way and preempt it (`scontrol requeue`)."""
    job = _wait("the job's id", lambda: _job_id(sweep), deadline)
    _wait("two evaluations", lambda: _metrics_lines(sweep / "0") >= 2, deadline)
    pid = _wait("the job's Python", lambda: _python(job), deadline)
    _frozen_signal(pid, signal.SIGTERM, lambda: subprocess.run(["scontrol", "requeue", job], check=True), deadline)
    notes.append(f"job {job}: scontrol requeue at {_metrics_lines(sweep / '0')} metrics lines")


def drive_d(sweep: Path, deadline: float, notes: list) -> None:
    """Signal the job (as SLURM does before a time limit: scancel --signal) while it imports, then, started again,
    while node-run loads the data and builds the model."""
    job = _wait("the job's id", lambda: _job_id(sweep), deadline)
    signal_job = lambda: subprocess.run(["scancel", "--signal=USR2", job], check=True)  # noqa: E731
    # 1: the first handler of the signal in the new process is node-run's, installed as node_cli is imported
    pid = _wait("the job's Python", lambda: _python(job), deadline)
    _wait("a handler of SIGUSR2", lambda: _has(_signals(pid, "SigCgt"), signal.SIGUSR2), deadline, step=0.005)
    torch_loaded = "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    _frozen_signal(pid, signal.SIGUSR2, signal_job, deadline)
    notes.append(f"job {job}: signalled while importing (libtorch loaded: {torch_loaded})")
    # 2: node-run has logged its thread count: data and model come next
    pid = _new_python(job, {pid}, deadline)
    log = sweep / "0" / "node-run.log"
    _wait("node-run's start", lambda: log.is_file() and "] - threads " in log.read_text(), deadline, step=0.01)
    _frozen_signal(pid, signal.SIGUSR2, signal_job, deadline)
    notes.append(f"job {job}: signalled after node-run's threads line")


DRIVERS = {"b_time_limit": drive_b, "c_preemption": drive_c, "d_startup": drive_d}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Every case's sweep, run at once: {case: (sweep folder, CompletedProcess, driver notes or error)}."""
    reason = _sinfo()
    if reason:
        pytest.skip(f"{reason}; start a local cluster with scripts/slurm_local.sh start (Debian, root)")
    root = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    started, procs, threads, notes = time.time(), {}, [], {}
    deadline = started + TIMEOUT_S
    for case, extra in CASES.items():
        sweep = root / case
        procs[case] = subprocess.Popen([sys.executable, "-m", "node_cli.cli", "-m", *LAUNCHER, *ARGS, *extra,
                                        f"hydra.sweep.dir={sweep}"], cwd=tempfile.gettempdir(), env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        notes[case] = []
        if case in DRIVERS:
            def drive(case=case, sweep=sweep):
                try:
                    DRIVERS[case](sweep, deadline, notes[case])
                except Exception as exc:   # the test of that case fails with it
                    notes[case].append(f"driver error: {type(exc).__name__}: {exc}")
            threads.append(threading.Thread(target=drive, daemon=True))
            threads[-1].start()
    results = {}
    try:
        for case, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:   # that case's test fails, saying so; the others still count
                proc.kill()
                out, err = proc.communicate()
                notes[case].append(f"sweep still running after {TIMEOUT_S} s: stopped")
            results[case] = (root / case, subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                             notes[case])
    finally:
        for case, proc in procs.items():
            if proc.poll() is None:
                proc.kill()
            job = _job_id(root / case)
            if job:
                subprocess.run(["scancel", job], capture_output=True)
        for t in threads:
            t.join(timeout=10)
    print(f"\nSLURM cases: {time.time() - started:.0f} s wall for all four, run at once")
    for case, (_, r, n) in results.items():   # shown with -s, or when a test fails
        said = [line for line in r.stderr.splitlines() if line.startswith("node-run:")]
        print(f"  {case}: exit {r.returncode}; " + "; ".join(n + said))
    return results


def _logs(sweep: Path) -> str:
    return "".join(p.read_text() for p in sorted((sweep / ".submitit").rglob("*_log.*")))


def _ok(case, sweeps) -> tuple[Path, dict, str]:
    sweep, r, notes = sweeps[case]
    why = (notes, r.stderr[-3000:], _logs(sweep)[-5000:])
    assert not any(n.startswith(("driver error", "sweep still running")) for n in notes), why
    assert r.returncode == 0, why
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 60, summary
    return sweep / "0", summary, _logs(sweep)


def _same_as_uninterrupted(folder: Path, sweeps) -> None:
    """Same metrics lines (timings aside) and the same weights as the uninterrupted job of sweep (a)."""
    reference = sweeps["a_sweep"][0] / "0"
    rows = [[{k: v for k, v in json.loads(line).items() if k not in ("sec_per_step", "wall_time")}
             for line in (f / "metrics.jsonl").read_text().splitlines()] for f in (folder, reference)]
    assert len(rows[0]) == 12 and rows[0] == rows[1]   # evaluations at 5, 10, ..., 55 and the final one
    a, b = (torch.load(f / "checkpoint.pt", weights_only=True)["model"] for f in (folder, reference))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ the tests
def test_a_sweep_of_two_jobs_on_slurm_ends_ok(sweeps):
    folder, summary, logs = _ok("a_sweep", sweeps)
    other = json.loads((folder.parent / "1" / "summary.json").read_text())
    assert other["status"] == "ok" and other["seed"] == 1 and summary["seed"] == 0
    assert "Requeued" not in logs
    err = sweeps["a_sweep"][1].stderr
    assert "Bypassing sacct error" not in err   # submitit's warnings about sacct are dropped ...
    if subprocess.run(["sacct", "-n", "-j", "1"], capture_output=True).returncode != 0:
        assert err.count("node-run: sacct fails on this cluster") == 1, err   # ... and said once, where it fails


def test_a_job_at_its_time_limit_saves_is_requeued_and_ends_as_if_never_stopped(sweeps):
    folder, summary, logs = _ok("b_time_limit", sweeps)
    first = summary["resumed"][0]
    assert 10 <= first["from_step"] < 60, summary["resumed"]   # saved mid-training
    assert "SIGUSR2 received: stopping and saving the last complete step" in logs
    assert "this job is timed-out" in logs and "Requeued job" in logs
    assert f"continuing from step {first['from_step']}" in logs
    _same_as_uninterrupted(folder, sweeps)


def test_a_preempted_job_saves_and_its_requeued_run_ends_as_if_never_stopped(sweeps):
    folder, summary, logs = _ok("c_preemption", sweeps)
    (entry,) = summary["resumed"]
    assert 10 <= entry["from_step"] < 60
    assert "SIGTERM received: stopping and saving the last complete step" in logs and "DUE TO JOB REQUEUE" in logs
    _same_as_uninterrupted(folder, sweeps)


def test_a_signal_during_start_up_requeues_the_job_and_it_finishes(sweeps):
    folder, summary, logs = _ok("d_startup", sweeps)
    # stopped before any training: each later start began again from step 0 (recorded as such), nothing continued
    assert summary["resumed"] and all(entry["from_step"] == 0 for entry in summary["resumed"])
    assert "SIGUSR2 received while the job starts: held" in logs   # 1: while importing
    log = (folder / "node-run.log").read_text()
    # 2: the second signal lands while the data load or the model build runs, or, on a slower start, still while
    # importing (held again): either way the job is requeued (counted below) and then finishes
    assert ("stopped while loading the data or building the model, before the first training step" in log + logs
            or logs.count("SIGUSR2 received while the job starts: held") == 2)
    assert "stopped before its first checkpoint: starting it again" in logs
    assert len(re.findall(r"^submitit INFO .* - Requeued job", logs, re.M)) == 2
    _same_as_uninterrupted(folder, sweeps)
