"""Stopping a run cleanly: SIGTERM (schedulers' preemption and time limits), SIGINT (Ctrl-C) and the preemption
signal of a submitit/SLURM job are caught by one `Watcher` per process.

- While a run loads its data and builds its model (`immediate` mode) a signal stops it at once, as a
  KeyboardInterrupt: the run's summary then says `interrupted` (nothing to save yet), and the signal is handed on
  as below, so a SLURM job stopped during start-up is requeued too.
- While it trains, a signal sets `requested`; the loop looks at it after every step, saves a checkpoint of that
  step and ends the run as `interrupted`. A second Ctrl-C stops at once. Inside a `droppable()` block (a training
  step's solves, before its update) the solve stops at its next evaluation of the vector field (`check()`, called
  by core/solve.py's counted field), as `Stopped`: the loop drops that step and saves the one before.

Handlers are installed only in the main thread and put back when the outermost `watch()` ends; a handler that was
there before (submitit's requeue on its preemption signal) is called then, after the run is saved, so a preempted
SLURM job is requeued and continues from its checkpoint (cli.py resumes a job folder holding an interrupted run).

In a submitit job, submitit installs its requeue handler only after it has unpickled the job, which imports
node_cli and torch (seconds); until then the preemption signal's default action would kill the job, out of the
requeue chain. `hold_preemption()`, called when node_cli is first imported, holds such a signal and sends it again
as soon as a handler is installed.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

PREEMPT = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
last_signal: int | None = None   # the signal that stopped the last run (the process's exit status is 128 + it)


class Watcher:
    def __init__(self):
        self.requested, self.name, self.signum, self.immediate = False, "", None, True
        self.droppable = False
        self.previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        global last_signal
        last_signal = signum
        if self.immediate or (self.requested and signum == signal.SIGINT):
            if not self.requested:   # still hand it on when the outermost watch ends (submitit: requeue)
                self.requested, self.signum, self.name = True, signum, signal.Signals(signum).name
            raise KeyboardInterrupt
        self.requested, self.signum, self.name = True, signum, signal.Signals(signum).name
        print(f"node-run: {self.name} received: stopping and saving the last complete step"
              + (" (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""), file=sys.stderr, flush=True)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for name in ("SIGTERM", "SIGINT", PREEMPT):
            signum = getattr(signal, name, None)
            if signum is None or signum in self.previous:
                continue
            current = signal.getsignal(signum)
            if name == PREEMPT and not callable(current):
                continue   # the preemption signal matters only where a job environment (submitit) listens for it
            self.previous[signum] = current
            signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        chained = self.previous.get(self.signum)
        self.previous = {}
        if self.requested and callable(chained) and chained is not signal.default_int_handler:
            chained(self.signum, None)   # e.g. submitit: requeue the job, then exit


_active: Watcher | None = None


class Stopped(KeyboardInterrupt):
    """A stop request honoured inside a solve (`check`)."""


@contextlib.contextmanager
def droppable():
    """Inside the block, a stop request ends the running solve at its next vector-field evaluation (`check`)."""
    watcher = _active
    saved = watcher is not None and watcher.droppable
    if watcher is not None:
        watcher.droppable = True
    try:
        yield
    finally:
        if watcher is not None:
            watcher.droppable = saved


def check() -> None:
    """Raise Stopped if a stop was requested inside a `droppable()` block; every solve's vector field calls it."""
    if _active is not None and _active.requested and _active.droppable:
        raise Stopped


@contextlib.contextmanager
def watch(immediate: bool):
    """The process's watcher, in `immediate` mode or not for the block (installed by the outermost call)."""
    global _active
    outer = _active is None
    if outer:
        _active = Watcher()
        _active.install()
    watcher, saved = _active, _active.immediate
    watcher.immediate = immediate
    try:
        yield watcher
    finally:
        watcher.immediate = saved
        if outer:
            _active = None
            watcher.uninstall()


def hold_preemption() -> None:
    """In a submitit job (SUBMITIT_EXECUTOR set) whose preemption signal nothing handles yet: hold that signal when
    it comes, and send it to this process again once a handler is installed (submitit's requeue or node-run's
    watcher), instead of dying by its default action. Elsewhere it does nothing."""
    signum = getattr(signal, PREEMPT, None)
    if (signum is None or not os.environ.get("SUBMITIT_EXECUTOR") or signal.getsignal(signum) is not signal.SIG_DFL
            or threading.current_thread() is not threading.main_thread()):
        return
    held = []

    def resend():
        while signal.getsignal(signum) is hold:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    def hold(signum, frame):
        if not held:
            held.append(signum)
            # os.write: a print could land inside another write to stderr (a reentrant call: an error in the import)
            os.write(2, f"node-run: {signal.Signals(signum).name} received while the job starts: held until it can be "
                        "handled (save, requeue)\n".encode())
            threading.Thread(target=resend, daemon=True).start()

    signal.signal(signum, hold)
