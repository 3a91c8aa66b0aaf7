"""A SLURM-style requeue, as far as this machine allows: the sweep runs under submitit's local executor
(`hydra/launcher=submitit_local`, the same submitit job environment and requeue path the SLURM launcher uses); the
test sends the job the signal submitit's controller sends before a time limit (SIGUSR2), mid-training. The job
saves its step, submitit requeues it, the requeued job continues from the checkpoint, and the sweep ends ok, with
the same result as a run that was never stopped."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ARGS = ["experiment=spiral_latent_ode", "trainer=quick", "dataset.n_spirals=60", "trainer.batch_size=16",
        "trainer.max_steps=300", "trainer.eval_every=2", "trainer.progress=false"]


def _job_processes(folder: Path) -> list[int]:
    """PIDs of submitit job processes (not its controller) that run the jobs of the sweep in `folder`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmd and any(str(folder).encode() in part for part in cmd):
            pids.append(int(proc.name))
    return pids


def test_a_job_signalled_before_its_time_limit_is_requeued_and_continues(tmp_path, node_run):
    sweep = tmp_path / "sweep"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "node_cli.cli", "-m", "hydra/launcher=submitit_local",
                             *ARGS, f"hydra.sweep.dir={sweep}"], cwd=tempfile.gettempdir(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, signalled, deadline = sweep / "0" / "metrics.jsonl", [], time.time() + 240
    while time.time() < deadline and not signalled and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            for pid in _job_processes(sweep):
                os.kill(pid, signal.SIGUSR2)
                signalled.append(pid)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    assert signalled, "the job finished before it could be signalled"
    assert proc.returncode == 0, err
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 300
    (entry,) = summary["resumed"]
    assert 6 <= entry["from_step"] < 300
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "SIGUSR2 received: stopping and saving the last complete step" in logs and "Requeued job" in logs
    assert f"continuing from step {entry['from_step']}" in logs

    # the same job never stopped: same weights, same metrics (timings aside)
    again = tmp_path / "straight"
    r = node_run(*ARGS, f"hydra.run.dir={again}")
    assert r.returncode == 0, r.stderr
    rows = [[{k: v for k, v in json.loads(line).items() if k not in ("sec_per_step", "wall_time")}
             for line in (folder / "metrics.jsonl").read_text().splitlines()] for folder in (sweep / "0", again)]
    assert rows[0] == rows[1]
    a, b = (torch.load(folder / "checkpoint.pt", weights_only=True)["model"] for folder in (sweep / "0", again))
    assert all(torch.equal(a[k], b[k]) for k in a)
