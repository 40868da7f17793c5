"""A request body's floor: MinUploadRate over every 30 s, on a clock the test turns."""

import io

import pytest

from retrace_server.errors import BadRequest
from retrace_server.intake.body import READ_SIZE, RequestBody, SlowUpload


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Arriving(io.RawIOBase):
    """A body whose every read takes ``seconds`` on ``clock``."""

    def __init__(self, clock, seconds):
        self.clock, self.seconds = clock, seconds

    def read(self, size):
        self.clock.now += self.seconds
        return bytes(size)


def test_reads_are_at_most_64_kib_and_the_declared_length_is_held_to():
    body = RequestBody(io.BytesIO(bytes(200_000)), 100_000)
    assert len(body.read(1 << 20)) == READ_SIZE
    assert len(body.read(1 << 20)) == 100_000 - READ_SIZE
    assert body.read() == b""


def test_a_body_shorter_than_declared_is_a_sentence():
    body = RequestBody(io.BytesIO(b"abc"), 10)
    body.read()
    with pytest.raises(BadRequest, match="The upload ended after 3 of the 10 bytes announced in Content-Length"):
        body.read()


def test_a_body_at_the_floor_passes_and_one_that_slows_below_it_is_cut_within_the_window():
    clock = Clock()
    stream = Arriving(clock, 1.0)
    body = RequestBody(stream, 100 << 20, min_rate=8192, clock=clock)
    for _ in range(60):
        body.read(8192)  # 8 KiB/s for a minute: at the floor
    stream.seconds = 4.0  # then 2 KiB/s
    with pytest.raises(SlowUpload, match=r"The upload is too slow: \d+\.\d KiB/s over the last \d+ s, and this server "
                                         r"needs at least 8 KiB/s \(MinUploadRate\)"):
        for _ in range(20):
            body.read(8192)
    assert clock.now - 1060 <= 36


def test_a_fast_start_earns_no_credit_for_a_slow_remainder():
    clock = Clock()
    stream = Arriving(clock, 0.001)
    body = RequestBody(stream, 100 << 20, min_rate=8192, clock=clock)
    for _ in range(100):
        body.read()
    stream.seconds = 60.0
    with pytest.raises(SlowUpload):
        body.read(1024)


def test_without_a_floor_any_rate_passes():
    clock = Clock()
    body = RequestBody(Arriving(clock, 100.0), 1 << 20, clock=clock)
    assert len(body.read(10)) == 10 and len(body.read(10)) == 10
