"""Tasks: the spool directory of each, the slots they hold, and how queued ones reach a worker."""
