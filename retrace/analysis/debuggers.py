"""Which gdb reads a core of a given architecture.

Debian's ``gdb`` is built for its host alone ("Undefined item: aarch64"), so
on an x86_64 host it prints noise for an aarch64 core; ``gdb-multiarch``
(Debian) and Fedora's ``gdb`` read every target.  For a core's
architecture a worker takes the program the ``[debuggers]`` section names for
it, else ``gdb`` when it reads that architecture, else ``gdb-multiarch``.
Whether a gdb reads an architecture is asked of gdb itself (``set
architecture``, 0.16 s) once per program build and architecture, and the
answer kept under ``CacheDir/debuggers/``; the host's own gdb is not asked
about the host's cores.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server.arch import HOST_ARCH
from retrace_server.errors import RetraceError

if TYPE_CHECKING:
    from retrace_server.config import Config

# Release architecture -> gdb's name for it.
GDB_ARCHITECTURES = {
    "x86_64": "i386:x86-64", "i386": "i386", "aarch64": "aarch64", "armhfp": "arm", "ppc64": "powerpc:common64",
    "ppc64le": "powerpc:common64", "s390x": "s390:64-bit", "riscv64": "riscv:rv64",
}
_FALLBACKS = ("gdb", "gdb-multiarch")
# What a host runs natively besides its own architecture (a chroot's own gdb must run here).
_COMPATIBLE = {"x86_64": ("i386",), "aarch64": ("armhfp",), "ppc64": ("ppc64le",)}
_PROBE_TIMEOUT = 60


class NoDebugger(RetraceError):
    category = "unsupported architecture"


def reads(program: str, arch: str, cache_dir: Path | None = None) -> bool:
    """Whether the gdb at ``program`` knows the architecture (it exits non-zero on an undefined one); the
    answer is kept in ``cache_dir`` for this build of the program."""
    try:
        info = os.stat(program)
    except OSError:
        return False
    if cache_dir is None:
        return _probe(program, arch)
    key = hashlib.sha256(f"{os.path.realpath(program)}\0{info.st_mtime_ns}\0{info.st_size}\0{arch}".encode())
    answer = Path(cache_dir) / "debuggers" / key.hexdigest()[:32]
    try:
        return answer.read_text() == "yes"
    except OSError:
        pass
    result = _probe(program, arch)
    try:
        answer.parent.mkdir(parents=True, exist_ok=True)
        partial = answer.with_name(f".{answer.name}.{os.getpid()}")
        partial.write_text("yes" if result else "no")
        os.replace(partial, answer)
    except OSError:
        pass  # asked again next time
    return result


@functools.cache
def _probe(program: str, arch: str) -> bool:
    try:
        probe = subprocess.run([program, "-batch", "-nx", "-ex", f"set architecture {GDB_ARCHITECTURES[arch]}"],
                               capture_output=True, stdin=subprocess.DEVNULL, timeout=_PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def gdb_for(arch: str, configured: str | None = None, cache_dir: Path | None = None) -> str:
    """The path of a gdb that reads ``arch`` cores; NoDebugger says what the administrator can do."""
    if arch not in GDB_ARCHITECTURES:
        raise NoDebugger(f"this server has no debugger for {arch} cores")
    host_gdb = shutil.which("gdb")
    if arch == HOST_ARCH and not configured and host_gdb:
        return host_gdb
    for program in [configured] if configured else _FALLBACKS:
        path = shutil.which(program)
        if path and reads(path, arch, cache_dir):
            return path
    why = (f"the debugger its [debuggers] section names for {arch} cannot read them" if configured
           else "its gdb reads other architectures only and gdb-multiarch is not installed")
    raise NoDebugger(f"this server has no debugger for {arch} cores: {why}; the administrator can install "
                     f"gdb-multiarch or name a debugger for {arch} in the [debuggers] section")


def runs_natively(arch: str) -> bool:
    """Whether programs of ``arch`` (a release's own gdb, in the chroot and mock environments) run on this host."""
    return arch == HOST_ARCH or arch in _COMPATIBLE.get(HOST_ARCH, ())


def served_architectures(config: Config) -> list[str]:
    """The architectures this host retraces: ``RetraceArchitectures``, or, when it is empty, the host's own
    and every one a debugger here reads (an x86_64 host with gdb-multiarch takes aarch64, s390x, ...).
    NoDebugger when the key lists one no debugger here reads."""
    listed = config.RetraceArchitectures.split()
    if not listed:
        found = [HOST_ARCH]
        for arch in GDB_ARCHITECTURES:
            try:
                gdb_for(arch, config.debugger(arch), config.CacheDir)
            except NoDebugger:
                continue
            found.append(arch)
        return list(dict.fromkeys(found))
    for arch in listed:
        gdb_for(arch, config.debugger(arch), config.CacheDir)
    return listed
