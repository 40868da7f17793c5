"""retrace-client: send a crash to a retrace server and get its backtrace."""

from __future__ import annotations
