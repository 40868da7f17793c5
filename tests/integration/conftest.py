import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.cores import compile_crasher, crash
from tests.fixtures.distro import build_release
from tests.integration.server import Server, make_certificate, make_root, remove_root

RELEASE_ID = "fedora-41-x86_64"
CRASH_PACKAGE = "crasher-1.0-1.fc41"


@pytest.fixture(scope="session")
def work_dir():
    path = Path(tempfile.mkdtemp(prefix="retrace-fixtures-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def certificate(work_dir):
    return make_certificate(work_dir)


@pytest.fixture(scope="session")
def release_rpms(work_dir):
    """A real repository ``fedora-41-x86_64`` built by rpmbuild + createrepo_c."""
    staging = work_dir / "repos"
    return build_release(staging, RELEASE_ID, work_dir / "build")


@pytest.fixture(scope="session")
def problem_dir(work_dir):
    """An ABRT problem directory with a real core of the crasher."""
    build = work_dir / "crasher-build"
    build.mkdir()
    core = crash(compile_crasher(build), build)
    directory = work_dir / "problem"
    directory.mkdir()
    shutil.copy(core, directory / "coredump")
    (directory / "executable").write_text("/usr/bin/crasher")
    (directory / "package").write_text(CRASH_PACKAGE)
    (directory / "os_release").write_text("Fedora release 41 (Forty One)\n")
    (directory / "architecture").write_text("x86_64")
    (directory / "os_info").write_text('NAME="Fedora Linux"\nVERSION_ID=41\n')
    return directory


@pytest.fixture(scope="session")
def start_server(certificate, release_rpms):
    """Start a server with config overrides; all are stopped at the end of the session."""
    started = []

    def start(**settings):
        root = make_root()
        shutil.copytree(release_rpms, root / "repos" / RELEASE_ID)
        server = Server(root, *certificate, **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        if not os.environ.get("RETRACE_KEEP_TEST_ROOTS"):
            remove_root(server.root)


@pytest.fixture(scope="session")
def server(start_server):
    return start_server()
