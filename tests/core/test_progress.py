"""Progress bars: drawn on a terminal (training and the final evaluation), never when stderr is a pipe or a file,
and never under trainer.progress=false."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import tempfile
import termios

from node_cli.core import progress


class Terminal:
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_bar_draws_only_on_a_terminal_and_only_when_enabled(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert list(progress.bar(range(3), desc="evaluation")) == [0, 1, 2]
    assert "evaluation" in term.text and "3/3" in term.text
    drawn = term.text
    assert list(progress.bar(range(3), enabled=False, desc="quiet")) == [0, 1, 2]
    assert term.text == drawn                                  # trainer.progress=false: nothing
    pipe = Terminal()
    pipe.isatty = lambda: False
    monkeypatch.setattr(sys, "stderr", pipe)
    assert list(progress.bar(range(3), desc="piped")) == [0, 1, 2] and pipe.text == ""


def _run(args, fake_mnist, tty: bool) -> str:
    """node-run ARGS with stderr on a pseudo-terminal (tty) or a pipe; returns what stderr received."""
    cmd = [sys.executable, "-m", "node_cli.cli", "experiment=mnist_mlp", "trainer=smoke", f"dataset.root={fake_mnist}",
           f"hydra.run.dir={tempfile.mkdtemp()}/run", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="120")
    if not tty:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300).stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))   # a 120-column terminal
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:     # the follower side closed: the process ended
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=300)
    os.close(leader)
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def test_training_and_final_evaluation_bars_on_a_terminal_none_on_a_pipe_or_when_switched_off(fake_mnist):
    shown = _run([], fake_mnist, tty=True)
    assert "mnist_mlp" in shown and "3/3" in shown            # the training bar
    assert "evaluation" in shown and "batch" in shown         # the evaluation bar (MNIST: test batches)
    piped = _run([], fake_mnist, tty=False)
    assert "3/3" not in piped and "batch" not in piped
    off = _run(["trainer.progress=false"], fake_mnist, tty=True)
    assert "3/3" not in off and "batch" not in off
