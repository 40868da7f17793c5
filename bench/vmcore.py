"""Benchmark of a kernel vmcore retrace (X-Task-Type 2), end to end through the real server.

Run as root after `make setup`:  .venv/bin/python -m bench.vmcore

On a real kdump-compressed vmcore (a Debian cloud kernel panicked under
QEMU, testkit/vmcore.py; makedumpfile -c -d 31, ~15 MB), in one run:
  1. upload -> FINISHED_SUCCESS as seen by a polling client, cold (the
     vmlinux is extracted from the real -dbg package, 283 MB .deb) and warm
     (vmlinux in the kernel cache); plus the worker's stage times;
  2. the floor: bare host `crash -s vmlinux vmcore` with the same commands
     (sys, bt -a, bt, log, mod), no sandbox, vmlinux already extracted;
  3. the cold baseline: what an admin would do by hand to get the vmlinux,
     `dpkg-deb --fsys-tarfile | tar x` of the whole -dbg package.
"""

import os
import re
import shutil
import statistics
import subprocess
import time

from bench.retrace import print_stages
from bench.workspace import Workspace
from retrace_server.analysis.crash import COMMANDS, Markers
from testkit.helpers import outcome, password_header, wait_final, wait_settled
from testkit.vmcore import kernel_debs, make_vmcores

COLD_RUNS = int(os.environ.get("COLD_RUNS", 3))
WARM_RUNS = int(os.environ.get("WARM_RUNS", 5))
FLOOR_RUNS = 5


def tar_zstd(vmcore, work):
    directory = work / "upload"
    directory.mkdir()
    shutil.copy(vmcore, directory / "vmcore")
    archive = work / "upload.tar.zst"
    subprocess.run(["tar", "--zstd", "-cf", str(archive), "-C", str(directory), "vmcore"], check=True)
    return archive


def retrace_once(server, archive):
    """``(seconds from upload to FINISHED_SUCCESS, task log)``."""
    started = time.monotonic()
    with open(archive, "rb") as body:
        response = server.post("/create", data=body, headers={"Content-Type": "application/x-zstd-compressed-tar",
                                                               "X-Task-Type": "2"})
    assert response.status_code == 201, response.text
    task_id, auth = response.headers["X-Task-Id"], password_header(response)
    status = wait_final(server, task_id, auth, timeout=600, poll=0.05, settled=False)
    seconds = time.monotonic() - started
    wait_settled(server, task_id, auth, time.monotonic() + 600)  # the next run starts on a quiet server
    log = server.get(f"/{task_id}/log", headers=auth).text
    if status.headers["X-Task-Status"] != "FINISHED_SUCCESS":
        raise RuntimeError(f"task {task_id} failed: {outcome(status)}\n{log}")
    return seconds, log


def bare_crash(vmlinux, vmcore):
    started = time.monotonic()
    subprocess.run(["crash", "-s", "--no_crashrc", str(vmlinux), str(vmcore)], input=Markers().script(COMMANDS),
                   text=True, capture_output=True, check=True)
    return time.monotonic() - started


def full_unpack(deb, target):
    target.mkdir()
    started = time.monotonic()
    unpacker = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "x", "-C", str(target)], stdin=unpacker.stdout, check=True)
    unpacker.stdout.close()
    unpacker.wait()
    seconds = time.monotonic() - started
    shutil.rmtree(target)
    return seconds


def main():
    with Workspace("vmcore") as ws:
        debs = kernel_debs()
        vmcores = make_vmcores(ws.work / "vmcores")
        archive = tar_zstd(vmcores.kdump, ws.work)
        root = ws.root("vmcore-server")
        packages = root / "repos" / "debian-12-x86_64" / "Packages"
        packages.mkdir(parents=True, mode=0o755)
        (packages / debs.dbg.name).symlink_to(debs.dbg)
        server = ws.server(root)

        cold, cold_logs, warm, warm_logs = [], [], [], []
        for _ in range(COLD_RUNS):
            shutil.rmtree(server.cache_dir / "kernel", ignore_errors=True)
            seconds, log = retrace_once(server, archive)
            cold.append(seconds)
            cold_logs.append(log)
        for _ in range(WARM_RUNS):
            seconds, log = retrace_once(server, archive)
            warm.append(seconds)
            warm_logs.append(log)
        vmlinux = next((server.cache_dir / "kernel").glob("*/root/vmlinux"))
        floor = [bare_crash(vmlinux, vmcores.kdump) for _ in range(FLOOR_RUNS)]
        unpack = full_unpack(debs.dbg, ws.work / "unpacked")

        cold_median, warm_median, floor_median = map(statistics.median, (cold, warm, floor))
        print(f"kernel {vmcores.release}; vmcore {vmcores.kdump.stat().st_size / 2**20:.1f} MiB kdump-compressed, "
              f"upload {archive.stat().st_size / 2**20:.1f} MiB; -dbg package {debs.dbg.stat().st_size / 2**20:.0f} MiB, "
              f"vmlinux {vmlinux.stat().st_size / 2**20:.0f} MiB")
        print(f"cold (vmlinux extracted), upload -> FINISHED: median {cold_median:.2f} s of {COLD_RUNS} "
              f"({', '.join(f'{s:.2f}' for s in cold)})")
        print(f"warm (vmlinux cached),    upload -> FINISHED: median {warm_median:.2f} s of {WARM_RUNS} "
              f"({', '.join(f'{s:.2f}' for s in warm)})")
        print(f"floor: bare crash, same commands, no sandbox: median {floor_median:.2f} s of {FLOOR_RUNS}")
        print(f"baseline: full dpkg-deb | tar x of the -dbg package: {unpack:.2f} s")
        print(f"ratio warm / bare crash: {warm_median / floor_median:.2f}")
        print(f"ratio cold / (full unpack + bare crash): {cold_median / (unpack + floor_median):.2f}")
        print_stages("cold", cold_logs)
        print_stages("warm", warm_logs)
        median_cold = cold_logs[cold.index(cold_median)] if cold_median in cold else cold_logs[0]
        print("the median cold task's own timings:")
        for line in median_cold.splitlines():
            if re.search(r"Extracted the vmlinux|Module debuginfo|crash finished|Reused the vmlinux", line):
                print("  " + line.split("] ", 2)[-1])


if __name__ == "__main__":
    main()
