"""Which packages the wheel holds: found, never listed by hand (pyproject.toml holds everything else).

Everything under node_cli/ is found as it is; the Hydra tree conf/ at the root ships as node_cli.conf, and
pyproject's `[tool.setuptools.packages.find]` cannot rename a folder, hence this file. Every YAML file of both
is package data. tests/test_packaging.py builds the wheel and checks that every file of the tree is inside.
"""
from setuptools import find_namespace_packages, setup

setup(
    packages=find_namespace_packages(include=["node_cli", "node_cli.*"])
    + ["node_cli.conf"] + [f"node_cli.conf.{p}" for p in find_namespace_packages(where="conf")],
    package_dir={"node_cli.conf": "conf"},
    package_data={"": ["*.yaml"]},
)
