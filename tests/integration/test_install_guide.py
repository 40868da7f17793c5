"""docs/install.md followed verbatim on a fresh Debian 12: every `sh` block of "On Debian 12, from the .deb", in
order, as root in a bookworm made by debootstrap, with the .deb the suite built, against the real Debian archive;
the last block retraces a real crash of a program of that machine.

The root has no systemd (bubblewrap, the host's kernel and network): a stand-in `systemctl` starts a unit's
ExecStart as its User, and Apache with apache2ctl, which is what the units and Debian's apache2 service do.
"""

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from testkit.debootstrap import fresh_debian, in_root
from tests.integration.distro_packages import ROOT

GUIDE = ROOT / "docs" / "install.md"
STAND_IN_SYSTEMCTL = r"""#!/bin/sh
# systemctl for a root without systemd (tests/integration/test_install_guide.py).
set -e
action=$1; shift
now=no
if [ "$1" = --now ]; then now=yes; shift; fi
for unit in "$@"; do
    echo "$action $unit" >> /var/log/systemctl-stand-in.log
    case "$action:$unit" in
        restart:apache2|start:apache2|reload:apache2) apache2ctl restart ;;
        enable:*.timer) ;;
        enable:*.service|start:*.service)
            if [ "$action" = enable ] && [ "$now" = no ]; then continue; fi
            file=/lib/systemd/system/$unit
            user=$(sed -n 's/^User=//p' "$file")
            command=$(sed -n 's/^ExecStart=//p' "$file")
            setsid runuser -u "$user" -- $command > "/var/log/$unit.log" 2>&1 < /dev/null &
            ;;
        *) echo "systemctl stand-in: '$action $unit' is not one the guide uses" >&2; exit 1 ;;
    esac
done
"""


def debian_blocks():
    """The guide's Debian part, its `sh` blocks in order."""
    text = GUIDE.read_text()
    part = text.split("\n## On Debian 12, from the .deb\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```sh\n(.*?)^```$", part, re.S | re.M)


def stop_everything_in(root):
    """Every process whose root is ``root`` (Apache, the dispatcher, workers): the test ends them all."""
    wanted = root.stat()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:  # the process's / is the root directory itself (bubblewrap pivoted into it)
                seen = (entry / "root").stat()
                if (seen.st_dev, seen.st_ino) == (wanted.st_dev, wanted.st_ino):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue


def test_the_guide_has_the_steps_this_test_runs():
    blocks = debian_blocks()
    assert len(blocks) == 6
    assert blocks[0].startswith("apt-get install -y ./retrace-server_*_all.deb")
    assert "retrace-client batch" in blocks[-1]


def test_following_the_debian_guide_verbatim_retraces_a_crash_of_that_machine(debian_package, tmp_path_factory):
    root = fresh_debian("bookworm", tmp_path_factory.mktemp("install-guide") / "root")
    try:
        shutil.copy(debian_package, root / "root" / debian_package.name)
        (root / "usr/sbin/systemctl").write_text(STAND_IN_SYSTEMCTL)
        (root / "usr/sbin/systemctl").chmod(0o755)
        ran = subprocess.run(in_root(root, "apt-get", "update", "-q"), capture_output=True, text=True, timeout=900)
        assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
        said = ""
        for number, block in enumerate(debian_blocks(), 1):
            # This machine reaches HTTPS through a CA of its own: from block 2 on (ca-certificates is installed
            # by then, and must be writable while it is), the root trusts what the host trusts.
            ran = subprocess.run(in_root(root, "bash", "-e", "-c", f"cd /root\n{block}", host_trust=number > 1),
                                 capture_output=True, text=True, timeout=1800)
            said = ran.stdout + ran.stderr
            assert ran.returncode == 0, f"block {number} of docs/install.md failed:\n{block}\n{said[-4000:]}"
            assert "Traceback" not in said, f"block {number}:\n{said[-4000:]}"
        backtrace = said[said.find("Files given to gdb"):][:6000]
        assert "debian-12-x86_64" in said, "the settings name the synced release"
        assert re.search(r"^#0\s+(0x[0-9a-f]+ in )?\S*nanosleep \(", said, re.M), backtrace
        assert re.search(r"nanosleep.* at \S+\.c:\d+", said), f"libc's frames have file and line: {backtrace}"
        started = (root / "var/log/systemctl-stand-in.log").read_text().split()
        assert "retrace-server-dispatcher.service" in started and "apache2" in started
    finally:
        stop_everything_in(root)
        shutil.rmtree(root, ignore_errors=True)
