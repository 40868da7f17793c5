"""retrace-server-reposync as an admin runs it, and mirrors served over HTTP on loopback, for the tests."""

import socket
import subprocess
import sys
import time
from pathlib import Path

from retrace_server.packaging.repoindex import RepoIndex
from tests.integration.conftest import RELEASE_ID
from tests.integration.server import free_port, make_root, write_config

REPOSYNC = Path(sys.executable).with_name("retrace-server-reposync")


def serve_http(directory):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    return process, f"http://127.0.0.1:{port}/"


def serve_rsync(directory, module="fixture"):
    """An rsync daemon on loopback serving ``directory`` as ``module``; ``(process, rsync://... URL)``."""
    port = free_port()
    conf = Path(directory).parent / f"rsyncd-{port}.conf"
    conf.write_text(f"use chroot = no\n[{module}]\npath = {directory}\nread only = yes\n")
    process = subprocess.Popen(
        ["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}", "--address=127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    return process, f"rsync://127.0.0.1:{port}/{module}/"


def wait_for_port(port, process):
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"mirror server exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("mirror server did not start")


class Admin:
    """A RepoDir, CacheDir and config of our own, and the reposync command run as root."""

    def __init__(self, mirrors, **settings):
        self.root = make_root("retrace-reposync-")
        self.repo_dir = self.root / "repos"
        (self.root / "plugins").mkdir()
        (self.root / "plugins" / "fixture.conf").write_text(
            "[reposync fedora]\neverything = " + "\n    ".join(mirrors) + "\n"
        )
        self.config = write_config(self.root, PluginDir=self.root / "plugins", CacheDir=self.root / "cache", **settings)

    @property
    def release_dir(self):
        return self.repo_dir / RELEASE_ID

    def reposync(self, *arguments):
        return subprocess.run([str(REPOSYNC), "--config", str(self.config), *arguments],
                              capture_output=True, text=True, timeout=300)

    def sync(self, *extra):
        return self.reposync("fedora", "41", "x86_64", *extra)

    def packages(self):
        return sorted(path.name for path in (self.release_dir / "Packages").glob("*.rpm"))

    def indexed_builds(self):
        """NEVRAs the current metadata lists, read through the worker's own index."""
        index = RepoIndex.open(self.release_dir, self.root / "test-index")
        try:
            return sorted({package.nevra for package in index.all_packages()})
        finally:
            index.close()
