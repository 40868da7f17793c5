"""Benchmark: retracing via packages (a mirror) against via debuginfod, cold and warm.

Run as root after `make setup`:  .venv/bin/python -m bench.debuginfod

Two crashes: the fixture crash, and `bigcrash`, which dies 2,500 frames deep
inside a generated library with a few MB of debuginfo.  Two real servers
on the same RPMs: one with them as its mirror, one with no mirror and a
real debuginfod (elfutils) over them on loopback.  For each: the first task
with an empty cache (cold) and the median of 3 more (warm), as upload ->
FINISHED_SUCCESS; the bytes each way brought in (RPM files unpacked, or
files downloaded from debuginfod), and the shared cache on disk after it.
"""

import os
import re
import shutil
import statistics

from bench.workspace import Workspace
from retrace_server.elf import read_core
from retrace_server.packaging.cache import tree_bytes
from testkit.cores import crash_installed, make_problem_dir
from testkit.debuginfod import Debuginfod
from testkit.distro import BIGCRASH_PACKAGE, build_bigcrash, build_rpms, publish_release
from testkit.helpers import abrt_archive, timed_retrace

RELEASE_ID = "fedora-41-x86_64"
WARM_RUNS = 3
UNPACKED = re.compile(r"\] Unpacked (\S+) in ")


def bigcrash_problem(work, rpms):
    core = crash_installed(rpms, work, "go", program="/usr/bin/bigcrash")
    return make_problem_dir(work / "problem-big", core, "/usr/bin/bigcrash", BIGCRASH_PACKAGE)


def measure(server, archive, rpm_sizes):
    shutil.rmtree(server.cache_dir / "rpms", ignore_errors=True)
    shutil.rmtree(server.cache_dir / "buildid", ignore_errors=True)
    os.sync()
    cold, log = timed_retrace(server, archive)
    fetched = sum(rpm_sizes.get(nevra, 0) for nevra in UNPACKED.findall(log)) + tree_bytes(server.cache_dir / "buildid")
    on_disk = tree_bytes(server.cache_dir / "rpms") + tree_bytes(server.cache_dir / "buildid")
    warm = statistics.median(timed_retrace(server, archive)[0] for _ in range(WARM_RUNS))
    return cold, warm, fetched, on_disk


def main():
    with Workspace("dbgd") as ws:
        work = ws.work
        rpms = build_rpms(work / "build") + build_bigcrash(work, key=None)
        rpm_sizes = {rpm.name.removesuffix(".rpm"): rpm.stat().st_size for rpm in rpms}
        crashes = {
            "fixture crash": make_problem_dir(work / "problem", crash_installed(rpms[:4], work, "simple")),
            "bigcrash (large library)": bigcrash_problem(work, rpms),
        }
        archives = {name: abrt_archive(directory) for name, directory in crashes.items()}
        mirror_dir = publish_release(work / "mirror", RELEASE_ID, rpms)
        probe = read_core(crashes["fixture crash"] / "coredump").module_at("/usr/bin/crasher").build_id
        debuginfod = Debuginfod([mirror_dir / "Packages"], probe)
        ws.callback(debuginfod.stop)
        for way, settings in (("packages", {}), ("debuginfod", {"DebuginfodURLs": debuginfod.url,
                                                                "DebuginfodReleases": RELEASE_ID})):
            root = ws.root(way)
            if way == "packages":
                shutil.copytree(mirror_dir, root / "repos" / RELEASE_ID)
            server = ws.server(root, **settings)
            for name, archive in archives.items():
                cold, warm, fetched, on_disk = measure(server, archive, rpm_sizes)
                print(f"{name}, via {way}: cold {cold * 1000:.0f} ms, warm {warm * 1000:.0f} ms (median of "
                      f"{WARM_RUNS}), fetched {fetched / 1024:.0f} KiB, shared cache on disk {on_disk / 1024:.0f} KiB, "
                      "per-task tree: symlinks only")


if __name__ == "__main__":
    main()
