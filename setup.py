"""Everything is declared in pyproject.toml; this stays for older tools that look for it
(the packages build wheels: pybuild's pyproject plugin, the spec's pyproject macros)."""

from setuptools import setup

setup()
