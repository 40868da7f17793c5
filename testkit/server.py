"""Start the real server (retrace-server-httpd: Apache + mod_wsgi, HTTPS) for tests.

Every server gets its own root under /var/tmp (never under a 0700 pytest
temp dir, which the unprivileged service user could not enter), its own
config file and a free loopback port.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from retrace_server.wsgi.httpd import make_certificate as launcher_certificate
from testkit.signing import trusted_keys_section

SERVICE_USER = "retrace"
_START_TIMEOUT = 60
DEFAULT_SETTINGS = {
    "RequireHTTPS": "1",
    "MaxParallelTasks": "2",
    "MaxQueuedTasks": "10",
    "MaxPackedSize": "8",
    "MaxUnpackedSize": "32",
    "MinStorageLeft": "0",
    "TaskIdLength": "9",
    "TaskPassLength": "32",
    # Every test client is 127.0.0.1.
    "MaxQueuedPerClient": "1000",
}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_certificate(directory):
    """A self-signed certificate for 127.0.0.1, made the way the launcher makes its own."""
    return launcher_certificate(Path(directory), "127.0.0.1")


def make_root(prefix="retrace-test-"):
    """A world-traversable directory with SaveDir, RepoDir and LogDir inside."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    root.chmod(0o755)
    user = pwd.getpwnam(SERVICE_USER)
    for name, mode in (("spool", 0o770), ("logs", 0o750), ("cache", 0o750)):
        path = root / name
        path.mkdir(mode=mode)
        os.chown(path, user.pw_uid, user.pw_gid)
    (root / "repos").mkdir(mode=0o755)
    os.chown(root / "repos", user.pw_uid, user.pw_gid)
    return root


def write_config(root, name="retrace-server.conf", extra_ini="", **overrides):
    """The config file; ``extra_ini`` is appended (sections other than [retrace]).

    Fedora releases trust the fixture signing key, unless ``extra_ini`` has a [gpgkeys] section of its own.
    """
    if "[gpgkeys]" not in extra_ini:
        extra_ini = trusted_keys_section() + extra_ini
    settings = {
        "SaveDir": root / "spool",
        "RepoDir": root / "repos",
        "LogDir": root / "logs",
        "CacheDir": root / "cache",
        **DEFAULT_SETTINGS,
        **overrides,
    }
    path = root / name
    path.write_text("[retrace]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()) + extra_ini)
    path.chmod(0o644)
    return path


class Server:
    """A running retrace-server-httpd; ``url`` ends without a slash."""

    def __init__(self, root, cert, key, launcher_args=(), **settings):
        self.root = Path(root)
        self.save_dir = self.root / "spool"
        self.repo_dir = self.root / "repos"
        self.log_dir = self.root / "logs"
        self.cache_dir = self.root / "cache"
        self.cert = cert
        self.config_path = write_config(self.root, **settings)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        launcher = Path(sys.executable).with_name("retrace-server-httpd")
        self.output = open(self.root / "launcher.out", "w+")
        self.process = subprocess.Popen(
            [str(launcher), "--config", str(self.config_path), "--listen", f"127.0.0.1:{self.port}",
             "--cert", str(cert), "--key", str(key), "--user", SERVICE_USER, *launcher_args],
            stdout=self.output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"retrace-server-httpd exited: {self.launcher_output()}")
            if "serving https://" in self.launcher_output():
                return
            time.sleep(0.05)
        raise RuntimeError(f"retrace-server-httpd did not start: {self.launcher_output()}")

    def launcher_output(self):
        self.output.flush()
        return (self.root / "launcher.out").read_text(errors="replace")

    def error_log(self):
        try:
            return (self.log_dir / "httpd" / "httpd_error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def dispatcher_pid(self):
        """The pid of this server's retrace-server-dispatcher."""
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"retrace_server.worker.dispatcher" in argv and str(self.config_path).encode() in argv:
                return int(proc.name)
        raise AssertionError("this server runs no dispatcher")

    def get(self, path, **kwargs):
        return requests.get(self.url + path, verify=str(self.cert), timeout=60, **kwargs)

    def post(self, path, **kwargs):
        return requests.post(self.url + path, verify=str(self.cert), timeout=120, **kwargs)

    def task_dirs(self):
        return sorted(p.name for p in self.save_dir.iterdir() if p.name.isdigit())

    def incoming(self):
        incoming = self.save_dir / ".incoming"
        return sorted(p.name for p in incoming.iterdir()) if incoming.exists() else []

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()


def remove_root(root):
    shutil.rmtree(root, ignore_errors=True)
