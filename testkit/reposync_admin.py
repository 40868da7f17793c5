"""retrace-server-reposync as an admin runs it, and mirrors served over HTTP on loopback, for the tests."""

import socket
import subprocess
import sys
import time
from pathlib import Path

from retrace_server.packaging.repoindex import RepoIndex
from retrace_server.wsgi.httpd import find_apache, find_module_dir
from testkit.distro import RELEASE_ID
from testkit.server import free_port, make_root, write_config

REPOSYNC = Path(sys.executable).with_name("retrace-server-reposync")


def serve_http(directory):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    return process, f"http://127.0.0.1:{port}/"


class ApacheMirror:
    """Apache httpd serving ``directory`` on loopback, as a distribution's mirrors are served: ranged requests
    (resumed downloads), and with ``tls`` (a Certificates) HTTPS that asks every client for a certificate
    signed by ``tls.ca``, as the RHEL CDN does.  ``requests()`` are the access log's ``(path, status, bytes)``."""

    def __init__(self, directory, run_dir, tls=None, modules=(), extra_lines=()):
        """``modules`` to load and ``extra_lines`` of configuration beyond serving ``directory``."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True)
        self.port = free_port()
        module_dir, _ = find_module_dir()
        modules = ["mpm_event", "authz_core", "unixd", "log_config", *(["ssl"] if tls else []), *modules]
        lines = [f'ServerRoot "{self.run_dir}"', f"Listen 127.0.0.1:{self.port}", "ServerName 127.0.0.1",
                 *(f'<IfModule !{name}_module>\n    LoadModule {name}_module "{module_dir}/mod_{name}.so"\n</IfModule>'
                   for name in modules),
                 f'PidFile "{self.run_dir}/httpd.pid"', f'DefaultRuntimeDir "{self.run_dir}"', "User nobody",
                 "Group nogroup", f'ErrorLog "{self.run_dir}/error.log"', 'LogFormat "%U %>s %B" mirror',
                 f'CustomLog "{self.run_dir}/access.log" mirror', f'DocumentRoot "{directory}"',
                 f'<Directory "{directory}">', "    Require all granted", "</Directory>"]
        if tls:
            lines += ["SSLEngine on", f'SSLCertificateFile "{tls.server_cert}"', f'SSLCertificateKeyFile "{tls.server_key}"',
                      f'SSLCACertificateFile "{tls.ca}"', "SSLVerifyClient require", "SSLVerifyDepth 1"]
        (self.run_dir / "httpd.conf").write_text("\n".join([*lines, *extra_lines]) + "\n")
        self.process = subprocess.Popen([find_apache(), "-f", str(self.run_dir / "httpd.conf"), "-DFOREGROUND"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, self.process)
        except RuntimeError:
            log = self.run_dir / "error.log"
            raise RuntimeError(log.read_text(errors="replace") if log.exists() else "Apache did not start") from None
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/"

    def requests(self):
        log = self.run_dir / "access.log"
        return [(path, int(status), 0 if sent == "-" else int(sent))
                for path, status, sent in (line.split() for line in log.read_text().splitlines())] if log.exists() else []

    def stop(self):
        self.process.terminate()
        self.process.wait()


class Certificates:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA (openssl)."""

    def __init__(self, directory):
        directory = Path(directory)
        directory.mkdir(parents=True)
        self.ca, ca_key = directory / "ca.crt", directory / "ca.key"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                 "-subj", "/CN=Test mirror CA", "-keyout", ca_key, "-out", self.ca)
        self.server_cert, self.server_key = self._signed(directory, "server", "127.0.0.1", ca_key,
                                                         "subjectAltName=IP:127.0.0.1")
        self.client_cert, self.client_key = self._signed(directory, "client", "entitlement-4242", ca_key,
                                                         "extendedKeyUsage=clientAuth")
        for path in directory.iterdir():
            path.chmod(0o644)  # the service user's reposync reads the client's, Apache's children the server's

    def _signed(self, directory, name, common_name, ca_key, extension):
        cert, key, request = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-subj", f"/CN={common_name}", "-keyout", key, "-out", request)
        (directory / f"{name}.ext").write_text(extension + "\n")
        _openssl("x509", "-req", "-in", request, "-CA", self.ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
                 "-extfile", directory / f"{name}.ext", "-out", cert)
        return cert, key


def _openssl(*arguments):
    subprocess.run(["openssl", *map(str, arguments)], check=True, capture_output=True, stdin=subprocess.DEVNULL)


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

    def __init__(self, mirrors, plugin_lines=(), **settings):
        """``plugin_lines``: more ``key = value`` lines of the fixture plugin (its TLS files)."""
        self.root = make_root("retrace-reposync-")
        self.repo_dir = self.root / "repos"
        (self.root / "plugins").mkdir()
        (self.root / "plugins" / "fixture.conf").write_text(
            "[reposync fedora]\neverything = " + "\n    ".join(mirrors) + "\n" + "".join(f"{line}\n" for line in plugin_lines)
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
