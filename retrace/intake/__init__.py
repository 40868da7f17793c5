"""Intake: what arrives over HTTP, checked while it streams (archives, crash files, disk space for them)."""
