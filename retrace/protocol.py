"""What the server and the client both know of the wire: headers beyond upstream's protocol.

The status body of a task stays upstream's exact sentence ("Retrace job
failed"), which upstream's own ``retrace-server-task`` compares verbatim; why a
task failed travels beside it in ``X-Task-Failure-Reason``.  A header value is
one line of Latin-1 at most, and a reason may quote a hostile core's file
names, so everything outside printable ASCII (and ``%`` itself) is
percent-encoded as UTF-8.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

FAILURE_REASON = "X-Task-Failure-Reason"
_PRINTABLE = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) != "%")
_MAX_REASON = 4000  # characters before encoding; the task log keeps the whole story


def header_text(text: str) -> str:
    """``text`` as a header value that decodes back to it (cut at _MAX_REASON characters)."""
    return quote(text[:_MAX_REASON], safe=_PRINTABLE)


def from_header_text(value: str) -> str:
    return unquote(value, errors="replace")
