"""Benchmark of a coredump retrace, end to end through the real server.

Run as root after `make setup`:  .venv/bin/python bench/retrace.py

On the fixture crash (crasher + libcrash, each with -debuginfo, built by
rpmbuild; a real core from a private mount namespace), in one run:
  1. end-to-end time, upload -> FINISHED_SUCCESS as seen by a polling
     client, with a cold package cache (and index) and with a warm one;
  2. the floor: bare host gdb, no sandbox, with the same batch commands on
     the same core and a sysroot unpacked beforehand;
  3. the cold baseline: `rpm2cpio | cpio -id` of the same four packages;
  4. throughput: 10 tasks submitted at once to a warm server with
     MaxParallelTasks 2 on this 2-core machine; all must succeed.
"""

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrace.gdb import gdb_argv  # noqa: E402
from tests.fixtures.cores import crash_installed  # noqa: E402
from tests.fixtures.distro import build_rpms, publish_release  # noqa: E402
from tests.integration.helpers import abrt_archive, XZ_TAR, password_header  # noqa: E402
from tests.integration.server import Server, make_certificate, make_root, remove_root  # noqa: E402

RELEASE_ID = "fedora-41-x86_64"
COLD_RUNS = 5
WARM_RUNS = 10
FLOOR_RUNS = 10
BURST = 10
POLL_SECONDS = 0.01


def problem_dir(work, core):
    directory = work / "problem"
    directory.mkdir()
    shutil.copy(core, directory / "coredump")
    (directory / "executable").write_text("/usr/bin/crasher")
    (directory / "package").write_text("crasher-1.0-1.fc41")
    (directory / "os_release").write_text("Fedora release 41 (Forty One)\n")
    return directory


def retrace_once(server, archive):
    """Seconds from the start of the upload to FINISHED_SUCCESS."""
    started = time.monotonic()
    response = server.post("/create", data=archive, headers={"Content-Type": XZ_TAR, "X-Task-Type": "0"})
    assert response.status_code == 201, response.text
    task_id, auth = response.headers["X-Task-Id"], password_header(response)
    while True:
        status = server.get(f"/{task_id}", headers=auth)
        state = status.headers["X-Task-Status"]
        if state == "FINISHED_SUCCESS":
            return time.monotonic() - started
        if state == "FINISHED_FAILURE":
            raise RuntimeError(f"task {task_id} failed: {status.text}")
        time.sleep(POLL_SECONDS)


def empty_cache(server):
    for entry in server.cache_dir.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


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
    result = subprocess.run(gdb_argv(str(sysroot), "/usr/bin/crasher", str(core)), capture_output=True, text=True)
    seconds = time.monotonic() - started
    assert "crash_in_library (depth=0" in result.stdout, result.stdout[-2000:]
    return seconds


def burst(server, archive):
    """Wall seconds for BURST tasks submitted at once to finish, all successfully."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=BURST) as pool:
        durations = list(pool.map(lambda _: retrace_once(server, archive), range(BURST)))
    return time.monotonic() - started, durations


def main():
    work = Path(tempfile.mkdtemp(prefix="retrace-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    root = make_root("retrace-bench-server-")
    server = None
    try:
        rpms = build_rpms(work / "build")
        core = crash_installed(rpms, work, "simple")
        publish_release(root / "repos", RELEASE_ID, rpms)
        archive = abrt_archive(problem_dir(work, core))
        cert, key = make_certificate(work)
        server = Server(root, cert, key, MaxParallelTasks="2", MaxQueuedTasks="20")

        cold = []
        for _ in range(COLD_RUNS):
            empty_cache(server)
            cold.append(retrace_once(server, archive))
        warm = [retrace_once(server, archive) for _ in range(WARM_RUNS)]
        unpack = [unpack_baseline(rpms, work / f"unpacked-{i}") for i in range(FLOOR_RUNS)]
        floor = [bare_gdb(work / "unpacked-0", core) for _ in range(FLOOR_RUNS)]
        burst_seconds, burst_durations = burst(server, archive)

        cold_median, warm_median = statistics.median(cold), statistics.median(warm)
        floor_median, unpack_median = statistics.median(floor), statistics.median(unpack)
        package_bytes = sum(rpm.stat().st_size for rpm in rpms)
        print(f"fixture: {len(rpms)} packages, {package_bytes / 1024:.0f} KiB, core {core.stat().st_size / 1024:.0f} KiB, "
              f"upload {len(archive) / 1024:.0f} KiB (xz tar)")
        print(f"cold end-to-end (upload -> FINISHED), median of {COLD_RUNS}: {cold_median * 1000:.0f} ms "
              f"(min {min(cold) * 1000:.0f}, max {max(cold) * 1000:.0f})")
        print(f"warm end-to-end, median of {WARM_RUNS}: {warm_median * 1000:.0f} ms "
              f"(min {min(warm) * 1000:.0f}, max {max(warm) * 1000:.0f})")
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
    finally:
        if server is not None:
            server.stop()
        remove_root(root)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
