"""A kernel oops's call trace read from the kernel log, as ABRT's oops reader (satyr's koops parser) reads it.

A vmcore's kernel log holds the oops or panic that stopped the machine;
the same oops, caught by abrt-oops on a machine that survived it, arrives
as a kerneloops uReport.  Both are signed from the same frames (the
reliable ones: a ``?`` marks a stale address the unwinder found on the
stack), so a vmcore retrace and a posted oops of one bug share a bucket.
"""
from __future__ import annotations

import re

# Lines that may appear inside a trace without ending it.
_MARKER = re.compile(r"^<(?:/?TASK|/?IRQ|/?NMI|/?SOFTIRQ|EOI)>$")
# " func+0x16/0x20 [module]", " ? func+0x1/0x2", older kernels' " [<ffffffff81234567>] func+0x16/0x20"
_FRAME = re.compile(r"^(?:\[<[0-9a-f]+>\] )?(?P<unreliable>\? )?(?:\[<[0-9a-f]+>\] )?"
                    r"(?P<function>[A-Za-z0-9_.$]{1,200})\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[(?P<module>[A-Za-z0-9_-]{1,64})\])?")
_TIMESTAMP = re.compile(r"^(?:<\d>)?\[\s*\d+\.\d+\]\s?")
# Frames read from one trace at most (a ureport's limit).
MAX_FRAMES = 256


def call_trace(kernel_log: str) -> list[tuple[str, str | None]]:
    """``[(function, module or None)]`` of the last call trace in ``kernel_log``, innermost first, reliable
    frames only; empty when the log has none."""
    lines = [_TIMESTAMP.sub("", line).strip() for line in kernel_log.splitlines()]
    starts = [number for number, line in enumerate(lines) if line == "Call Trace:"]
    if not starts:
        return []
    frames: list[tuple[str, str | None]] = []
    for line in lines[starts[-1] + 1:]:
        if _MARKER.match(line):
            continue
        frame = _FRAME.match(line)
        if frame is None or len(frames) >= MAX_FRAMES:
            break
        if not frame["unreliable"]:
            frames.append((frame["function"], frame["module"]))
    return frames


def oops_text(frames: list[tuple[str, str | None]]) -> str:
    """The call trace as gdb would list it (a bucket's page shows every kind alike)."""
    lines = [f"#{number:<2} {function} (){f' [{module}]' if module else ''}"
             for number, (function, module) in enumerate(frames)]
    return "\n".join(["Thread 1 (kernel oops):", *lines]) + "\n"
