"""Every installed command, as an admin meets it first."""

import subprocess
import sys
from pathlib import Path

import pytest

from retrace import __version__

COMMANDS = ("retrace-server-httpd", "retrace-server-worker", "retrace-server-interact", "retrace-server-dispatcher",
            "retrace-client", "retrace-server-reposync", "retrace-server-cleanup", "retrace-server-debuginfod")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_its_version(command):
    result = subprocess.run([str(Path(sys.executable).with_name(command)), "--version"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{command} {__version__}\n"


def test_every_installed_console_script_is_listed_here():
    """A command added to setup.py without --version (or without this list) fails here."""
    from importlib.metadata import entry_points

    installed = {entry.name for entry in entry_points(group="console_scripts") if entry.name.startswith("retrace-")}
    assert installed == set(COMMANDS)
