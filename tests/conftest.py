"""The suite tests the installed package, as Apache's daemons and the commands use it.

The checkout's folders are installed as ``retrace_server.*`` (pyproject.toml), so a test
imports what ``make install`` put into the venv; a checkout edited since then would be
tested by its old copy, which is refused here with the command that fixes it.
"""

import hashlib
import os
import sys
from pathlib import Path

import pytest

import retrace_server

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"retrace": "", "wsgi": "wsgi", "worker": "worker", "client": "client", "reposync": "reposync",
           "cleanup": "cleanup"}


def _digests(base, folders):
    return {(name, path.relative_to(base / inside)): hashlib.sha256(path.read_bytes()).digest()
            for name, inside in folders.items() for path in (base / inside).rglob("*.py")
            if "__pycache__" not in path.parts}


def pytest_sessionstart(session):
    installed = Path(retrace_server.__file__).resolve().parent
    if installed == ROOT / "retrace":  # an editable install (pip install -e .) is the checkout itself
        return
    checkout = _digests(ROOT, {name: name for name in FOLDERS})
    in_venv = _digests(installed, FOLDERS)
    # The library's own walk (inside="") also sees the services' folders: compare what the checkout has.
    in_venv = {key: digest for key, digest in in_venv.items() if key in checkout}
    if checkout != in_venv:
        changed = sorted(f"{name}/{path}" for name, path in set(checkout) ^ set(in_venv)
                         | {key for key in checkout if checkout[key] != in_venv.get(key)})
        pytest.exit(f"the installed retrace_server differs from the checkout ({', '.join(changed[:5])}"
                    f"{' ...' if len(changed) > 5 else ''}): run `make install` first", returncode=4)


def pytest_sessionfinish(session):
    """The checkout's folders are importable from the repository root under their folder names too;
    a test that reached one that way tested a copy Apache never runs."""
    reached = sorted(name for name in FOLDERS if name in sys.modules)
    if reached:
        session.config.get_terminal_writer().line(
            f"a test imported the checkout's {', '.join(reached)} instead of retrace_server.*", red=True)
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _umask_kept():
    """A command run in-process (the worker's, the dispatcher's ``main``) sets the service's umask (027) for
    the whole process; the next test would then make shared fixtures (the cached signing keys) that the
    service user cannot read."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)
