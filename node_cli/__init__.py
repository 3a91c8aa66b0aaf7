"""node-run: reproduce Neural ODEs (Chen et al., NeurIPS 2018) from the command line."""

__version__ = "0.1.0"

# First thing in a submitit job (which imports node_cli, then torch, before submitit handles its preemption signal):
# hold that signal until someone handles it, so that it requeues the job instead of killing it (core/stop.py).
from .core.stop import hold_preemption as _hold_preemption

_hold_preemption()
