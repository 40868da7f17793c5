"""Benchmark: the corpus of real Debian programs (testkit/corpus.py), cold and warm, against bare gdb.

Run as root after `make setup`:  .venv/bin/python -m bench.corpus

Each program of the corpus is crashed once from its real .debs; one apt
release holds every package; through the real server, in one run, per
program:
  1. cold: a fresh package cache (the program's packages unpacked by the worker);
  2. warm: every package already unpacked (median of RUNS);
  3. baselines: `dpkg-deb -x` of the program's packages, and bare host gdb (no
     sandbox) with the server's batch commands on a merged-/usr sysroot of them
     unpacked beforehand (median of RUNS).
Printed: each time and the ratios warm / bare gdb and cold / (dpkg-deb -x + bare gdb).
"""

import shutil
import statistics
import tempfile
from pathlib import Path

from bench.debian import DEBIAN_FILES, dpkg_unpack_seconds
from bench.workspace import Workspace, bare_gdb_seconds
from testkit.corpus import PROGRAMS, crash
from testkit.debian import DEBIAN_RELEASE, apt_release, debian_problem_dir, merged_usr_sysroot
from testkit.helpers import abrt_archive, timed_retrace

RUNS = 3


def main():
    with Workspace("corpus") as ws:
        crashed = [crash(program, ws.work) for program in PROGRAMS]
        debs = list({deb.name: deb for one in crashed for deb in one.debs}.values())
        root = ws.root("corpus")
        apt_release(root / "repos" / DEBIAN_RELEASE, debs)
        server = ws.server(root)
        rows = []
        for one in crashed:
            archive = abrt_archive(debian_problem_dir(ws.work / f"problem-{one.program.name}", one.core,
                                                      one.program.executable, one.package), DEBIAN_FILES)
            timed_retrace(server, archive)  # the release index is built once
            shutil.rmtree(server.cache_dir / "rpms", ignore_errors=True)
            cold = timed_retrace(server, archive)[0]
            warm = statistics.median(timed_retrace(server, archive)[0] for _ in range(RUNS))
            with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
                unpack = dpkg_unpack_seconds(one.debs, Path(scratch))
                sysroot = merged_usr_sysroot(one.debs, Path(scratch) / "sysroot")
                bare = bare_gdb_seconds(sysroot, one.program.executable, one.core, RUNS)
            rows.append((one.program.name, len(one.debs), sum(deb.stat().st_size for deb in one.debs), bare, warm,
                         cold, unpack))
        print(f"{'program':14} {'debs':>4} {'MiB':>6} {'bare gdb':>9} {'warm':>6} {'cold':>6} {'unpack':>7} "
              f"{'warm/bare':>9} {'cold/(unpack+bare)':>18}")
        for name, count, size, bare, warm, cold, unpack in rows:
            print(f"{name:14} {count:4d} {size / 1048576:6.1f} {bare:8.2f}s {warm:5.2f}s {cold:5.2f}s {unpack:6.2f}s "
                  f"{warm / bare:9.2f} {cold / (unpack + bare):18.2f}")
        print(f"median ratios: warm / bare gdb {statistics.median(row[4] / row[3] for row in rows):.2f}; "
              f"cold / (dpkg-deb -x + bare gdb) {statistics.median(row[5] / (row[6] + row[3]) for row in rows):.2f}")


if __name__ == "__main__":
    main()
