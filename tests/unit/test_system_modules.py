"""Python modules only the distribution ships (rpm, librepo, seccomp, magic): every command starts, answers
--help and --version without them, and a command that needs one names the packages to install, exit 2."""

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest

from retrace_server.errors import SYSTEM_MODULES, MissingSystemModule, system_module

COMMANDS = sorted(entry.name for entry in entry_points(group="console_scripts")
                  if entry.value.startswith("retrace_server."))
# Run in a fresh interpreter in which the system modules cannot be imported, as after `pip install .[server]`
# in a venv without --system-site-packages.
WITHOUT_SYSTEM_MODULES = textwrap.dedent("""
    import importlib.abc, sys
    from importlib.metadata import entry_points

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {absent!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    command = sys.argv[1]
    main = next(e for e in entry_points(group="console_scripts") if e.name == command).load()
    sys.argv = [command, *sys.argv[2:]]
    sys.exit(main())
""").format(absent=set(SYSTEM_MODULES))


def without_system_modules(*argv):
    return subprocess.run([sys.executable, "-c", WITHOUT_SYSTEM_MODULES, *argv], capture_output=True, text=True,
                          timeout=60)


def test_every_command_is_installed():
    assert len(COMMANDS) == 8


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_work_without_the_distributions_modules(command, flag):
    ran = without_system_modules(command, flag)
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr
    assert command in ran.stdout


def test_a_missing_module_is_named_with_the_packages_that_ship_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "librepo", None)  # what `import librepo` meets when it is not installed
    with pytest.raises(MissingSystemModule) as raised:
        system_module("librepo")
    assert "'librepo' cannot be imported" in raised.value.sentence
    assert "Debian/Ubuntu: python3-librepo, Fedora/RHEL: python3-librepo" in raised.value.sentence
    assert "--system-site-packages" in raised.value.sentence
    assert raised.value.exit_code == 2


def test_seccomps_fedora_package_has_its_own_name(monkeypatch):
    monkeypatch.setitem(sys.modules, "seccomp", None)
    with pytest.raises(MissingSystemModule, match="Debian/Ubuntu: python3-seccomp, Fedora/RHEL: python3-libseccomp"):
        system_module("seccomp")


def test_reposync_that_needs_librepo_says_so_and_exits_2(tmp_path):
    for directory in ("repos", "cache", "log", "spool"):
        (tmp_path / directory).mkdir()
    config = tmp_path / "retrace-server.conf"
    config.write_text(f"[retrace]\nRepoDir = {tmp_path / 'repos'}\nCacheDir = {tmp_path / 'cache'}\n"
                      f"LogDir = {tmp_path / 'log'}\nSaveDir = {tmp_path / 'spool'}\nRequireGPGCheck = 0\n")
    ran = without_system_modules("retrace-server-reposync", "--config", str(config), "--user", "root", "fedora", "41",
                                 "x86_64")
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "Traceback" not in ran.stderr
    assert "'librepo' cannot be imported" in ran.stderr and "python3-librepo" in ran.stderr
