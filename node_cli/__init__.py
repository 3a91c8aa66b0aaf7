"""node-run: reproduce Neural ODEs (Chen et al., NeurIPS 2018) from the command line."""

__version__ = "0.1.0"
