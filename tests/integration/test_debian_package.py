"""debian/ built by the real dpkg-buildpackage (debhelper, pybuild) from the checkout
(tests/integration/distro_packages.py says what any package must hold), then installed by apt into a
fresh Debian 12 made by debootstrap, where the installed server retraces a crash: the fresh-machine check."""

import gzip
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from retrace_server import __version__
from testkit.debootstrap import fresh_debian, in_root
from testkit.helpers import submit, wait_final
from testkit.server import free_port
from testkit.signing import TEST_KEY
from tests.integration.distro_packages import ROOT, check_commands_run, check_layout

HTTPD_CONF = "/etc/apache2/conf-available/retrace-server.conf"


@pytest.fixture(scope="module")
def built(debian_package, tmp_path_factory):
    """The .deb's file list and its files unpacked (built once for the session: conftest's debian_package)."""
    top = tmp_path_factory.mktemp("deb-contents")
    package = top / debian_package.name
    shutil.copy(debian_package, package)
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(package)], capture_output=True, check=True).stdout
    files = {name[1:].rstrip("/") for name in subprocess.run(["tar", "-t"], input=listing, capture_output=True,
                                                             check=True).stdout.decode().split()}
    unpacked = top / "unpacked"
    subprocess.run(["dpkg-deb", "-x", str(package), str(unpacked)], check=True)
    return files, unpacked


def test_lintian_finds_nothing_but_what_the_overrides_explain(built):
    """lintian -EvIL +pedantic (every tag, pedantic ones too); the accepted tags and why are in one place,
    debian/retrace-server.lintian-overrides."""
    package = next(built[1].parent.glob("retrace-server_*_all.deb"))
    ran = subprocess.run(["lintian", "-EvIL", "+pedantic", "--fail-on", "none", str(package)], capture_output=True,
                         text=True, timeout=600)
    said = [line for line in (ran.stdout + ran.stderr).splitlines()
            if re.match(r"[EWIPX]: ", line)]
    assert said == [], "\n".join(said)
    overrides = (ROOT / "debian" / "retrace-server.lintian-overrides").read_text().splitlines()
    for number, line in enumerate(overrides):
        if line.startswith("retrace-server:"):
            assert any(previous.startswith("#") for previous in overrides[max(0, number - 3):number]), line


def test_the_man_pages_are_reproducible_and_the_units_documentation_exists(built):
    files, unpacked = built
    for unit in sorted((unpacked / "lib" / "systemd" / "system").glob("*.service")):
        for link in re.search(r"^Documentation=(.*)$", unit.read_text(), re.M)[1].split():
            if link.startswith("file://"):
                assert link.removeprefix("file://") in files, f"{unit.name}: {link} is not in the package"
            else:
                name, section = re.fullmatch(r"man:([\w.-]+)\((\d)\)", link).groups()
                assert f"/usr/share/man/man{section}/{name}.{section}.gz" in files, f"{unit.name}: {link}"
    changelog_date = re.search(r"^ -- .*>  (.*)$", (ROOT / "debian" / "changelog").read_text(), re.M)[1]
    day = time.strftime("%Y-%m-%d", time.strptime(changelog_date[5:16], "%d %b %Y"))
    assert f'"{day}"' in gzip.decompress((unpacked / "usr/share/man/man5/retrace-server.conf.5.gz").read_bytes()
                                          ).decode().splitlines()[0], "dated by the changelog (SOURCE_DATE_EPOCH)"


def test_the_changelog_s_version_is_the_code_s():
    assert re.match(r"retrace-server \(([^)]+)\)", (ROOT / "debian" / "changelog").read_text())[1] == __version__


def test_the_deb_holds_what_the_code_the_httpd_configuration_the_units_and_cron_name(built):
    files, unpacked = built
    check_layout(files, unpacked, HTTPD_CONF, "/lib/systemd/system")


def test_the_deb_s_commands_run_from_its_own_files(built):
    files, unpacked = built
    check_commands_run(unpacked, check_layout(files, unpacked, HTTPD_CONF, "/lib/systemd/system"))


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory, certificate, release_dir):
    """The built .deb installed by apt (which resolves its dependencies from the Debian archive) into a
    fresh bookworm, with the fixture release as its mirror and a config naming only what a test must."""
    root = fresh_debian("bookworm", tmp_path_factory.mktemp("bookworm") / "root")
    package = next(built[1].parent.glob("retrace-server_*_all.deb"))
    shutil.copy(package, root / "tmp" / package.name)
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", f"/tmp/{package.name}"]):
        ran = subprocess.run(in_root(root, *argv), capture_output=True, text=True, timeout=1800)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    shutil.copytree(release_dir, root / "var/cache/retrace-server/fedora-41-x86_64")
    cert, key = certificate
    etc = root / "etc/retrace-server"
    for source, name in ((cert, "test.crt"), (key, "test.key"), (Path(TEST_KEY.public), "fedora.asc")):
        shutil.copy(source, etc / name)
    with open(etc / "retrace-server.conf", "a") as config:
        config.write("\n[gpgkeys]\nfedora = /etc/retrace-server/fedora.asc\n")
    subprocess.run(in_root(root, "sed", "-i", "s/^MinStorageLeft = .*/MinStorageLeft = 0/",
                           "/etc/retrace-server/retrace-server.conf"), check=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)  # 600 MiB


class InstalledServer:
    """retrace-server-httpd of the installed package, run in the bookworm root."""

    def __init__(self, root, cert):
        self.root, self.cert, self.port = root, cert, free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.output = open(root / "tmp" / "launcher.out", "w+")
        self.process = subprocess.Popen(in_root(
            root, "/usr/bin/retrace-server-httpd", "--listen", f"127.0.0.1:{self.port}",
            "--cert", "/etc/retrace-server/test.crt", "--key", "/etc/retrace-server/test.key", "--user", "retrace"),
            stdout=self.output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while "serving https://" not in (root / "tmp" / "launcher.out").read_text():
            assert self.process.poll() is None and time.monotonic() < deadline, (
                (root / "tmp" / "launcher.out").read_text())
            time.sleep(0.1)

    def get(self, path, **kwargs):
        return requests.get(self.url + path, verify=str(self.cert), timeout=60, **kwargs)

    def post(self, path, **kwargs):
        return requests.post(self.url + path, verify=str(self.cert), timeout=120, **kwargs)

    def stop(self):
        """SIGTERM to the whole session, as Ctrl-C in a terminal: bubblewrap's --die-with-parent would end only
        the launcher, and leave Apache and the dispatcher running without it."""
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)
        self.output.close()


def test_the_deb_installed_by_apt_on_a_fresh_bookworm_serves_and_retraces_a_crash(installed, certificate,
                                                                                   problem_dir):
    assert not (installed / "work").exists() and not list(installed.glob("**/.venv")), "no checkout, no venv"
    server = InstalledServer(installed, certificate[0])
    try:
        task_id, auth = submit(server, problem_dir)
        status = wait_final(server, task_id, auth, timeout=180)
        log = server.get(f"/{task_id}/log", headers=auth).text
        assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
        assert "crash_in_library" in server.get(f"/{task_id}/backtrace", headers=auth).text
    finally:
        server.stop()
    assert (installed / "var/spool/retrace-server" / task_id).is_dir(), "the task lives in the installed spool"
