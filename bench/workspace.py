"""One benchmark run's scratch space: a work directory, server roots, servers and helpers.

Every benchmark builds fixtures under a work directory, starts real servers
on roots of their own and must leave nothing behind, whatever fails; the
``Workspace`` undoes everything registered with it, newest first (servers
stop before their roots go, the work directory goes last).
"""

import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from retrace_server.analysis.gdb import exploitable_marker, gdb_argv
from testkit.cores import crash_installed, make_problem_dir
from testkit.distro import RELEASE_ID, build_rpms, publish_release
from testkit.helpers import abrt_archive
from testkit.server import Server, make_certificate, make_root, remove_root


class Workspace(contextlib.ExitStack):
    def __init__(self, name):
        super().__init__()
        self.work = Path(tempfile.mkdtemp(prefix=f"retrace-bench-{name}-", dir="/var/tmp"))
        self.work.chmod(0o755)
        self.callback(shutil.rmtree, self.work, ignore_errors=True)
        self.cert, self.key = make_certificate(self.work)

    def root(self, name):
        """An empty server root, removed at the end."""
        root = make_root(f"retrace-bench-{name}-")
        self.callback(remove_root, root)
        return root

    def server(self, root, **settings):
        """The real retrace-server-httpd on ``root``, stopped at the end."""
        server = Server(root, self.cert, self.key, **settings)
        self.callback(server.stop)
        return server

    def fixture_release(self, root):
        """The fixture packages published as RELEASE_ID in ``root/repos``.

        Returns ``(rpms, the ABRT archive of their crash)``.
        """
        rpms = build_rpms(self.work / "build")
        archive = abrt_archive(make_problem_dir(self.work / "problem", crash_installed(rpms, self.work, "simple")))
        publish_release(root / "repos", RELEASE_ID, rpms)
        return rpms, archive


def bare_gdb_seconds(sysroot, program, core, runs, gdb="gdb"):
    """The floor of a retrace: ``gdb`` bare (no sandbox) with the server's batch commands on a sysroot
    unpacked beforehand; the median of ``runs``."""
    argv = gdb_argv(str(sysroot), program, str(core), exploitable_marker(), gdb)
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.monotonic() - started)
    return statistics.median(times)
