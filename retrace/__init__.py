"""retrace-server: turn C/C++ coredumps into symbolized backtraces."""

__version__ = "0.1.0"


def add_version_argument(parser):
    """``--version`` on every command: what an admin or a bug report quotes first."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
