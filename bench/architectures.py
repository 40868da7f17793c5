"""Benchmark: foreign cores retraced on this x86_64 host against bare gdb-multiarch, per architecture.

Run as root after `make setup`:  .venv/bin/python -m bench.architectures

For each of aarch64, s390x, ppc64le, i386 and riscv64: the crasher's kernel-written core (testkit/foreign.py:
the architecture's own Debian kernel under qemu-system, the real libc6 and libc6-dbg) and a real server
whose one release is debian-<version>-<arch> (riscv64: trixie), in one run:
  1. warm retrace, upload -> FINISHED_SUCCESS as a polling client sees it (every package already
     unpacked), median of 5;
  2. the baseline: the same debugger the server picks (gdb-multiarch; the host's gdb for i386), bare (no
     sandbox), with the server's batch commands on a sysroot unpacked beforehand, median of 5.
The ratio is warm retrace / bare debugger.  Also this filesystem's cost of one symlink (a warm retrace
links the sysroot from the package cache, one symlink per file).
"""

import os
import statistics
import time
from pathlib import Path

from bench.workspace import Workspace, bare_gdb_seconds
from retrace_server.analysis.debuggers import gdb_for
from testkit.debian import apt_release, debian_problem_dir, merged_usr_sysroot
from testkit.foreign import foreign_crash
from testkit.helpers import abrt_archive, timed_retrace

RUNS = 5
FILES = ("coredump", "executable", "package", "os_info")
PROGRAM = "/usr/bin/crasher"


def symlink_ms(directory):
    directory.mkdir()
    started = time.monotonic()
    for number in range(500):
        os.symlink("/nonexistent", directory / str(number))
    return (time.monotonic() - started) * 2


def main():
    with Workspace("arch") as ws:
        print(f"one symlink on this filesystem: {symlink_ms(ws.work / 'links'):.2f} ms")
        for arch in ("aarch64", "s390x", "ppc64le", "i386", "riscv64"):
            crash = foreign_crash(arch)
            root = ws.root(arch)
            apt_release(root / "repos" / crash.release, crash.debs.values(), crash.arch.debian)
            server = ws.server(root)
            archive = abrt_archive(debian_problem_dir(ws.work / f"problem-{arch}", crash.core, PROGRAM,
                                                      "crasher-1.0-1", arch, crash.os_info), FILES)
            timed_retrace(server, archive)  # index built, packages unpacked
            warm = statistics.median(timed_retrace(server, archive)[0] for _ in range(RUNS))
            gdb = gdb_for(arch)
            sysroot = merged_usr_sysroot(list(crash.debs.values()), ws.work / f"sysroot-{arch}")
            bare = bare_gdb_seconds(sysroot, PROGRAM, crash.core, RUNS, gdb)
            print(f"{arch}: core {crash.core.stat().st_size / 1024:.0f} KiB, {Path(gdb).name}; median of {RUNS}: "
                  f"warm retrace {warm:.2f} s, bare {Path(gdb).name} {bare:.2f} s, ratio {warm / bare:.2f}")


if __name__ == "__main__":
    main()
