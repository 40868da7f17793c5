"""What a distribution package of retrace-server must hold, whatever builds it (rpmbuild, dpkg-buildpackage):
the files the code, the httpd configuration, the units and the cron file name, and commands that run from
the package's own files."""

import re
import subprocess
from pathlib import Path

from retrace_server import __version__, installed_commands
from retrace_server.config import DEFAULT_CONFIG_PATH, Config
from retrace_server.tasks.hooks import DEFAULT_HOOK_DIR

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(installed_commands())


def source_tree_tar(target, top_directory=None):
    """The checkout's files (no venv, git, caches or build output) as a tar at ``target``."""
    transform = ["--transform", rf"s|^\.|{top_directory}|"] if top_directory else []
    subprocess.run(["tar", *transform, "--exclude=./.venv", "--exclude=./.git", "--exclude=./test-artifacts",
                    "--exclude=__pycache__", "--exclude=*.egg-info", "--exclude=./build", "-caf", str(target), "."],
                   cwd=ROOT, check=True)
    return target


def check_layout(files, unpacked, httpd_conf, unit_dir):
    """``files``: the package's paths; ``unpacked``: its contents extracted; ``httpd_conf``: where it puts
    Apache's part; ``unit_dir``: where its systemd units go."""
    httpd = (unpacked / httpd_conf.lstrip("/")).read_text()
    wsgi_script = re.search(r"Define RETRACE_WSGI_SCRIPT (\S+)", httpd)[1]
    python_path = re.search(r"Define RETRACE_PYTHON_PATH (\S+)", httpd)[1]
    assert {DEFAULT_CONFIG_PATH, wsgi_script, httpd_conf} <= files
    assert {f"{python_path}/retrace_server/config.py", f"{python_path}/retrace_server/wsgi/app.py"} <= files, \
        "Apache's python-path"
    claimed = {name.split("/")[0] for name in (file[len(python_path) + 1:] for file in files
                                                if file.startswith(f"{python_path}/"))}
    assert {name for name in claimed if not name.startswith("retrace_server")} == set(), \
        "site-packages names only retrace_server"
    assert {f"/usr/bin/{command}" for command in COMMANDS} <= files
    assert {str(Config().HookConfig), str(DEFAULT_HOOK_DIR)} <= files, "upstream's hooks configuration and directory"
    assert {"/etc/logrotate.d/retrace-server", "/etc/cron.d/retrace-server"} <= files
    assert "/usr/share/retrace-server/retrace.conf" in files, "what retrace-server-httpd includes"
    assert {f"/usr/share/bash-completion/completions/{command}" for command in COMMANDS} <= files
    for command in COMMANDS:
        section = 1 if command == "retrace-client" else 8
        assert any(name.startswith(f"/usr/share/man/man{section}/{command}.{section}") for name in files), command
    for unit in sorted((ROOT / "config" / "systemd").glob("*.service")):
        program = re.search(r"^ExecStart=(\S+)", unit.read_text(), re.M)[1]
        assert f"{unit_dir}/{unit.name}" in files
        assert program in files, f"{unit.name} starts {program}, which the package does not install"
    for cron_line in (ROOT / "config" / "retrace-server.cron").read_text().splitlines():
        if cron_line and not cron_line.startswith("#"):
            assert re.search(r"\|\| (\S+)", cron_line)[1] in files
    return python_path


def check_commands_run(unpacked, python_path):
    """The client and the worker, run by the system Python from the package's own files."""
    for command in ("retrace-client", "retrace-server-worker"):
        ran = subprocess.run(["/usr/bin/python3", str(unpacked / "usr/bin" / command), "--version"],
                             capture_output=True, text=True,
                             env={"PYTHONPATH": str(unpacked / python_path.lstrip("/")), "PATH": "/usr/bin:/bin"})
        assert ran.returncode == 0 and ran.stdout == f"{command} {__version__}\n", ran.stderr
