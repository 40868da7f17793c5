"""Benchmark: a Debian crash retraced from real Debian packages, cold and warm, against bare gdb.

Run as root after `make setup`:  .venv/bin/python bench/debian.py

The crash of Debian's own x86_64-linux-gnu-strings (tests/fixtures/debian.py)
and an apt repository of the real packages from the Debian archive (binutils,
libbinutils, libc6, zlib1g, libzstd1, and the -dbg packages of the first
three: 25 MiB of .debs, 127 MiB unpacked), through the real server, in one run:
  1. cold: a fresh package cache (every package unpacked by the worker), and
     the first task after the apt index changed (the release index rebuilt);
  2. warm: every package already unpacked;
  3. baselines: `dpkg-deb -x` of the same packages, and bare host gdb (no
     sandbox) with the server's batch commands on a sysroot unpacked beforehand.
Also the release index of a real apt index: bookworm main amd64 `Packages`
(this host's apt lists), its indexing time and size.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workspace import Workspace  # noqa: E402
from retrace.analysis.gdb import exploitable_marker, gdb_argv  # noqa: E402
from retrace.packaging.repoindex import RepoIndex  # noqa: E402
from tests.fixtures.debian import (BINARIES, DEBIAN_RELEASE, PROGRAM, apt_release, crash_debian_program,  # noqa: E402
                                   debian_debs, debian_problem_dir, merged_usr_sysroot, unpack_debs)
from tests.integration.helpers import abrt_archive, timed_retrace  # noqa: E402

RUNS = 5
DEBIAN_FILES = ("coredump", "executable", "package", "os_info")
APT_LISTS = Path("/var/lib/apt/lists")


def median_retrace(server, archive, before=lambda: None):
    times = []
    for _ in range(RUNS):
        before()
        times.append(timed_retrace(server, archive)[0])
    return statistics.median(times)


def dpkg_unpack_seconds(debs, work):
    times = []
    for run in range(RUNS):
        target = work / f"dpkg-{run}"
        target.mkdir()
        started = time.monotonic()
        unpack_debs(debs, target)
        times.append(time.monotonic() - started)
        shutil.rmtree(target)
    return statistics.median(times)


def bare_gdb_seconds(debs, core, work):
    sysroot = merged_usr_sysroot(debs, work / "bare-sysroot")
    argv = gdb_argv(str(sysroot), PROGRAM, str(core), exploitable_marker())
    times = []
    for _ in range(RUNS):
        started = time.monotonic()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def real_index(work):
    """Index this host's bookworm main amd64 Packages list (apt keeps it lz4-compressed)."""
    lists = sorted(APT_LISTS.glob("*_dists_bookworm_main_binary-amd64_Packages*"))
    if not lists:
        return None
    release = work / "index" / DEBIAN_RELEASE
    release.mkdir(parents=True)
    text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(lists[0])], capture_output=True,
                          check=True).stdout
    (release / "Packages").write_bytes(text)
    subprocess.run(["xz", "-k", "-6", str(release / "Packages")], check=True)
    packed = (release / "Packages.xz").stat().st_size
    (release / "Packages").unlink()
    started = time.monotonic()
    RepoIndex.open(release, work / "index-cache").close()
    seconds = time.monotonic() - started
    index = next((work / "index-cache" / "index").glob("*.sqlite")).stat().st_size
    stanzas = text.count(b"\nPackage: ") + 1
    return stanzas, len(text), packed, seconds, index


def main():
    with Workspace("debian") as ws:
        debs = debian_debs()
        core = crash_debian_program([debs[name] for name in BINARIES], ws.work)
        archive = abrt_archive(debian_problem_dir(ws.work / "problem", core), DEBIAN_FILES)
        root = ws.root("debian")
        repository = apt_release(root / "repos" / DEBIAN_RELEASE, debs.values())
        server = ws.server(root)
        timed_retrace(server, archive)  # the index is built once

        def cold():
            shutil.rmtree(server.cache_dir / "rpms", ignore_errors=True)
            os.sync()

        def index_changed():
            cold()
            os.utime(repository / "Packages.xz")

        cold_seconds = median_retrace(server, archive, cold)
        reindexed = median_retrace(server, archive, index_changed)
        warm = median_retrace(server, archive)
        with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
            unpack = dpkg_unpack_seconds(list(debs.values()), Path(scratch))
            bare = bare_gdb_seconds(list(debs.values()), core, Path(scratch))
            indexed = real_index(Path(scratch))
        size = sum(deb.stat().st_size for deb in debs.values())
        print(f"packages: {len(debs)} real .debs, {size / 1048576:.1f} MiB")
        print(f"retrace, median of {RUNS}: cold {cold_seconds:.2f} s, cold after an index change "
              f"{reindexed:.2f} s, warm {warm:.2f} s")
        print(f"baselines: dpkg-deb -x of every package {unpack:.2f} s, bare gdb {bare:.2f} s")
        print(f"ratios: warm / bare gdb {warm / bare:.2f}; cold / (dpkg-deb -x + bare gdb) "
              f"{cold_seconds / (unpack + bare):.2f}")
        if indexed:
            stanzas, raw, packed, seconds, index = indexed
            print(f"real index: bookworm main amd64 Packages, {stanzas} stanzas, {raw / 1048576:.1f} MiB "
                  f"({packed / 1048576:.1f} MiB as .xz), indexed in {seconds:.2f} s into {index / 1048576:.1f} MiB")


if __name__ == "__main__":
    main()
