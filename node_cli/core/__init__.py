"""The core of node-run: solving, NFE, the one training loop, run folders, measurement, checks. It knows no
experiment family."""
