"""A browser's ``multipart/form-data`` upload, read as it streams: a vmcore of tens of GiB never sits in memory.

webob (through ``cgi``) would spool every file part to a temporary file
before the handler sees it, on whatever disk ``TMPDIR`` is.  This reader
hands each part over as a stream instead, so the handler writes the file
straight into the task's directory, counting and capping as it goes.  Text
fields are capped at ``FIELD_LIMIT`` bytes and the number of parts at
``MAX_PARTS``.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from retrace_server.errors import BadRequest
from retrace_server.intake.body import RequestBody

if TYPE_CHECKING:
    from collections.abc import Iterator

    from retrace_server.compression import Readable

FIELD_LIMIT = 64 * 1024
MAX_PARTS = 50
_HEADER_LIMIT = 8192
_CHUNK = 1024 * 1024
_BOUNDARY = re.compile(r'boundary="?([0-9A-Za-z\'()+_,./:=?-]{1,70})"?')
_DISPOSITION = re.compile(r'(\w+)="([^"]*)"')


def boundary_of(content_type: str | None) -> bytes:
    match = _BOUNDARY.search(content_type or "")
    if not (content_type or "").lower().startswith("multipart/form-data") or match is None:
        raise BadRequest("Send the form as multipart/form-data (a browser form with enctype=\"multipart/form-data\")")
    return match.group(1).encode("ascii")


class _Body:
    """The request body (``retrace_server.intake.body``), with a buffer for looking ahead."""

    def __init__(self, stream: Readable, length: int, min_rate: int) -> None:
        self.source, self.buffer = RequestBody(stream, length, min_rate), b""

    @property
    def left(self) -> int:
        return self.source.left

    def fill(self, wanted: int = _CHUNK) -> bool:
        if not self.left:
            return False
        self.buffer += self.source.read(wanted)
        return True


class Part:
    """One form field; ``read(size)`` returns b"" at its end."""

    def __init__(self, body: _Body, delimiter: bytes, name: str, filename: str | None) -> None:
        self._body, self._delimiter = body, delimiter
        self.name, self.filename = name, filename
        self.done = False

    def read(self, size: int = _CHUNK) -> bytes:
        body, delimiter = self._body, self._delimiter
        while not self.done:
            found = body.buffer.find(delimiter)
            if found >= 0:
                if found == 0:
                    self.done = True
                    break
                data, body.buffer = body.buffer[:min(found, size)], body.buffer[min(found, size):]
                return data
            safe = len(body.buffer) - len(delimiter)
            if safe >= size or (safe > 0 and not body.left):
                data, body.buffer = body.buffer[:min(safe, size)], body.buffer[min(safe, size):]
                return data
            if not body.fill():
                raise BadRequest("The form upload is truncated: a part has no closing boundary")
        return b""

    def text(self) -> str:
        data = b""
        while chunk := self.read():
            data += chunk
            if len(data) > FIELD_LIMIT:
                raise BadRequest(f"The form field '{self.name}' is longer than {FIELD_LIMIT} bytes")
        return data.decode("utf-8", "replace")


def parts(stream: Readable, length: int, boundary: bytes, min_rate: int = 0) -> Iterator[Part]:
    """Yield each Part in order; the caller reads (or not) one before asking for the next.  The body must come
    at ``min_rate`` bytes a second at least."""
    body = _Body(stream, length, min_rate)
    delimiter = b"\r\n--" + boundary
    body.buffer = b"\r\n"  # the first boundary has no CRLF before it
    for _ in range(MAX_PARTS + 1):
        while body.buffer.find(delimiter) < 0:
            body.buffer = body.buffer[-len(delimiter):]  # a preamble before the first part is skipped
            if not body.fill():
                raise BadRequest("The form upload holds no closing boundary")
        body.buffer = body.buffer[body.buffer.find(delimiter) + len(delimiter):]
        while len(body.buffer) < 2 and body.fill():
            pass
        if body.buffer.startswith(b"--"):
            return
        while b"\r\n\r\n" not in body.buffer:
            if len(body.buffer) > _HEADER_LIMIT or not body.fill():
                raise BadRequest("A part of the form upload has no or too long headers")
        head, body.buffer = body.buffer.split(b"\r\n\r\n", 1)
        disposition = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                disposition = line
        fields = dict(_DISPOSITION.findall(disposition))
        if "name" not in fields:
            raise BadRequest("A part of the form upload has no field name")
        part = Part(body, delimiter, fields["name"], fields.get("filename"))
        yield part
        while part.read():
            pass
    raise BadRequest(f"The form upload has more than {MAX_PARTS} fields")
