"""Benchmark: a vmcore's md5 computed while it streams in, against a second pass over the stored file.

Run as root after `make setup`:  .venv/bin/python -m bench.vmcore_intake

The ELF vmcore of the Debian cloud kernel panicked under QEMU (256 MiB, testkit/vmcore.py), as a
zstd tar, uploaded to a real server (HTTPS, Apache, mod_wsgi) as X-Task-Type 2, median of 5: with
CalculateMd5 = 0, with CalculateMd5 = 1 (md5 while streaming), and, for the second pass, md5 of the stored
file read back from disk after the upload (page cache dropped first), as a separate step would.
"""

import hashlib
import statistics
import subprocess
import time

from bench.workspace import Workspace
from testkit.vmcore import make_vmcores, vmcore_upload

RUNS = 5


def upload_seconds(server, archive):
    with open(archive, "rb") as body:
        started = time.monotonic()
        response = server.post("/create", data=body, headers={"Content-Type": "application/x-zstd-compressed-tar",
                                                               "X-Task-Type": "2"})
        elapsed = time.monotonic() - started
    assert response.status_code == 201, response.text
    return elapsed, response.headers["X-Task-Id"]


def second_pass_seconds(path):
    subprocess.run(["sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches"], check=True)
    started = time.monotonic()
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return time.monotonic() - started


def main():
    with Workspace("intake") as ws:
        vmcores = make_vmcores(ws.work / "vmcores")
        archive = vmcore_upload(vmcores.elf, ws.work / "upload")
        results = {}
        for setting in ("0", "1"):
            # no release: the tasks fail at once and leave the uploaded vmcore in place
            server = ws.server(ws.root(f"md5-{setting}"), CalculateMd5=setting, MaxParallelTasks="1")
            runs = [upload_seconds(server, archive) for _ in range(RUNS)]
            results[setting] = statistics.median(seconds for seconds, _ in runs)
            if setting == "0":
                stored = server.save_dir / runs[-1][1] / "crash" / "vmcore"
                passes = statistics.median(second_pass_seconds(stored) for _ in range(RUNS))
        size = vmcores.elf.stat().st_size / 1048576
        print(f"vmcore {size:.0f} MiB, upload as zstd tar {archive.stat().st_size / 1048576:.1f} MiB; median of {RUNS}:")
        print(f"upload without md5 {results['0']:.2f} s, with md5 while streaming {results['1']:.2f} s "
              f"(+{results['1'] - results['0']:.2f} s); a second pass over the stored file {passes:.2f} s; "
              f"streaming costs {(results['1'] - results['0']) / passes:.2f} of a second pass")


if __name__ == "__main__":
    main()
