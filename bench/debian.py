"""Benchmark: a Debian crash retraced from real Debian packages, cold and warm, against bare gdb.

Run as root after `make setup`:  .venv/bin/python -m bench.debian

The crash of Debian's own x86_64-linux-gnu-strings (testkit/debian.py)
and an apt repository of the real packages from the Debian archive (binutils,
libbinutils, libc6, zlib1g, libzstd1, and the -dbg packages of the first
three: 25 MiB of .debs, 127 MiB unpacked), through the real server, in one run:
  1. cold: a fresh package cache (every package unpacked by the worker), and
     the first task after the apt index changed (the release index rebuilt);
  2. warm: every package already unpacked;
  3. baselines: `dpkg-deb -x` of the same packages, and bare host gdb (no
     sandbox) with the server's batch commands on a sysroot unpacked beforehand;
  4. a release synced by retrace-server-reposync from a loopback HTTP mirror
     (InRelease signed, checked by gpgv) in full and --metadata-only: the
     disk each takes, and the cold retrace of each (the metadata-only one
     downloads its packages from the mirror).
Also bookworm main amd64 as a metadata-only release would hold it: the real
`Packages.xz` and `Contents-amd64.gz` (downloaded once), the pool they
describe, and the time and size of the release index built from them.
"""

import lzma
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.workspace import Workspace, bare_gdb_seconds
from retrace_server.packaging.repoindex import RepoIndex
from testkit.debian import (
    BINARIES,
    DEBIAN_RELEASE,
    PROGRAM,
    apt_archive,
    apt_release,
    crash_debian_program,
    debian_debs,
    debian_problem_dir,
    merged_usr_sysroot,
    unpack_debs,
)
from testkit.debuginfod import DEB_CACHE
from testkit.helpers import abrt_archive, timed_retrace
from testkit.reposync_admin import REPOSYNC, serve_http
from testkit.signing import TEST_KEY

RUNS = 5
DEBIAN_FILES = ("coredump", "executable", "package", "os_info")
ARCHIVE = "http://deb.debian.org/debian"


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


def tree_bytes(path):
    return sum(entry.stat().st_size for entry in Path(path).rglob("*") if entry.is_file() and not entry.is_symlink())


def synced(ws, name, url, *arguments):
    """A server whose release retrace-server-reposync synced from ``url``; ``(server, release dir)``."""
    TEST_KEY.ensure()
    root = ws.root(name)
    server = ws.server(root, extra_ini=(
        f"[gpgkeys]\ndebian = {TEST_KEY.public}\n[reposync debian]\ntype = apt\nmirrors = {url}\n"
        "suites = $CODENAME\ncomponents = main\ncodenames = 12:bookworm\n"))
    subprocess.run([str(REPOSYNC), "--config", str(server.config_path), "debian", "12", "x86_64", *arguments],
                   check=True, capture_output=True)
    return server, root / "repos" / DEBIAN_RELEASE


def real_index(work):
    """Bookworm main amd64 as a metadata-only release: its real Packages.xz and Contents-amd64.gz (downloaded
    once from the Debian archive into the test cache), their size against the pool they describe, and
    the time and size of the release index built from them."""
    cache = DEB_CACHE / "bookworm-index"
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("main/binary-amd64/Packages.xz", "main/Contents-amd64.gz"):
        target = cache / Path(name).name
        if not target.is_file():
            subprocess.run(["curl", "-sSf", "--max-time", "600", "-o", str(target),
                            f"{ARCHIVE}/dists/bookworm/{name}"], check=True)
    release = work / "index" / DEBIAN_RELEASE
    release.mkdir(parents=True)
    for path in cache.iterdir():
        os.link(path, release / path.name)
    metadata = sum(path.stat().st_size for path in cache.iterdir())
    with lzma.open(cache / "Packages.xz") as stream:
        pool = sum(int(line.split()[1]) for line in stream if line.startswith(b"Size: "))
    started = time.monotonic()
    RepoIndex.open(release, work / "index-cache").close()
    seconds = time.monotonic() - started
    index = next((work / "index-cache" / "index").glob("*.sqlite")).stat().st_size
    return metadata, pool, seconds, index


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
        mirror, url = serve_http(apt_archive(ws.work / "mirror", debs.values(), key=TEST_KEY))
        ws.callback(mirror.terminate)
        full, full_dir = synced(ws, "debian-full", url)
        thin, thin_dir = synced(ws, "debian-thin", url, "--metadata-only")
        full_cold = median_retrace(full, archive, lambda: shutil.rmtree(full.cache_dir / "rpms", ignore_errors=True))
        thin_cold = median_retrace(thin, archive, lambda: shutil.rmtree(thin.cache_dir / "rpms", ignore_errors=True))
        with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
            unpack = dpkg_unpack_seconds(list(debs.values()), Path(scratch))
            bare = bare_gdb_seconds(merged_usr_sysroot(list(debs.values()), Path(scratch) / "bare-sysroot"), PROGRAM,
                                    core, RUNS)
            indexed = real_index(Path(scratch))
        size = sum(deb.stat().st_size for deb in debs.values())
        print(f"packages: {len(debs)} real .debs, {size / 1048576:.1f} MiB")
        print(f"retrace, median of {RUNS}: cold {cold_seconds:.2f} s, cold after an index change "
              f"{reindexed:.2f} s, warm {warm:.2f} s")
        print(f"baselines: dpkg-deb -x of every package {unpack:.2f} s, bare gdb {bare:.2f} s")
        print(f"ratios: warm / bare gdb {warm / bare:.2f}; cold / (dpkg-deb -x + bare gdb) "
              f"{cold_seconds / (unpack + bare):.2f}")
        print(f"synced by reposync from a loopback mirror: full release {tree_bytes(full_dir) / 1048576:.1f} MiB, "
              f"metadata-only {tree_bytes(thin_dir) / 1024:.0f} KiB; cold retrace, median of {RUNS}: full "
              f"{full_cold:.2f} s, metadata-only (downloads included) {thin_cold:.2f} s, ratio "
              f"{thin_cold / full_cold:.2f}")
        metadata, pool, seconds, index = indexed
        print(f"bookworm main amd64: Packages.xz + Contents-amd64.gz {metadata / 1048576:.1f} MiB describe a pool of "
              f"{pool / 1073741824:.1f} GiB (amd64 + all); release index built in {seconds:.1f} s, "
              f"{index / 1048576:.1f} MiB")


if __name__ == "__main__":
    main()
