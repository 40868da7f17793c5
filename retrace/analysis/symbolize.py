"""Frames of a coreless report, ``(build-id, offset in the module)``, turned into functions and lines.

The debuginfo comes from where a retrace gets it: the release's mirror (a
debuginfo package found by build-id in the package index, proven and
unpacked once into the shared package cache, ``PackageSupply``).  binutils'
``addr2line`` (elfutils' ``eu-addr2line`` where binutils is missing) reads
the DWARF: one run per module for all of its frames, inlined callers
included (``--pretty-print``: ``(inlined by)`` lines), each in the
sandbox-free form it has, since it only reads files the cache has proven.
An offset is relative to the module's lowest mapped page, as
``eu-stack -b`` and satyr print it; the file's own addresses start at its
first loadable segment's page.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from retrace_server.errors import RetraceError
from retrace_server.packaging.packages import build_id_debug_path

if TYPE_CHECKING:
    from retrace_server.packaging.cache import CachedPackage

_PAGE = 4096
_TIMEOUT = 60
_OUTPUT_LIMIT = 4 * 1024 * 1024
_PT_LOAD = 1
# binutils ends a line with " (discriminator N)" where the line table has several blocks on one line.
_PRETTY = re.compile(r"^(?:0x[0-9a-f]+: | \(inlined by\) )(?P<function>.*?)"
                     r"(?: at (?P<file>.*?):(?P<line>[0-9]+)(?::[0-9]+)?(?: \(discriminator [0-9]+\))?)?$")


class Location(NamedTuple):
    """A place in the source (a tuple: the symbol cache keeps and reads many thousands of them)."""

    function: str | None
    file: str | None
    line: int | None

    def text(self) -> str:
        where = f" at {self.file}:{self.line}" if self.file and self.line else ""
        return f"{self.function or '??'}{where}"


@dataclasses.dataclass
class Symbolized:
    """One reported frame: where it is, innermost first (inlined callees before the function they are in)."""

    build_id: str | None
    offset: int
    module: str
    locations: list[Location] = dataclasses.field(default_factory=list)
    problem: str | None = None


def load_layout(path: Path) -> tuple[int, int]:
    """``(first loadable page, end of the last loadable segment)`` from an ELF file's program headers
    (a separate debuginfo file keeps them)."""
    with open(path, "rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] not in (1, 2) or header[5] not in (1, 2):
            raise ValueError("not an ELF file")
        order = "<" if header[5] == 1 else ">"
        if header[4] == 2:
            phoff, = struct.unpack_from(order + "Q", header, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 54)
            layout = order + "IIQQQQQQ"
        else:
            phoff, = struct.unpack_from(order + "I", header, 28)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 42)
            layout = order + "IIIIIIII"
        if not 0 < phnum <= 512 or phentsize < struct.calcsize(layout):
            raise ValueError("no program headers")
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    loads = []
    for number in range(phnum):
        fields = struct.unpack_from(layout, table, number * phentsize)
        if header[4] == 2:
            p_type, _flags, _offset, vaddr, _paddr, _filesz, memsz, _align = fields
        else:
            p_type, _offset, vaddr, _paddr, _filesz, memsz, _flags, _align = fields
        if p_type == _PT_LOAD:
            loads.append((vaddr, memsz))
    if not loads:
        raise ValueError("no loadable segment")
    first = min(vaddr for vaddr, _ in loads) & ~(_PAGE - 1)
    return first, max(vaddr + memsz for vaddr, memsz in loads)


def debug_file(entry: CachedPackage, build_id: str) -> Path | None:
    """The separate debuginfo file of ``build_id`` in an unpacked package (its .build-id link, which must
    stay inside the package's tree), or None."""
    root = Path(entry.root).resolve()
    link = root / build_id_debug_path(build_id).lstrip("/")
    try:
        real = link.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if root not in real.parents or not real.is_file():
        return None
    return real


def symbolizer() -> str:
    """binutils' ``addr2line`` where installed, else ``eu-addr2line``.

    A report must name the frames the full retrace's gdb names, or the two
    land in different buckets and every report of a known crash asks for
    its core again. elfutils 0.188 (Debian 12) finds neither the function
    nor its inlined callers in LTO-built DWARF: for Debian's python3.11 it
    names the ELF symbol ``signal_pthread_kill.lto_priv.0`` where gdb and
    binutils show ``signal_pthread_kill_impl`` inlined in
    ``signal_pthread_kill``. Both take the same options and print the same
    form; binutils reads any architecture's ELF files.
    """
    return "addr2line" if shutil.which("addr2line") else "eu-addr2line"


def addr2line(path: Path, addresses: list[int], program: str | None = None) -> list[list[Location]]:
    """``[[Location, ...] per address]``: the function and line, then the callers it was inlined into."""
    program = program or symbolizer()
    argv = [program, "-e", str(path), "--pretty-print", "-f", "-i", "-C", "-a", *(hex(a) for a in addresses)]
    try:
        ran = subprocess.run(argv, capture_output=True, timeout=_TIMEOUT, stdin=subprocess.DEVNULL,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise RetraceError(f"reading the debuginfo of {Path(path).name} took longer than {_TIMEOUT} s") from None
    output = ran.stdout[:_OUTPUT_LIMIT].decode("utf-8", "replace")
    results = []
    for line in output.splitlines():
        match = _PRETTY.match(line)
        if match is None:
            continue
        function = match["function"]
        location = Location(None if function == "??" else function, match["file"] if match["file"] != "??" else None,
                            int(match["line"]) if match["line"] else None)
        if line.startswith("0x"):
            results.append([location])
        elif results:
            results[-1].append(location)
    if len(results) != len(addresses):
        raise RetraceError(f"{program} did not read the debuginfo of {Path(path).name} "
                           f"({ran.stderr.decode('utf-8', 'replace').strip()[:200] or 'no output'})")
    return results


def symbolize_module(frames: list[Symbolized], debug_path: Path) -> None:
    """Fill ``frames`` (Symbolized, one module) from its debuginfo file; an offset past the module's end is
    marked, not looked up."""
    try:
        first, end = load_layout(debug_path)
    except (OSError, ValueError, struct.error) as err:
        for frame in frames:
            frame.problem = f"its debuginfo cannot be read ({err})"
        return
    inside = []
    for frame in frames:
        if first + frame.offset >= end:
            frame.problem = (f"offset {hex(frame.offset)} is past the end of {Path(frame.module).name} "
                             f"({hex(end - first)} bytes mapped)")
        else:
            inside.append(frame)
    if inside:
        for frame, locations in zip(inside, addr2line(debug_path, [first + frame.offset for frame in inside])):
            frame.locations = locations
