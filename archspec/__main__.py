"""`python -m archspec ...`: the same command line as the `archspec` script."""

from archspec.cli import run

run()
