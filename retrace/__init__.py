"""retrace-server: turn C/C++ coredumps into symbolized backtraces."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

__version__ = "0.1.0"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version`` on every command: what an admin or a bug report quotes first."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def installed_commands() -> dict[str, str]:
    """``{command: module}`` of every retrace console script installed with this package: what the man
    pages, the bash completions and the tests are made for, read from the installed metadata so that a
    command added to pyproject.toml is never missed."""
    from importlib.metadata import entry_points

    return {entry.name: entry.module for entry in entry_points(group="console_scripts")
            if entry.name.startswith("retrace-")}
