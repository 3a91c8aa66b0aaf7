"""`node-bench`: how fast node-run trains and how much memory a step keeps, measured, not assumed (cli.py); the
families' own benchmarks live in their folders, the cross-family time-to-accuracy in families.py."""
