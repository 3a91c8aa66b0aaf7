"""node-run: reproduce Neural ODEs (Chen et al., NeurIPS 2018) from the command line."""
import os

# Quiet the C++ profiler logs that the CPU memory measurement would print (must be set before torch loads).
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

__version__ = "0.1.0"
