"""``python -m analysis.cli``: the ``caa-lens`` command."""

from analysis.cli import run

run()
