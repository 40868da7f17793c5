"""Benchmark: per-task environment setup, RetraceEnvironment = chroot against sysroot.

Run as root after `make setup`:  .venv/bin/python -m bench.environments

On the fixture crash with a repository that also holds a userland (glibc,
bash and gdb repackaged from this host, as the tests use), through the real
server, in one run:
  1. the first chroot task, which builds the release's gdb root with dnf;
  2. warm tasks in each environment (packages and gdb root already there):
     the "Preparing environment" stage as the task log times it, gdb's time,
     and end-to-end time (upload -> FINISHED_SUCCESS);
The aim: a warm chroot setup under 2 s (upstream's mock: 73 s and more).
"""

import re
import statistics

from bench.workspace import Workspace
from testkit.cores import crash_installed, make_problem_dir
from testkit.distro import build_rpms, publish_release
from testkit.helpers import abrt_archive, timed_retrace
from testkit.userland import build_userland_rpms

RELEASE_ID = "fedora-41-x86_64"
WARM_RUNS = 10
STAGE = re.compile(r"\] (Preparing environment for backtrace generation|Generating backtrace): done in (\d+\.\d+) s$",
                   re.M)
LINKED = re.compile(r"\] Assembled the \w+: (\d+) files linked in (\d+\.\d+) s$", re.M)


def run_task(server, archive):
    """``(end-to-end seconds, {stage: seconds}, log)`` of one successful retrace."""
    seconds, log = timed_retrace(server, archive)
    stages = {stage: float(value) for stage, value in STAGE.findall(log)}
    stages["linking"] = float(LINKED.search(log)[2])
    return seconds, stages, log


def median_of(runs, stage):
    return statistics.median(stages[stage] for _, stages, _ in runs)


def main():
    with Workspace("env") as ws:
        rpms = build_rpms(ws.work / "build")
        userland = build_userland_rpms(ws.work / "userland")
        archive = abrt_archive(make_problem_dir(ws.work / "problem", crash_installed(rpms, ws.work, "simple")))
        results = {}
        for environment in ("sysroot", "chroot"):
            root = ws.root(environment)
            publish_release(root / "repos", RELEASE_ID, [*rpms, *userland])
            server = ws.server(root, RetraceEnvironment=environment)
            first = run_task(server, archive)
            warm = [run_task(server, archive) for _ in range(WARM_RUNS)]
            results[environment] = (first, warm)
        prepare, gdb_stage = "Preparing environment for backtrace generation", "Generating backtrace"
        first_chroot = results["chroot"][0]
        built = re.search(r"Built the gdb root of \S+ \(gdb\) with dnf in (\d+\.\d+) s", first_chroot[2])
        print(f"fixture repository: {len(rpms)} crash packages + {len(userland)} userland packages "
              f"({sum(p.stat().st_size for p in userland) / 1048576:.0f} MiB)")
        print(f"first chroot task: gdb root built with dnf in {float(built[1]):.2f} s; "
              f"setup stage {first_chroot[1][prepare]:.2f} s; end-to-end {first_chroot[0]:.2f} s")
        for environment, (_, warm) in results.items():
            print(f"{environment}, warm, median of {WARM_RUNS}: setup {median_of(warm, prepare) * 1000:.0f} ms "
                  f"(of which linking the tree {median_of(warm, 'linking') * 1000:.0f} ms), "
                  f"gdb {median_of(warm, gdb_stage) * 1000:.0f} ms, "
                  f"end-to-end {statistics.median(seconds for seconds, _, _ in warm) * 1000:.0f} ms")
        chroot_setup = median_of(results["chroot"][1], prepare)
        sysroot_setup = median_of(results["sysroot"][1], prepare)
        print(f"ratio warm setup chroot / sysroot: {chroot_setup / sysroot_setup:.1f}; "
              f"aim chroot setup < 2 s: {'met' if chroot_setup < 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
