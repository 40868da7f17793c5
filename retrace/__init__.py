"""retrace-server: turn C/C++ coredumps into symbolized backtraces."""

__version__ = "0.1.0"
