"""Benchmark: from `retrace-server-interact TASK crash|gdb` to the debugger's prompt, against the same
debugger started bare.

Run as root after `make setup`:  .venv/bin/python -m bench.interact

A real server with AllowInteractive = 1 retraces, as interactive tasks, the kdump-compressed vmcore of the
Debian cloud kernel panicked under QEMU (type 4; its -dbg package in the release) and the fixture crash
(type 3).  Then, on a pseudo-terminal, in one run, median of 5 each, the two alternating:
  1. `retrace-server-interact TASK crash` until `crash> ` appears (the kernel cached: vmlinux and module
     debuginfo loaded with -i), against the session's own crash command run bare (no sandbox, no privilege
     drop, no config load);
  2. the same for `retrace-server-interact TASK gdb` until `(gdb) `.
"""

import json
import os
import pty
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.workspace import Workspace
from testkit.helpers import outcome, password_header, wait_final
from testkit.vmcore import kernel_debs, make_vmcores, vmcore_upload

RUNS = 5
INTERACT = Path(sys.executable).with_name("retrace-server-interact")


def seconds_to_prompt(argv, prompt):
    """Start ``argv`` on a new pseudo-terminal; seconds until ``prompt`` appears, then it is told to quit."""
    leader, follower = pty.openpty()
    started = time.monotonic()
    process = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, start_new_session=True,
                               env={**os.environ, "TERM": "vt100"})
    os.close(follower)
    seen = b""
    try:
        while prompt not in seen:
            ready, _, _ = select.select([leader], [], [], 120)
            if not ready:
                raise RuntimeError(f"no {prompt!r} from {argv[0]}: {seen[-500:]!r}")
            seen += os.read(leader, 65536)
        elapsed = time.monotonic() - started
        os.write(leader, b"quit\n")
        process.wait(timeout=60)
        return elapsed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)


def interactive_task(server, archive, content_type, task_type):
    response = server.post("/create", data=archive, headers={"Content-Type": content_type,
                                                             "X-Task-Type": str(task_type)})
    assert response.status_code == 201, response.text
    task_id = response.headers["X-Task-Id"]
    status = wait_final(server, task_id, password_header(response), timeout=300)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", outcome(status)
    return task_id


def compare(server, task_id, action, prompt):
    session = json.loads((server.save_dir / task_id / "session.json").read_text())
    interact = [str(INTERACT), "--config", str(server.config_path), task_id, action]
    # Interleaved, not one block after the other: this machine's speed drifts by seconds over a minute,
    # which blocks of crash loads would count as the sandbox's cost.
    pairs = [(seconds_to_prompt(interact, prompt), seconds_to_prompt(session["argv"], prompt)) for _ in range(RUNS)]
    through, bare = (statistics.median(times) for times in zip(*pairs))
    print(f"{action}: retrace-server-interact to the prompt {through:.2f} s, bare {Path(session['argv'][0]).name} "
          f"{bare:.2f} s, ratio {through / bare:.2f} (median of {RUNS})")


def main():
    with Workspace("interact") as ws:
        root = ws.root("interact")
        _, coredump_archive = ws.fixture_release(root)
        packages = root / "repos" / "debian-12-x86_64" / "Packages"
        packages.mkdir(parents=True)
        packages.parent.chmod(0o755)
        packages.chmod(0o755)
        (packages / kernel_debs().dbg.name).symlink_to(kernel_debs().dbg)
        server = ws.server(root, AllowInteractive="1")
        vmcores = make_vmcores(ws.work / "vmcores")
        tarball = vmcore_upload(vmcores.kdump, ws.work / "upload")
        vmcore_task = interactive_task(server, tarball.read_bytes(), "application/x-zstd-compressed-tar", 4)
        compare(server, vmcore_task, "crash", b"crash> ")
        coredump_task = interactive_task(server, coredump_archive, "application/x-xz-compressed-tar", 3)
        compare(server, coredump_task, "gdb", b"(gdb) ")


if __name__ == "__main__":
    main()
