"""retrace-client as a user on another machine installs it: ``pip install`` into a clean venv (no system
site-packages, nothing but what pip resolves from PyPI), then against the real server."""

import json
import shutil
import subprocess
from pathlib import Path

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
