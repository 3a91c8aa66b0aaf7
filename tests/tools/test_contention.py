"""`node-bench contention`: every (policy, load) cell measured in its own process, the table complete, and no busy
background process left behind."""
import json
import subprocess
from pathlib import Path

from node_cli.bench.cli import main as node_bench
from node_cli.bench.contention import BUSY, CLEARED, cell_environment, start_busy, stop_busy
from node_cli.core import threads


def alive(pid: int) -> bool:
    """A busy process of ours still running (its command line holds the busy loop; a reused PID would not)."""
    try:
        return "monotonic" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_a_tiny_contention_run_fills_every_cell_and_leaves_no_busy_process(tmp_path, capsys):
    out = tmp_path / "bench"
    policies = ["auto"]   # one policy: two cells (each a fresh process) keep the test short
    assert node_bench(["contention", "--families", "dynamics", "--policies", ",".join(policies), "--steps", "1",
                       "--warmup", "0", "--load", "1", "--out", str(out)]) == 0
    data = json.loads((out / "contention.json").read_text())
    cells = {(c["policy"], c["load"]): c for c in data["cells"]}
    assert set(cells) == {(p, load) for p in policies for load in (0, 1)}
    assert all("error" not in c and c["sec_per_step"] > 0 and len(c["times"]) == 1 for c in cells.values())
    # auto is node-run's own choice: the family's thread count, and its spin bound set by node-run
    auto = cells[("auto", 1)]
    assert auto["env"] == {"GOMP_SPINCOUNT": threads.SPINCOUNT}   # no OMP_NUM_THREADS: node-run decides
    assert auto["threads"] == 1 and auto["threads_from"] == "auto policy (the family's: 1)"
    assert auto["omp_wait"]["GOMP_SPINCOUNT"] == threads.SPINCOUNT and auto["omp_wait"]["source"] == "node-run policy"
    # the table: one row per policy, every number there, the thread count stated
    table = (out / "contention.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| dynamics |")]
    assert len(rows) == len(policies) and " - |" not in "".join(r[:-len("- |")] for r in rows)
    assert "threads" in table and "beside 1 busy processes" in table and (out / "contention.csv").is_file()
    assert "loaded / idle" in capsys.readouterr().out
    # one busy process per loaded cell, and none of them alive now
    assert len(data["busy_pids"]) == len(policies)
    assert not any(alive(pid) for pid in data["busy_pids"])


def test_a_busy_process_ends_by_itself_and_stop_kills_it():
    mine = start_busy(1, 0.5)                    # bounded: ends after half a second with nobody stopping it
    assert mine[0].wait(timeout=30) == 0
    long = start_busy(2, 600)
    stop_busy(long)
    assert all(p.returncode is not None for p in long) and not any(alive(p.pid) for p in long)
    assert "while" in BUSY


def test_a_cell_environment_is_the_policys_alone(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    env, n = cell_environment("all-passive", 2)
    assert n == 2 and env["OMP_NUM_THREADS"] == "2" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "GOMP_SPINCOUNT" not in env
    env, setting = cell_environment("auto", 2)
    assert setting == "auto" and not any(k in env for k in CLEARED if k != "GOMP_SPINCOUNT")
    assert env["GOMP_SPINCOUNT"] == threads.SPINCOUNT
