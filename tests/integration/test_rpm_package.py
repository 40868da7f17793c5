"""retrace-server.spec built by the real rpmbuild from the checkout (tests/integration/distro_packages.py says
what any package must hold)."""

import re
import subprocess

import pytest

from retrace_server import __version__
from tests.integration.distro_packages import ROOT, check_commands_run, check_layout, source_tree_tar

SPEC = ROOT / "retrace-server.spec"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    top = tmp_path_factory.mktemp("rpmbuild")
    (top / "SOURCES").mkdir()
    name = f"retrace-server-{__version__}"
    source_tree_tar(top / "SOURCES" / f"{name}.tar.gz", name)
    # --nodeps: the BuildRequires name Fedora packages, which Debian's rpm database does not hold.
    ran = subprocess.run(["rpmbuild", "-ba", "--nodeps", "--define", f"_topdir {top}", str(SPEC)],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert list((top / "SRPMS").glob("*.src.rpm")), "rpmbuild -ba also makes the source package"
    package = next((top / "RPMS" / "noarch").glob(f"{name}-*.noarch.rpm"))
    files = subprocess.run(["rpm", "-qlp", str(package)], capture_output=True, text=True, check=True).stdout.split()
    unpacked = top / "unpacked"
    unpacked.mkdir()
    cpio = subprocess.Popen(["rpm2cpio", str(package)], stdout=subprocess.PIPE)
    subprocess.run(["cpio", "-idm", "--quiet"], stdin=cpio.stdout, cwd=unpacked, check=True)
    cpio.wait()
    return set(files), unpacked


def test_the_spec_s_version_is_the_code_s():
    assert re.search(r"^Version:\s+(\S+)$", SPEC.read_text(), re.M)[1] == __version__


def test_the_rpm_holds_what_the_code_the_httpd_configuration_the_units_and_cron_name(built):
    files, unpacked = built
    check_layout(files, unpacked, "/etc/httpd/conf.d/retrace-server.conf", "/usr/lib/systemd/system")
    assert "/usr/lib/tmpfiles.d/retrace-server.conf" in files


def test_the_rpm_s_commands_run_from_its_own_files(built):
    files, unpacked = built
    python_path = check_layout(files, unpacked, "/etc/httpd/conf.d/retrace-server.conf", "/usr/lib/systemd/system")
    check_commands_run(unpacked, python_path)
