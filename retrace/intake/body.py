"""A request body as it arrives: bounded reads, its declared length held to, and a floor under its rate.

Under mod_wsgi ``wsgi.input.read(n)`` returns only once ``n`` bytes have
come (or the body ended), so a read's size is how long a trickling client
holds the thread before the application may look at the clock again:
reads here are at most ``READ_SIZE`` (64 KiB, 8 s at the default floor).
Apache's mod_reqtimeout already cuts a body whose whole average falls
below ``MinUploadRate`` (after 20 s of grace); what it lets through is a
client that sent fast first and then slows to a trickle on its earned
credit.  So the body must also average ``MinUploadRate`` over every
``WINDOW`` seconds, or it is cut with 408 and its thread is free again.
"""

from __future__ import annotations

import collections
import time
from typing import Callable

from retrace_server.compression import Readable
from retrace_server.errors import BadRequest, RetraceError

READ_SIZE = 64 * 1024
WINDOW = 30.0


class SlowUpload(RetraceError):
    """The body arrives more slowly than MinUploadRate: it is cut so that its thread serves someone else."""

    http_status = 408


class RequestBody:
    """Exactly ``length`` bytes of ``stream``, at least ``min_rate`` bytes a second over every WINDOW seconds
    (0: no floor)."""

    def __init__(self, stream: Readable, length: int, min_rate: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream, self.length, self.min_rate, self._clock = stream, length, min_rate, clock
        self.received = 0
        self._samples = collections.deque([(clock(), 0)])

    @property
    def left(self) -> int:
        return self.length - self.received

    def read(self, size: int = READ_SIZE) -> bytes:
        """Up to ``size`` bytes (b"" once ``length`` were read); BadRequest when the body ends early."""
        want = min(size, self.left, READ_SIZE)
        if want <= 0:
            return b""
        try:
            data = self._stream.read(want)
        except OSError:
            data = b""
        if not data:
            raise BadRequest(
                f"The upload ended after {self.received} of the {self.length} bytes announced in Content-Length")
        self.received += len(data)
        self._check_rate()
        return data

    def _check_rate(self) -> None:
        if not self.min_rate:
            return
        now = self._clock()
        samples = self._samples
        samples.append((now, self.received))
        # samples[0]: the last sample at least WINDOW seconds old.
        while len(samples) > 2 and samples[1][0] <= now - WINDOW:
            samples.popleft()
        since, then = samples[0]
        if now - since >= WINDOW and self.received - then < self.min_rate * (now - since):
            rate = (self.received - then) / (now - since)
            raise SlowUpload(
                f"The upload is too slow: {rate / 1024:.1f} KiB/s over the last {now - since:.0f} s, and this server "
                f"needs at least {self.min_rate / 1024:g} KiB/s (MinUploadRate); try again on a faster connection")

    def drain(self) -> None:
        """Read and drop the rest, so that the client reads our answer cleanly (not for a body cut as slow)."""
        while self.read():
            pass
