"""retrace-server-cleanup: the hourly garbage collector."""
