"""Benchmark of a coredump retrace, end to end through the real server.

Run as root after `make setup`:  .venv/bin/python -m bench.retrace

On the fixture crash (crasher + libcrash, each with -debuginfo, built by
rpmbuild; a real core from a private mount namespace), in one run:
  1. end-to-end time, upload -> FINISHED_SUCCESS as seen by a polling
     client: with a cold package cache, with a warm one, and for the first
     task after repomd.xml changed (index rebuilt, cache cold); plus the
     worker's own stage times from the task log;
  2. the floor: bare host gdb, no sandbox, with the same batch commands on
     the same core and a sysroot unpacked beforehand;
  3. the cold baseline: `rpm2cpio | cpio -id` of the same four packages;
  4. throughput: 10 tasks submitted at once to a warm server with
     MaxParallelTasks 2 on this 2-core machine; all must succeed.
"""

import os
import re
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from bench.workspace import Workspace
from retrace_server.analysis.gdb import exploitable_marker, gdb_argv
from testkit.cores import crash_installed, make_problem_dir
from testkit.distro import build_rpms, publish_release
from testkit.helpers import abrt_archive, timed_retrace

RELEASE_ID = "fedora-41-x86_64"
COLD_RUNS = 5
PAIRED_RUNS = 10
FLOOR_RUNS = 10
BURST = 10
POLL_SECONDS = 0.01
STAGE_LINE = re.compile(r"\] ([A-Z][a-z]+(?: [a-z]+)*): done in (\d+\.\d+) s$", re.M)


def retrace_once(server, archive, logs=None):
    """Seconds from the start of the upload to FINISHED_SUCCESS (the task log goes to ``logs``)."""
    seconds, log = timed_retrace(server, archive, poll=POLL_SECONDS)
    if logs is not None:
        logs.append(log)
    return seconds


def empty_cache(server, index_too=False):
    """Forget the unpacked packages (and with ``index_too`` the repodata index)."""
    for name in ("rpms", "index") if index_too else ("rpms",):
        shutil.rmtree(server.cache_dir / name, ignore_errors=True)
    # Flush the deletions now, not in the middle of the next measurement.
    os.sync()


def stage_medians(logs):
    """Median seconds of each worker stage, from the ``<stage>: done in N s`` log lines."""
    stages = {}
    for log in logs:
        for stage, seconds in STAGE_LINE.findall(log):
            stages.setdefault(stage, []).append(float(seconds))
    return {stage: statistics.median(values) for stage, values in stages.items()}


def print_stages(label, logs):
    medians = stage_medians(logs)
    stages = ", ".join(f"{stage} {seconds * 1000:.0f} ms" for stage, seconds in medians.items())
    print(f"worker stages, {label} (median): {stages}; sum {sum(medians.values()) * 1000:.0f} ms")


def unpack_baseline(rpms, target):
    """Seconds for `rpm2cpio X | cpio -idm` of every package into ``target``."""
    target.mkdir()
    started = time.monotonic()
    for rpm in rpms:
        rpm2cpio = subprocess.Popen(["rpm2cpio", str(rpm)], stdout=subprocess.PIPE)
        subprocess.run(["cpio", "-idm", "--quiet"], stdin=rpm2cpio.stdout, cwd=target, check=True)
        rpm2cpio.stdout.close()
        rpm2cpio.wait()
    return time.monotonic() - started


def bare_gdb(sysroot, core):
    started = time.monotonic()
    argv = gdb_argv(str(sysroot), "/usr/bin/crasher", str(core), exploitable_marker())
    result = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.monotonic() - started
    assert "crash_in_library (depth=0" in result.stdout, result.stdout[-2000:]
    return seconds


