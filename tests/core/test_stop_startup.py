"""A scheduler's stop signal during a job's start-up still reaches the job environment's handler (submitit: save and
requeue), never kills the job or ends it for good. The real thing, on SLURM: tests/integration/test_slurm.py."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from node_cli.core import stop

STARTUP = """
import os, signal, sys, time
import node_cli                              # as submitit's unpickling does: node-run first, then torch (slow)
os.kill(os.getpid(), signal.SIGUSR2)         # the scheduler's signal, before any handler of it is installed
time.sleep(0.3)
print("alive", flush=True)
got = []
signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))   # submitit installs its requeue handler
time.sleep(0.5)
print("handled", got, flush=True)
"""


def _start(env_extra: dict):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUBMITIT_")}
    return subprocess.run([sys.executable, "-c", STARTUP], env=dict(env, **env_extra), capture_output=True,
                          text=True, timeout=60)


def test_a_preemption_signal_before_submitit_handles_it_is_held_and_delivered_to_its_handler():
    r = _start({"SUBMITIT_EXECUTOR": "slurm"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["alive", f"handled [{int(signal.SIGUSR2)}]"]
    assert "SIGUSR2 received while the job starts: held" in r.stderr


def test_outside_a_submitit_job_the_signal_keeps_its_default_action():
    r = _start({})
    assert r.returncode == -signal.SIGUSR2 and r.stdout == ""


@pytest.mark.skipif(stop.PREEMPT != "SIGUSR2", reason="SUBMITIT_PREEMPT_SIGNAL names another signal")
def test_a_signal_while_loading_stops_at_once_and_is_handed_on_to_the_job_environment():
    got = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))   # submitit's requeue handler
    try:
        with pytest.raises(KeyboardInterrupt):
            with stop.watch(immediate=True):
                os.kill(os.getpid(), signal.SIGUSR2)
                time.sleep(1)   # the handler raises here
                pytest.fail("the signal did not stop the block")
        assert got == [signal.SIGUSR2]   # called once the watch ended (after the summary is written)
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_requeued_job_whose_run_stopped_before_its_first_checkpoint_starts_again(tmp_path, capsys):
    from node_cli.cli import requeued

    (tmp_path / "summary.json").write_text(json.dumps(dict(status="interrupted")))
    (tmp_path / "metrics.jsonl").write_text(json.dumps(dict(step=0, test_loss=1.0)) + "\n")
    # no checkpoint: a start from step 0 in the same folder, recorded as a restart (fit() starts a new metrics log)
    assert requeued(None, tmp_path) == {"history": []}
    assert "stopped before its first checkpoint: starting it again" in capsys.readouterr().err
