"""Benchmark: RetraceEnvironment = mock, cold and warm, against sysroot on the same crash.

Run as root where mock is installed (on Debian: docs/mock.md):
    .venv/bin/python -m bench.mock

One repository (the fixture crash packages plus the userland the tests
use: glibc, bash, gdb repackaged from this host), two servers on it, in
one run:
  1. sysroot: the first task and WARM_RUNS warm ones (the baseline);
  2. mock, cold: the first task writes the release's configuration and
     mock builds its root cache (installs gdb into a fresh chroot);
  3. mock, warm: the next tasks unpack the root cache.
Printed: end-to-end seconds (upload -> FINISHED_SUCCESS) and mock's step
times as the task log records them, and the ratios.
"""

import re
import shutil
import statistics
from pathlib import Path

from bench.workspace import Workspace
from retrace_server.environments.mock import find_mock, root_name
from testkit.cores import crash_installed, make_problem_dir
from testkit.distro import build_rpms, publish_release
from testkit.helpers import abrt_archive, timed_retrace
from testkit.userland import build_userland_rpms

RELEASE_ID = "fedora-41-x86_64"
WARM_RUNS = 5
# This host: no systemd-nspawn, no container images (docs/mock.md).
MOCK_SETTINGS = {"RetraceEnvironment": "mock", "MockIsolation": "simple", "MockBootstrap": "off"}
STEP = re.compile(r"\] mock (init|install)(?: \(([^)]*)\))?: (\d+\.\d) s$", re.M)
GDB = re.compile(r"\] gdb finished in (\d+\.\d+) s", re.M)


def steps(log):
    """``{step: seconds}`` of one mock task, with how init made the chroot."""
    found = {step: float(seconds) for step, _, seconds in STEP.findall(log)}
    found["gdb"] = float(GDB.search(log)[1])
    found["init by"] = next((how for step, how, _ in STEP.findall(log) if step == "init"), "")
    return found


def main():
    if find_mock("mock") is None:
        print("bench/mock.py: skipped, mock is not installed here (docs/mock.md runs it from its source on Debian)")
        return
    with Workspace("mock") as ws:
        rpms = build_rpms(ws.work / "build")
        userland = build_userland_rpms(ws.work / "userland")
        archive = abrt_archive(make_problem_dir(ws.work / "problem", crash_installed(rpms, ws.work, "simple")))
        root = ws.root("mock")
        publish_release(root / "repos", RELEASE_ID, [*rpms, *userland])
        sysroot = ws.server(root)
        sysroot_first = timed_retrace(sysroot, archive)[0]
        sysroot_warm = [timed_retrace(sysroot, archive)[0] for _ in range(WARM_RUNS)]
        mock_root = ws.root("mock-env")
        publish_release(mock_root / "repos", RELEASE_ID, [*rpms, *userland])
        mock = ws.server(mock_root, **MOCK_SETTINGS)
        ws.callback(lambda: [shutil.rmtree(path, ignore_errors=True) for path in
                             Path("/var/cache/mock").glob(f"{root_name(mock.cache_dir, RELEASE_ID)}*")])
        cold_seconds, cold_log = timed_retrace(mock, archive)
        warm = [timed_retrace(mock, archive) for _ in range(WARM_RUNS)]
        cold = steps(cold_log)
        warm_steps = [steps(log) for _, log in warm]
        warm_seconds = statistics.median(seconds for seconds, _ in warm)

        def median(step):
            return statistics.median(found[step] for found in warm_steps)

        print(f"repository: {len(rpms)} crash packages + {len(userland)} userland packages "
              f"({sum(p.stat().st_size for p in userland) / 1048576:.0f} MiB)")
        print(f"sysroot: first {sysroot_first:.2f} s, warm median of {WARM_RUNS} "
              f"{statistics.median(sysroot_warm):.2f} s end-to-end")
        print(f"mock cold: {cold_seconds:.2f} s end-to-end; init {cold['init']:.1f} s ({cold['init by']}), "
              f"install {cold['install']:.1f} s, gdb step {cold['gdb']:.1f} s")
        print(f"mock warm, median of {WARM_RUNS}: {warm_seconds:.2f} s end-to-end; init {median('init'):.1f} s "
              f"({', '.join(sorted({found['init by'] for found in warm_steps}))}), install {median('install'):.1f} s, "
              f"gdb step {median('gdb'):.1f} s")
        print(f"ratios: mock cold / warm {cold_seconds / warm_seconds:.1f}; init cold / warm "
              f"{cold['init'] / median('init'):.1f}; mock warm / sysroot warm "
              f"{warm_seconds / statistics.median(sysroot_warm):.0f}")


if __name__ == "__main__":
    main()
