"""A real crash on Debian 13: a debootstrap'd trixie root, a program of it killed there as the kernel writes cores.

The root is made once (``testkit.debootstrap``); trixie's own packages of
the crash (coreutils, libc6 and its -dbg) are downloaded by apt inside the
root from the Debian archive, once, into the test cache.
"""

import shutil
import subprocess
import time
from pathlib import Path

from testkit.debootstrap import fresh_debian, in_root
from testkit.debuginfod import DEB_CACHE

TRIXIE_RELEASE = "debian-13-x86_64"
TRIXIE_PACKAGES = ("coreutils", "libc6", "libc6-dbg")
PROGRAM = "/usr/bin/sleep"
CACHE = DEB_CACHE / "trixie"


def trixie_root(work_dir):
    return fresh_debian("trixie", Path(work_dir) / "trixie-root")


def trixie_debs(root):
    """trixie's .debs of the crash (the versions the root has installed), downloaded in the root once."""
    CACHE.mkdir(parents=True, exist_ok=True)
    versions = {name: subprocess.run(in_root(root, "dpkg-query", "-W", "-f=${Version}", name), capture_output=True,
                                     text=True, check=True).stdout for name in ("coreutils", "libc6")}
    versions["libc6-dbg"] = versions["libc6"]
    wanted = {name: f"{name}_{version.replace(':', '%3a')}_amd64.deb" for name, version in versions.items()}
    if not all((CACHE / file_name).is_file() for file_name in wanted.values()):
        subprocess.run(in_root(root, "apt-get", "update", "-q"), check=True, capture_output=True, timeout=900)
        subprocess.run(in_root(root, "sh", "-c", "cd /tmp && apt-get download -q " + " ".join(
            f"{name}={version}" for name, version in versions.items())), check=True, capture_output=True,
            timeout=900)
        for file_name in wanted.values():
            shutil.copy(root / "tmp" / file_name, CACHE / file_name)
    return {name: CACHE / file_name for name, file_name in wanted.items()}


def crash_in_trixie(root):
    """The core of trixie's ``sleep`` killed with SIGSEGV inside the root (the kernel writes it in /tmp)."""
    crash_dir = root / "tmp" / "crash"
    shutil.rmtree(crash_dir, ignore_errors=True)
    crash_dir.mkdir(parents=True)
    sleeper = subprocess.Popen(in_root(root, "sh", "-c", f"cd /tmp/crash && ulimit -c unlimited && exec {PROGRAM} 613"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # bwrap starts, then sh becomes sleep
            pids = subprocess.run(["pgrep", "-f", f"^{PROGRAM} 613$"], capture_output=True, text=True).stdout.split()
            if pids:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("trixie's sleep did not start")
        time.sleep(0.2)
        subprocess.run(["kill", "-SEGV", pids[0]], check=True)
        sleeper.wait(timeout=30)
    finally:
        sleeper.kill()
    cores = sorted(crash_dir.glob("core*"))
    if not cores:
        raise RuntimeError("the kernel wrote no core in the trixie root (core_pattern must be a file name)")
    return cores[0]
