"""retrace-server.spec built by the real rpmbuild from the checkout (tests/integration/distro_packages.py says
what any package must hold)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retrace_server import __version__
from tests.integration.distro_packages import ROOT, check_commands_run, check_layout

SPEC = ROOT / "retrace-server.spec"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The RPM and source RPM rpmbuild -ba makes from `make dist`'s tarball, with the spec's %check (the unit
    suite against the installed tree) run by the suite's interpreter, which has everything the code imports."""
    top = tmp_path_factory.mktemp("rpmbuild")
    (top / "SOURCES").mkdir()
    name = f"retrace-server-{__version__}"
    made = subprocess.run(["make", "-s", "dist", f"VENV={Path(sys.executable).parents[1]}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    shutil.copy(ROOT / "dist" / f"{name}.tar.gz", top / "SOURCES")
    shutil.copy(ROOT / "config" / "retrace-server.sysusers", top / "SOURCES")
    # --nodeps: the BuildRequires name Fedora packages, which Debian's rpm database does not hold.
    # As Fedora's rpm: brp-compress run by bash (its /bin/sh; Debian's dash stops at the script's `read -d`),
    # and documentation in unversioned directories (/usr/share/doc/retrace-server, as the units name it).
    ran = subprocess.run(["rpmbuild", "-ba", "--nodeps", "--define", f"_topdir {top}", "--define",
                          f"__python3 {sys.executable}", "--define", "__brp_compress bash /usr/lib/rpm/brp-compress",
                          "--define", "_docdir_fmt %%{NAME}", str(SPEC)], capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert re.search(r"^\d+ passed", ran.stdout + ran.stderr, re.M), "%check ran the unit tests"
    assert list((top / "SRPMS").glob("*.src.rpm")), "rpmbuild -ba also makes the source package"
    package = next((top / "RPMS" / "noarch").glob(f"{name}-*.noarch.rpm"))
    files = subprocess.run(["rpm", "-qlp", str(package)], capture_output=True, text=True, check=True).stdout.split()
    unpacked = top / "unpacked"
    unpacked.mkdir()
    cpio = subprocess.Popen(["rpm2cpio", str(package)], stdout=subprocess.PIPE)
    subprocess.run(["cpio", "-idm", "--quiet"], stdin=cpio.stdout, cwd=unpacked, check=True)
    cpio.wait()
    return set(files), unpacked


def test_rpmlint_finds_nothing_but_what_the_rpmlintrc_explains(built):
    """rpmlint on the spec, the RPM and the source RPM; the accepted findings and why are in one place,
    retrace-server.rpmlintrc (retrace-server.rpmlint.toml sets what Fedora's configuration sets)."""
    top = built[1].parent
    packages = [*(top / "RPMS" / "noarch").glob("*.rpm"), *(top / "SRPMS").glob("*.rpm")]
    ran = subprocess.run(["rpmlint", "--config", str(ROOT / "retrace-server.rpmlint.toml"),
                          "--rpmlintrc", str(ROOT / "retrace-server.rpmlintrc"), str(SPEC),
                          *map(str, packages)], capture_output=True, text=True, timeout=600)
    findings = [line for line in ran.stdout.splitlines() if re.search(r": [EW]: ", line)]
    assert findings == [], "\n".join(findings)
    rules = (ROOT / "retrace-server.rpmlintrc").read_text().splitlines()
    for number, line in enumerate(rules):
        if line.startswith("addFilter"):
            above = next(previous for previous in reversed(rules[:number]) if not previous.startswith("addFilter"))
            assert above.startswith("#"), f"{line}: say why above it"


def test_the_rpm_creates_its_users_and_enables_nothing_by_itself(built):
    files, unpacked = built
    package = next((unpacked.parent / "RPMS" / "noarch").glob("*.noarch.rpm"))
    scripts = subprocess.run(["rpm", "-qp", "--scripts", str(package)], capture_output=True, text=True,
                             check=True).stdout
    assert "useradd -r -u 174 -g retrace" in scripts or "sysusers" in scripts
    assert "/usr/lib/sysusers.d/retrace-server.conf" in files
    sysusers = (unpacked / "usr/lib/sysusers.d/retrace-server.conf").read_text()
    assert 'u retrace 174 "Retrace server" /var/spool/retrace-server /sbin/nologin' in sysusers
    assert "/usr/share/licenses/retrace-server/LICENSE" in files
    for unit in sorted((unpacked / "usr/lib/systemd/system").glob("*.service")):
        for link in re.search(r"^Documentation=(.*)$", unit.read_text(), re.M)[1].split():
            if link.startswith("file://"):
                assert link.removeprefix("file://") in files, f"{unit.name}: {link} is not in the package"


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
