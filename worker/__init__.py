"""retrace-server-worker: the detached process that retraces one task."""
