"""Every installed command, as an admin meets it first."""

import argparse
import dataclasses
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrace_server import __version__, installed_commands
from retrace_server.config import Config

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("retrace-server-httpd", "retrace-server-worker", "retrace-server-interact", "retrace-server-dispatcher",
            "retrace-client", "retrace-server-reposync", "retrace-server-cleanup", "retrace-server-debuginfod")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_its_version(command):
    result = subprocess.run([str(Path(sys.executable).with_name(command)), "--version"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{command} {__version__}\n"


MODULES = installed_commands()


def test_every_installed_console_script_is_listed_here():
    """A command added to pyproject.toml without --version (or without this list) fails here."""
    assert set(MODULES) == set(COMMANDS)


def test_every_command_has_a_man_page_made_from_its_parser_that_groff_renders_cleanly(tmp_path):
    made = subprocess.run([sys.executable, str(ROOT / "scripts" / "make-manpages"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    for command in COMMANDS:
        page = tmp_path / f"man{section(command)}" / f"{command}.{section(command)}"
        rendered = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True,
                                  text=True)
        assert rendered.returncode == 0 and rendered.stderr == "", f"{page.name}: {rendered.stderr}"
        text = page.read_text()
        parser = importlib.import_module(MODULES[command]).build_parser()
        for action in parser._actions:
            for option in action.option_strings:
                if action.help != argparse.SUPPRESS:
                    assert option.replace("-", "\\-") in text, f"{option} missing from {page.name}"
        for heading in ("EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"):
            assert f".SH {heading}\n" in text, f"{page.name} has no {heading}"
        assert ".SH EXAMPLES\n.PP\n.nf\n" + command.replace("-", "\\-") in text, f"{page.name}: no example of it"


def test_the_config_page_documents_every_key_with_its_default_from_the_shipped_files_comments(tmp_path):
    made = subprocess.run([sys.executable, str(ROOT / "scripts" / "make-manpages"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "SOURCE_DATE_EPOCH": "0"})
    assert made.returncode == 0, made.stderr
    page = tmp_path / "man5" / "retrace-server.conf.5"
    rendered = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    text = page.read_text()
    assert '"1970-01-01"' in text.splitlines()[0], "the date is SOURCE_DATE_EPOCH's (a reproducible build)"
    for field in dataclasses.fields(Config):
        if field.name[0].isupper():
            assert f".B {field.name}\n" in text, f"{field.name} is not in retrace-server.conf(5)"
    entry = text.split(".B MaxParallelTasks\n", 1)[1].split(".TP", 1)[0]
    assert entry == "Default: 5. Workers that retrace at the same time.\n", entry
    shipped = (ROOT / "config" / "retrace-server.conf").read_text()
    assert "GdbTimeout seconds" in shipped and "GdbTimeout seconds" in text.replace("\\-", "-")


def section(command):
    return 1 if command == "retrace-client" else 8


def completes(directory, command, *words):
    """What bash offers for the last of ``words`` typed after ``command``, with the generated completion."""
    script = (f"source {directory / command}; COMP_WORDS=({' '.join([command, *words])}); "
              f"COMP_CWORD={len(words)}; _{command.replace('-', '_')}; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()


def test_bash_completes_each_command_s_options_choices_and_paths_from_its_parser(tmp_path):
    made = subprocess.run([sys.executable, str(ROOT / "scripts" / "make-completions"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(COMMANDS)
    assert completes(tmp_path, "retrace-server-worker", "--ker") == ["--kernelver"]
    assert completes(tmp_path, "retrace-server-interact", "TASK", "s") == ["set-fail", "set-success", "shell"]
    assert completes(tmp_path, "retrace-client", "b") == ["backtrace", "batch"]
    (tmp_path / "problem-dir").mkdir()
    assert completes(tmp_path, "retrace-client", "batch", "--dir", str(tmp_path / "prob")) == [
        str(tmp_path / "problem-dir")]
    for command in COMMANDS:
        assert completes(tmp_path, command, "--vers") == ["--version"]


# Every command that reads the server's configuration, with what it needs besides.
CONFIGURED = {"retrace-server-worker": ["123456789"], "retrace-server-interact": ["123456789", "printdir"],
              "retrace-server-dispatcher": [], "retrace-server-reposync": ["--all"], "retrace-server-cleanup": [],
              "retrace-server-debuginfod": ["--socket", "/nonexistent/debuginfod.sock"],
              "retrace-server-httpd": ["--listen", "127.0.0.1:1"]}


@pytest.mark.parametrize("command", sorted(CONFIGURED))
def test_a_configuration_error_is_one_sentence_and_exit_status_2_from_every_command(command, tmp_path):
    config = tmp_path / "retrace-server.conf"
    config.write_text("[retrace]\nMaxParallelTasks = many\n")
    config.chmod(0o644)
    result = subprocess.run([str(Path(sys.executable).with_name(command)), "--config", str(config),
                             *CONFIGURED[command]], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"{config}, line 2: MaxParallelTasks must be a whole number, not 'many'" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
