"""retrace-server.spec built by the real rpmbuild from the checkout; its files are the ones the code, the
httpd configuration and the units name, and what it installs runs."""

import re
import subprocess
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from retrace import __version__
from retrace.config import DEFAULT_CONFIG_PATH

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "retrace-server.spec"
COMMANDS = sorted(entry.name for entry in entry_points(group="console_scripts") if entry.name.startswith("retrace-"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    top = tmp_path_factory.mktemp("rpmbuild")
    (top / "SOURCES").mkdir()
    source = f"retrace-server-{__version__}"
    subprocess.run(["tar", "--transform", rf"s|^\.|{source}|", "--exclude=./.venv", "--exclude=./.git",
                    "--exclude=./test-artifacts", "--exclude=__pycache__", "--exclude=*.egg-info", "--exclude=./build",
                    "-czf", str(top / "SOURCES" / f"{source}.tar.gz"), "."], cwd=ROOT, check=True)
    # --nodeps: the BuildRequires name Fedora packages, which Debian's rpm database does not hold.
    ran = subprocess.run(["rpmbuild", "-ba", "--nodeps", "--define", f"_topdir {top}", str(SPEC)],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    package = next((top / "RPMS" / "noarch").glob(f"retrace-server-{__version__}-*.noarch.rpm"))
    files = subprocess.run(["rpm", "-qlp", str(package)], capture_output=True, text=True, check=True).stdout.split()
    unpacked = top / "unpacked"
    unpacked.mkdir()
    cpio = subprocess.Popen(["rpm2cpio", str(package)], stdout=subprocess.PIPE)
    subprocess.run(["cpio", "-idm", "--quiet"], stdin=cpio.stdout, cwd=unpacked, check=True)
    cpio.wait()
    assert list((top / "SRPMS").glob("*.src.rpm")), "rpmbuild -ba also makes the source package"
    return package, set(files), unpacked


def test_the_spec_s_version_is_the_code_s():
    assert re.search(r"^Version:\s+(\S+)$", SPEC.read_text(), re.M)[1] == __version__


def test_the_package_holds_what_the_code_and_the_httpd_configuration_open(built):
    _, files, unpacked = built
    httpd = (unpacked / "etc/httpd/conf.d/retrace-server.conf").read_text()
    wsgi_script = re.search(r"Define RETRACE_WSGI_SCRIPT (\S+)", httpd)[1]
    python_path = re.search(r"Define RETRACE_PYTHON_PATH (\S+)", httpd)[1]
    assert DEFAULT_CONFIG_PATH in files and wsgi_script in files
    assert f"{python_path}/retrace/config.py" in files and f"{python_path}/wsgi/app.py" in files
    assert {f"/usr/bin/{command}" for command in COMMANDS} <= files
    assert {"/etc/logrotate.d/retrace-server", "/etc/cron.d/retrace-server",
            "/usr/lib/tmpfiles.d/retrace-server.conf"} <= files
    for command in COMMANDS:
        section = 1 if command == "retrace-client" else 8
        assert any(name.startswith(f"/usr/share/man/man{section}/{command}.{section}") for name in files), command


def test_every_unit_starts_a_command_the_package_installs(built):
    _, files, _ = built
    for unit in sorted((ROOT / "config" / "systemd").glob("*.service")):
        program = re.search(r"^ExecStart=(\S+)", unit.read_text(), re.M)[1]
        assert f"/usr/lib/systemd/system/{unit.name}" in files
        assert program in files, f"{unit.name} starts {program}, which the package does not install"
    for cron_line in (ROOT / "config" / "retrace-server.cron").read_text().splitlines():
        if cron_line and not cron_line.startswith("#"):
            assert cron_line.split()[6] in files


def test_the_packaged_commands_run_from_the_package_s_own_files(built):
    _, _, unpacked = built
    site = next(unpacked.glob("usr/lib/python3*/site-packages"))
    for command in ("retrace-client", "retrace-server-worker"):
        ran = subprocess.run(["/usr/bin/python3",
                              str(unpacked / "usr/bin" / command), "--version"],
                             capture_output=True, text=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
        assert ran.returncode == 0 and ran.stdout == f"{command} {__version__}\n", ran.stderr
