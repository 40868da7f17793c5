"""debian/ built by the real dpkg-buildpackage (debhelper, pybuild) from the checkout
(tests/integration/distro_packages.py says what any package must hold)."""

import re
import subprocess

import pytest

from retrace import __version__
from tests.integration.distro_packages import ROOT, check_commands_run, check_layout, source_tree_tar

HTTPD_CONF = "/etc/apache2/conf-available/retrace-server.conf"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    top = tmp_path_factory.mktemp("dpkg-buildpackage")
    tree = top / "retrace-server"  # dpkg-buildpackage writes the .deb into the tree's parent
    tree.mkdir()
    subprocess.run(["tar", "-xf", str(source_tree_tar(top / "source.tar"))], cwd=tree, check=True)
    ran = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    package = top / f"retrace-server_{__version__}_all.deb"
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(package)], capture_output=True, check=True).stdout
    files = {name[1:].rstrip("/") for name in subprocess.run(["tar", "-t"], input=listing, capture_output=True,
                                                             check=True).stdout.decode().split()}
    unpacked = top / "unpacked"
    subprocess.run(["dpkg-deb", "-x", str(package), str(unpacked)], check=True)
    return files, unpacked


def test_the_changelog_s_version_is_the_code_s():
    assert re.match(r"retrace-server \(([^)]+)\)", (ROOT / "debian" / "changelog").read_text())[1] == __version__


def test_the_deb_holds_what_the_code_the_httpd_configuration_the_units_and_cron_name(built):
    files, unpacked = built
    check_layout(files, unpacked, HTTPD_CONF, "/lib/systemd/system")


def test_the_deb_s_commands_run_from_its_own_files(built):
    files, unpacked = built
    check_commands_run(unpacked, check_layout(files, unpacked, HTTPD_CONF, "/lib/systemd/system"))
