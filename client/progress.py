"""What the person sees while the crash travels: plain lines, or a live line on a terminal."""

from __future__ import annotations

import sys
import time
from typing import BinaryIO, TextIO

MIB = 1024 * 1024


def human_size(size: float | int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class Reporter:
    """Messages to stderr; on a terminal, progress and status redraw one line."""

    def __init__(self, stream: TextIO = sys.stderr, live: bool | None = None) -> None:
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self._line_open = False

    def say(self, message: str) -> None:
        self._end_line()
        print(message, file=self.stream, flush=True)

    def _redraw(self, text: str) -> None:
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
        self._line_open = True

    def _end_line(self) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False

    def upload_progress(self, sent: int, total: int, started: float) -> None:
        if not self.live:
            return
        elapsed = max(time.monotonic() - started, 1e-6)
        percent = 100 * sent // total if total else 100
        width = 30
        bar = "#" * (width * percent // 100)
        self._redraw(
            f"Uploading [{bar:<{width}}] {percent:3d}% {human_size(sent)} of {human_size(total)}, "
            f"{human_size(sent / elapsed)}/s"
        )

    def status(self, sentence: str, changed: bool, elapsed: float) -> None:
        if self.live:
            self._redraw(f"{sentence} ({elapsed:.0f} s)")
        elif changed:
            self.say(sentence)

    def done(self) -> None:
        self._end_line()


class ProgressFile:
    """A file to upload that reports how much has been read (``len()`` gives Content-Length)."""

    def __init__(self, handle: BinaryIO, size: int, reporter: Reporter) -> None:
        self.handle = handle
        self.size = size
        self.reporter = reporter
        self.sent = 0
        self.started = time.monotonic()

    def __len__(self) -> int:
        return self.size

    def read(self, amount: int = -1) -> bytes:
        data = self.handle.read(amount)
        if data:
            self.sent += len(data)
            self.reporter.upload_progress(self.sent, self.size, self.started)
        return data
