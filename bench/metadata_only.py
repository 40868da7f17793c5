"""Benchmark: an RPM release mirrored in full against the same release kept as metadata only.

Run as root after `make setup`:  .venv/bin/python -m bench.metadata_only

One loopback HTTP mirror laid out as Fedora's: the binaries in one repository, their debuginfo in
another (the fixture crasher and libcrash, and `bigcrash`, whose library has a few MB of debuginfo;
all built by rpmbuild and signed).  retrace-server-reposync syncs it into two real servers, once in
full and once with --metadata-only, in the same run:
  1. the sync's time and the disk each release takes;
  2. each crash retraced with an empty package cache (cold; the metadata-only server downloads its
     packages from the mirror, checks size, SHA256 and signature, unpacks them), median of 5, and
     warm (the packages unpacked in the cache), median of 5.
The ratios are metadata-only / full.
"""

import os
import shutil
import statistics
import subprocess
import time

from bench.debuginfod import bigcrash_problem
from bench.workspace import RELEASE_ID, Workspace
from retrace_server.packaging.cache import tree_bytes
from testkit.cores import crash_installed, make_problem_dir
from testkit.distro import build_bigcrash, build_rpms, is_debuginfo, publish_release
from testkit.helpers import abrt_archive, timed_retrace
from testkit.reposync_admin import REPOSYNC, serve_http

RUNS = 5


def synced(ws, name, url, *arguments):
    """A server whose fedora-41-x86_64 retrace-server-reposync synced from ``url``; ``(server, seconds)``."""
    server = ws.server(ws.root(name), extra_ini=f"[reposync fedora]\nfedora = {url}everything/\n"
                                                f"fedora-debuginfo = {url}debug/\n")
    started = time.monotonic()
    subprocess.run([str(REPOSYNC), "--config", str(server.config_path), "fedora", "41", "x86_64", *arguments],
                   check=True, capture_output=True)
    return server, time.monotonic() - started


def median(server, archive, cold):
    times = []
    for _ in range(RUNS):
        if cold:
            shutil.rmtree(server.cache_dir / "rpms", ignore_errors=True)
            os.sync()
        times.append(timed_retrace(server, archive)[0])
    return statistics.median(times)


def main():
    with Workspace("thin") as ws:
        rpms = build_rpms(ws.work / "build") + build_bigcrash(ws.work)
        mirror = ws.work / "mirror"
        publish_release(mirror, "everything", [rpm for rpm in rpms if not is_debuginfo(rpm)])
        publish_release(mirror, "debug", [rpm for rpm in rpms if is_debuginfo(rpm)])
        process, url = serve_http(mirror)
        ws.callback(process.terminate)
        crashes = {
            "fixture crash": abrt_archive(make_problem_dir(ws.work / "problem",
                                                           crash_installed(rpms[:4], ws.work, "simple"))),
            "bigcrash": abrt_archive(bigcrash_problem(ws.work, rpms)),
        }
        full, full_sync = synced(ws, "full", url)
        thin, thin_sync = synced(ws, "thin", url, "--metadata-only")
        size = sum(rpm.stat().st_size for rpm in rpms)
        print(f"mirror: {len(rpms)} RPMs, {size / 1048576:.1f} MiB, in two repositories")
        print(f"reposync: full {full_sync:.2f} s, {tree_bytes(full.root / 'repos' / RELEASE_ID) / 1048576:.2f} MiB; "
              f"metadata-only {thin_sync:.2f} s, {tree_bytes(thin.root / 'repos' / RELEASE_ID) / 1024:.0f} KiB")
        for name, archive in crashes.items():
            timed_retrace(full, archive)  # the release indexes are built once
            timed_retrace(thin, archive)
            full_cold, thin_cold = median(full, archive, True), median(thin, archive, True)
            full_warm, thin_warm = median(full, archive, False), median(thin, archive, False)
            print(f"{name}, median of {RUNS}: cold full {full_cold:.2f} s, metadata-only {thin_cold:.2f} s "
                  f"(ratio {thin_cold / full_cold:.2f}); warm full {full_warm:.2f} s, metadata-only "
                  f"{thin_warm:.2f} s (ratio {thin_warm / full_warm:.2f})")


if __name__ == "__main__":
    main()
