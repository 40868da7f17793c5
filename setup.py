"""Everything is declared in pyproject.toml; this stays for the distributions' build
tools (``setup.py install`` in retrace-server.spec, pybuild in debian/rules)."""

from setuptools import setup

setup()
