"""Benchmark: the corpus of real Debian programs (testkit/corpus.py), cold and warm, against bare gdb.

Run as root after `make setup`:  .venv/bin/python -m bench.corpus

Each program of the corpus is crashed once from its real .debs; one apt
release holds every package; through the real server, in one run, per
program:
  1. cold: a fresh package cache (the program's packages unpacked by the worker);
  2. warm before: the packages unpacked, but no tree and no gdb index kept
     from an earlier task (the removed ``<CacheDir>/sysroots`` and
     ``gdb-index``): what every warm retrace cost before issue 34;
  3. warm: the tree and the gdb indexes the earlier tasks left (median of RUNS);
  4. baselines: `dpkg-deb -x` of the program's packages, and bare host gdb (no
     sandbox) with the server's batch commands on a merged-/usr sysroot of them
     unpacked beforehand (median of RUNS).
Printed: each time, the ratios warm / bare gdb and cold / (dpkg-deb -x + bare
gdb), and the stages of the median warm retraces, before and after, from
their task logs (analysis, environment, gdb in its sandbox, and the rest:
upload, the worker's start, polling).
"""

import re
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
STAGES = (("analysis", r"Analyzing crash data: done in ([\d.]+) s"),
          ("environment", r"Preparing environment for backtrace generation: done in ([\d.]+) s"),
          ("gdb", r"Generating backtrace: done in ([\d.]+) s"))


def stages(seconds, log):
    """``{stage: seconds}`` of one retrace from its task log; ``rest`` is what the log does not time."""
    found = {name: float(re.search(pattern, log)[1]) for name, pattern in STAGES}
    return {**found, "rest": seconds - sum(found.values()), "total": seconds}


def median_run(server, archive, forget=()):
    """The stages of the median of RUNS retraces, removing ``forget`` (cache directories) before each."""
    runs = []
    for _ in range(RUNS):
        for directory in forget:
            shutil.rmtree(server.cache_dir / directory, ignore_errors=True)
        runs.append(stages(*timed_retrace(server, archive)))
    return sorted(runs, key=lambda run: run["total"])[RUNS // 2]


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
            for directory in ("rpms", "sysroots", "gdb-index"):
                shutil.rmtree(server.cache_dir / directory, ignore_errors=True)
            cold = stages(*timed_retrace(server, archive))
            before = median_run(server, archive, forget=("sysroots", "gdb-index"))
            timed_retrace(server, archive)  # the tree of this package set, its indexes built after the answer
            warm = median_run(server, archive)
            with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
                unpack = dpkg_unpack_seconds(one.debs, Path(scratch))
                sysroot = merged_usr_sysroot(one.debs, Path(scratch) / "sysroot")
                bare = bare_gdb_seconds(sysroot, one.program.executable, one.core, RUNS)
            rows.append((one.program.name, len(one.debs), bare, before, warm, cold, unpack))
        print(f"{'program':14} {'debs':>4} {'bare gdb':>9} {'before':>7} {'warm':>6} {'cold':>6} {'unpack':>7} "
              f"{'before/bare':>11} {'warm/bare':>9} {'cold/(unpack+bare)':>18}")
        for name, count, bare, before, warm, cold, unpack in rows:
            print(f"{name:14} {count:4d} {bare:8.2f}s {before['total']:6.2f}s {warm['total']:5.2f}s {cold['total']:5.2f}s "
                  f"{unpack:6.2f}s {before['total'] / bare:11.2f} {warm['total'] / bare:9.2f} "
                  f"{cold['total'] / (unpack + bare):18.2f}")
        print("\nstages of the median warm retrace, before -> after (seconds)")
        print(f"{'program':14} " + " ".join(f"{name:>13}" for name in ("analysis", "environment", "gdb", "rest")))
        for name, _count, _bare, before, warm, _cold, _unpack in rows:
            print(f"{name:14} " + " ".join(f"{before[stage]:5.3f}->{warm[stage]:5.3f}"
                                           for stage in ("analysis", "environment", "gdb", "rest")))
        print("\nstages of the cold retrace (seconds; environment: unpacking and the tree)")
        print(f"{'program':14} " + " ".join(f"{name:>11}" for name in ("analysis", "environment", "gdb", "rest")))
        for name, _count, _bare, _before, _warm, cold, _unpack in rows:
            print(f"{name:14} " + " ".join(f"{cold[stage]:11.3f}" for stage in ("analysis", "environment", "gdb", "rest")))
        median = statistics.median
        print(f"median ratios: warm before / bare gdb {median(row[3]['total'] / row[2] for row in rows):.2f}; "
              f"warm / bare gdb {median(row[4]['total'] / row[2] for row in rows):.2f}; "
              f"cold / (dpkg-deb -x + bare gdb) {median(row[5]['total'] / (row[6] + row[2]) for row in rows):.2f}")


if __name__ == "__main__":
    main()
