"""retrace-client as a user on another machine installs it: ``pip install`` into a clean venv (no system
site-packages, nothing but what pip resolves from PyPI), and on Debian 11's Python 3.9, then against the real
server."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from testkit.debootstrap import fresh_debian, in_root

ROOT = Path(__file__).resolve().parents[2]


def test_pip_install_in_a_clean_venv_gives_a_client_that_works(server, tmp_path):
    source = tmp_path / "source"  # setuptools writes egg-info and build/ next to the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "test-artifacts", "__pycache__",
                                                                 ".pytest_cache", "*.egg-info", "build"))
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                                str(source)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    client = venv / "bin" / "retrace-client"
    settings = subprocess.run([str(client), "settings", "--uri", server.url, "--cafile", str(server.cert), "--json"],
                              capture_output=True, text=True, timeout=120)
    assert settings.returncode == 0, settings.stderr
    assert "fedora-41-x86_64" in json.loads(settings.stdout)["supported_releases"]
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format", "json"], capture_output=True, text=True,
                            check=True)
    names = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert "requests" in names and not names & {"webob", "python-magic", "celery"}, "the client pulls only its own"


@pytest.fixture(scope="module")
def bullseye(tmp_path_factory):
    """Debian 11, whose python3 is 3.9, the oldest Python the client claims (RHEL 9's), with venv and pip."""
    root = fresh_debian("bullseye", tmp_path_factory.mktemp("bullseye") / "root", include=["python3-venv"])
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_on_python_3_9_the_client_installs_passes_its_unit_tests_and_talks_to_the_server(server, bullseye):
    """pip 20.3 builds the checkout in a clean venv there (setuptools from PyPI: PEP 621 needs a newer one
    than Debian 11 has); the client's own unit tests run on 3.9 against the installed copy, and the client
    asks the real server."""
    shutil.copytree(ROOT, bullseye / "src", ignore=shutil.ignore_patterns(
        ".venv", ".git", "test-artifacts", "__pycache__", ".pytest_cache", "*.egg-info", "build"))
    shutil.copy(server.cert, bullseye / "server.crt")
    script = ("set -e; python3 --version; python3 -m venv /venv; "
              "/venv/bin/pip install --quiet --disable-pip-version-check /src pytest; cd /src; "
              "/venv/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_client.py tests/unit/test_apport.py; "
              f"/venv/bin/retrace-client settings --uri {server.url} --cafile /server.crt --json")
    ran = subprocess.run(in_root(bullseye, "sh", "-c", script, host_trust=True), capture_output=True, text=True,
                         timeout=900)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert ran.stdout.startswith("Python 3.9.")
    assert " passed" in ran.stdout and " failed" not in ran.stdout
    settings = json.loads(ran.stdout[ran.stdout.rindex("\n{") + 1:])
    assert "fedora-41-x86_64" in settings["supported_releases"]
