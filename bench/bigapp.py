"""Benchmark: a large application's crash (testkit/bigapp.py), cold and warm, against bare gdb.

Run as root after `make setup`:  .venv/bin/python -m bench.bigapp

bigapp: a program and 40 libraries, each its own RPM with a -debuginfo
whose debug files carry a .gdb_index (82 packages), crashed with an 80 MiB
heap through every library; one createrepo_c release; through the real
server, in one run:
  1. cold: package cache, trees and gdb indexes removed (median of RUNS);
  2. warm: the packages, the tree of an earlier task (median of RUNS);
  3. baselines: `rpm2cpio | cpio -idm` of the 82 packages, and bare host gdb
     (no sandbox) with the server's batch commands on the tree they make
     (median of RUNS).
Printed: each time, warm / bare gdb, cold / (unpack + bare gdb), and the
stages of the median warm and cold retraces from their task logs.
"""

import shutil
import statistics
import time

from bench.corpus import stages
from bench.retrace import unpack_baseline
from bench.workspace import Workspace, bare_gdb_seconds
from testkit.bigapp import PACKAGE, PROGRAM, build_bigapp
from testkit.cores import crash_installed, make_problem_dir
from testkit.distro import RELEASE_ID, publish_release
from testkit.helpers import XZ_TAR, abrt_archive, timed_retrace, wait_final

RUNS = 3
FORGET = ("rpms", "sysroots", "gdb-index")


def split_retrace(server, archive, forget=()):
    """The stages of one retrace (``forget``: cache directories removed first), with ``upload``: the POST
    until its answer (the body's xz decoded and written), and ``after``: from the answer to FINISHED."""
    for directory in forget:
        shutil.rmtree(server.cache_dir / directory, ignore_errors=True)
    started = time.monotonic()
    created = server.post("/create", data=archive, headers={"Content-Type": XZ_TAR, "X-Task-Type": "0"})
    answered = time.monotonic()
    auth = {"X-Task-Password": created.headers["X-Task-Password"]}
    status = wait_final(server, created.headers["X-Task-Id"], auth, poll=0.01, settled=False)
    ended = time.monotonic()
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", status.text
    wait_final(server, created.headers["X-Task-Id"], auth)
    log = server.get(f"/{created.headers['X-Task-Id']}/log", headers=auth).text
    return {**stages(ended - started, log), "upload": answered - started, "after": ended - answered,
            "unpacked by the task": log.count("] [I] Unpacked "),
            "reused": log.count(" from the package cache") + log.count(", unpacked meanwhile by another")}


def median_split(server, archive, forget=()):
    runs = sorted((split_retrace(server, archive, forget) for _ in range(RUNS)), key=lambda run: run["total"])
    return runs[RUNS // 2]


def main():
    with Workspace("bigapp") as ws:
        rpms = build_bigapp(ws.work / "bigapp")
        core = crash_installed(rpms, ws.work, "go", program=PROGRAM)
        archive = abrt_archive(make_problem_dir(ws.work / "problem", core, PROGRAM, PACKAGE))
        root = ws.root("bigapp")
        publish_release(root / "repos", RELEASE_ID, rpms)
        server = ws.server(root, MaxPackedSize="512", MaxUnpackedSize="1024")
        timed_retrace(server, archive)  # the release index is built once
        cold = median_split(server, archive, forget=FORGET)
        timed_retrace(server, archive)  # the tree of this package set
        warm = median_split(server, archive)
        unpack = statistics.median(unpack_baseline(rpms, ws.work / f"unpacked-{run}") for run in range(RUNS))
        bare = bare_gdb_seconds(ws.work / "unpacked-0", PROGRAM, core, RUNS)
        for run in range(RUNS):
            shutil.rmtree(ws.work / f"unpacked-{run}")
        print(f"bigapp: {len(rpms)} packages, core {core.stat().st_size / 1048576:.1f} MiB, "
              f"archive {len(archive) / 1048576:.1f} MiB")
        print(f"bare gdb {bare:.2f} s, rpm2cpio | cpio {unpack:.2f} s")
        for label, run in (("warm", warm), ("cold", cold)):
            print(f"{label}: {run['total']:.2f} s = upload {run['upload']:.2f} s + after it {run['after']:.2f} s; "
                  + ", ".join(f"{stage} {run[stage]:.3f} s" for stage in ("analysis", "environment", "gdb"))
                  + f"; packages unpacked by the task {run['unpacked by the task']}, found in the cache "
                  f"{run['reused']}")
        print(f"warm / bare gdb {warm['total'] / bare:.2f} (after the upload: {warm['after'] / bare:.2f}); "
              f"cold / (unpack + bare gdb) {cold['total'] / (unpack + bare):.2f} "
              f"(after the upload: {cold['after'] / (unpack + bare):.2f})")


if __name__ == "__main__":
    main()
