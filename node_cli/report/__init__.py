"""`node-report`: the paper's tables and figures from any node-run runs (build.py), and the command (cli.py)."""