def burst(server, archive):
    """Wall seconds for BURST tasks submitted at once to finish, all successfully."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=BURST) as pool:
        durations = list(pool.map(lambda _: retrace_once(server, archive), range(BURST)))
    return time.monotonic() - started, durations


def fixture_crash(ws):
    """``(rpms, core, server root, problem directory)``: the fixture's packages built, crashed, published in a
    release of a server root in the workspace."""
    rpms = build_rpms(ws.work / "build")
    core = crash_installed(rpms, ws.work, "simple")
    root = ws.root("server")
    publish_release(root / "repos", RELEASE_ID, rpms)
    return rpms, core, root, make_problem_dir(ws.work / "problem", core)


def main():
    with Workspace("retrace") as ws:
        rpms, core, root, problem = fixture_crash(ws)
        archive = abrt_archive(problem)
        server = ws.server(root, MaxParallelTasks="2", MaxQueuedTasks="20", MaxUploadsPerClient="100")

        first, cold, cold_logs, warm_logs = [], [], [], []
        for _ in range(COLD_RUNS):
            empty_cache(server, index_too=True)
            first.append(retrace_once(server, archive))
        warm = []
        # Cold and warm runs alternate, so that drift on a shared machine hits both alike.
        for _ in range(PAIRED_RUNS):
            empty_cache(server)
            cold.append(retrace_once(server, archive, cold_logs))
            warm.append(retrace_once(server, archive, warm_logs))
        unpack = [unpack_baseline(rpms, ws.work / f"unpacked-{i}") for i in range(FLOOR_RUNS)]
        floor = [bare_gdb(ws.work / "unpacked-0", core) for _ in range(FLOOR_RUNS)]
        burst_seconds, burst_durations = burst(server, archive)

        cold_median, warm_median = statistics.median(cold), statistics.median(warm)
        floor_median, unpack_median = statistics.median(floor), statistics.median(unpack)
        package_bytes = sum(rpm.stat().st_size for rpm in rpms)
        print(f"fixture: {len(rpms)} packages, {package_bytes / 1024:.0f} KiB, core {core.stat().st_size / 1024:.0f} KiB, "
              f"upload {len(archive) / 1024:.0f} KiB (xz tar)")
        print(f"cold end-to-end (upload -> FINISHED, packages not yet unpacked), median of {PAIRED_RUNS}: "
              f"{cold_median * 1000:.0f} ms "
              f"(min {min(cold) * 1000:.0f}, max {max(cold) * 1000:.0f})")
        print(f"warm end-to-end, median of {PAIRED_RUNS}: {warm_median * 1000:.0f} ms "
              f"(min {min(warm) * 1000:.0f}, max {max(warm) * 1000:.0f})")
        print(f"first task after repomd.xml changed (index rebuilt, cache cold), median of {COLD_RUNS}: "
              f"{statistics.median(first) * 1000:.0f} ms")
        print_stages("cold", cold_logs)
        print_stages("warm", warm_logs)
        print(f"floor: bare host gdb on a ready sysroot, median of {FLOOR_RUNS}: {floor_median * 1000:.0f} ms")
        print(f"cold baseline: rpm2cpio | cpio of the {len(rpms)} packages, median of {FLOOR_RUNS}: "
              f"{unpack_median * 1000:.0f} ms")
        print(f"burst: {BURST} tasks at once, MaxParallelTasks 2, 2 cores: all succeeded in {burst_seconds:.2f} s "
              f"= {BURST / burst_seconds:.1f} tasks/s (per-task end-to-end median "
              f"{statistics.median(burst_durations) * 1000:.0f} ms, max {max(burst_durations) * 1000:.0f} ms)")
        print(f"ratio warm / bare gdb: {warm_median / floor_median:.2f}; "
              f"aim warm < 2 x gdb + 0.5 s = {(2 * floor_median + 0.5) * 1000:.0f} ms: "
              f"{'met' if warm_median < 2 * floor_median + 0.5 else 'NOT met'}")
        cold_aim = 1.3 * unpack_median + warm_median
        print(f"ratio cold / (unpack baseline + warm): {cold_median / (unpack_median + warm_median):.2f}; "
              f"aim cold <= 1.3 x unpack + warm = {cold_aim * 1000:.0f} ms: "
              f"{'met' if cold_median <= cold_aim else 'NOT met'}")



if __name__ == "__main__":
    main()
