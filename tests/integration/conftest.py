import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import types
from pathlib import Path

import pytest

from retrace_server import __version__
from testkit.cores import crash_installed, make_problem_dir
from testkit.debootstrap import fresh_debian, in_root
from testkit.distro import RELEASE_ID, build_rpms, publish_release
from testkit.helpers import abrt_archive, add_debian_repository, outcome, retrace
from testkit.loopback import FileServer, FtpDrop, MailSink, world_readable_dir
from testkit.server import Server, make_certificate, make_root, remove_root
from testkit.userland import build_userland_rpms
from testkit.vmcore import kernel_debs, make_vmcores, vmcore_upload
from tests.integration.distro_packages import ROOT, source_tree_tar
from tests.integration.manager_client import (
    DROP_PASSWORD,
    DROP_USER,
    ENGINEER,
    ENGINEER_PASSWORD,
    Engineer,
    manager_settings,
)


@pytest.fixture(scope="session")
def work_dir():
    path = Path(tempfile.mkdtemp(prefix="retrace-fixtures-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def certificate(work_dir):
    return make_certificate(work_dir)


@pytest.fixture(scope="session")
def fixture_rpms(work_dir):
    """crasher, libcrash and their -debuginfo, built by rpmbuild."""
    return build_rpms(work_dir / "build")


@pytest.fixture(scope="session")
def userland_rpms(work_dir):
    """filesystem, glibc, bash and gdb repackaged from this host (for dnf --installroot)."""
    return build_userland_rpms(work_dir / "userland")


@pytest.fixture(scope="session")
def chroot_release_dir(work_dir, fixture_rpms, userland_rpms):
    """``fedora-41-x86_64`` with the crash packages and a userland dnf can install gdb from."""
    return publish_release(work_dir / "repos-with-userland", RELEASE_ID, [*fixture_rpms, *userland_rpms])


@pytest.fixture(scope="session")
def release_dir(work_dir, fixture_rpms):
    """A real repository ``fedora-41-x86_64`` made by createrepo_c."""
    return publish_release(work_dir / "repos", RELEASE_ID, fixture_rpms)


@pytest.fixture(scope="session")
def problem_dir(work_dir, fixture_rpms):
    """The crasher's real core: SIGSEGV in libcrash called from main."""
    return make_problem_dir(work_dir / "problem", crash_installed(fixture_rpms, work_dir, "simple"))


@pytest.fixture(scope="session")
def threads_problem_dir(work_dir, fixture_rpms):
    """The crasher's real core: SIGSEGV in libcrash on a second thread, a third one idle."""
    return make_problem_dir(work_dir / "problem-threads", crash_installed(fixture_rpms, work_dir, "threads"))


class _Servers:
    """Every server the suite started, so that each is stopped when what started it ends: a test's at the
    end of the test, a module fixture's at the end of the module, a session fixture's at the end of the
    session (``lifetime`` says otherwise for a server started lazily, in a test, for the whole module or
    session).  Kept until the end, the suite's servers once held 11 GB of a 24 GB machine."""

    def __init__(self):
        self.started = []  # (server, lifetime: None for its starter's, "module" or "session")

    def mark(self):
        return len(self.started)

    def stop_since(self, mark, scope):
        ends = {"test": (None,), "module": (None, "module")}[scope]
        for server, lifetime in self.started[mark:]:
            if lifetime in ends:
                _stop(server)
        self.started[mark:] = [(server, lifetime) for server, lifetime in self.started[mark:] if lifetime not in ends]


def _stop(server):
    server.stop()
    if not os.environ.get("RETRACE_KEEP_TEST_ROOTS"):
        remove_root(server.root)


@pytest.fixture(scope="session")
def _servers():
    servers = _Servers()
    yield servers
    for server, _lifetime in servers.started:
        _stop(server)


@pytest.fixture(scope="module", autouse=True)
def _stop_the_module_s_servers(_servers):
    """Higher-scoped fixtures are set up first: a module fixture's server was started before this mark, and
    goes with the module."""
    mark = _servers.mark()
    yield
    _servers.stop_since(mark, "module")


@pytest.fixture(autouse=True)
def _stop_the_test_s_servers(_servers):
    mark = _servers.mark()
    yield
    _servers.stop_since(mark, "test")


@pytest.fixture(scope="session")
def start_server(certificate, release_dir, _servers):
    """Start a server with config overrides; it is stopped when the test or fixture that started it ends (or
    at the end of its ``lifetime``, "module" or "session").

    ``repository`` replaces the fixture release (a directory to copy as
    ``release_id``, by default ``fedora-41-x86_64``); False starts with no
    release at all.  ``kernels_from``: a kernel cache to start with (hard
    links), for vmcore tests whose subject is not extracting the vmlinux.
    """
    def start(repository=None, release_id=RELEASE_ID, kernels_from=None, lifetime=None, **settings):
        root = make_root()
        if repository is not False:
            shutil.copytree(repository or release_dir, root / "repos" / release_id)
        server = Server(root, *certificate, **settings)
        _servers.started.append((server, lifetime))
        if kernels_from is not None:
            subprocess.run(["cp", "-al", f"{kernels_from}/.", str(server.cache_dir / "kernel")], check=True)
        return server

    return start


@pytest.fixture(scope="session")
def server(start_server):
    return start_server(lifetime="session")


@pytest.fixture(scope="session")
def libc_problem_dir(work_dir, fixture_rpms):
    """The crasher's real core: SIGSEGV in libc's strcmp, called back from libc's qsort."""
    return make_problem_dir(work_dir / "problem-libc", crash_installed(fixture_rpms, work_dir, "libc"))


@pytest.fixture(scope="session")
def deep_problem_dir(work_dir, fixture_rpms):
    """The crasher's real core with 16 threads waiting 2000 frames deep: megabytes of gdb output."""
    return make_problem_dir(work_dir / "problem-deep", crash_installed(fixture_rpms, work_dir, "deep"))


@pytest.fixture
def admin():
    """``make(mirrors, **settings)``: an Admin with its own RepoDir and config; removed at the end."""
    from testkit.reposync_admin import Admin

    created = []

    def make(mirrors, **settings):
        created.append(Admin(mirrors, **settings))
        return created[-1]

    yield make
    for made in created:
        remove_root(made.root)


@pytest.fixture(scope="session")
def vmcores(work_dir):
    """Real vmcores of a Debian kernel panicked under QEMU (testkit/vmcore.py), made once."""
    return make_vmcores(work_dir / "vmcores")


@pytest.fixture(scope="session")
def warm_kernels(start_server, uploads):
    """A kernel cache holding the test kernel's vmlinux and module debuginfo, filled by a real retrace (about
    40 s of extraction from the 283 MiB -dbg package that each later server is spared)."""
    server = start_server(repository=False, lifetime="session")
    add_debian_repository(server, kernel_debs().dbg)
    _, status = retrace(server, uploads["kdump"])
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", outcome(status)
    return server.cache_dir / "kernel"


@pytest.fixture(scope="session")
def uploads(vmcores, work_dir):
    """One zstd-compressed tar per dump, each holding its dump as ``vmcore``."""
    return {kind: vmcore_upload(getattr(vmcores, kind), work_dir / "vmcore-uploads" / kind)
            for kind in ("elf", "elf_proc", "flattened", "kdump", "without_vmcoreinfo")}


@pytest.fixture(scope="session")
def users(work_dir):
    """The task manager's htpasswd file with bcrypt entries, as `htpasswd -B` makes them (manager_client's users)."""
    from tests.integration.manager_client import ENGINEER, ENGINEER_PASSWORD, READER, READER_PASSWORD

    path = work_dir / "manager-users"
    subprocess.run(["htpasswd", "-cbB", str(path), ENGINEER, ENGINEER_PASSWORD], check=True, capture_output=True)
    subprocess.run(["htpasswd", "-bB", str(path), READER, READER_PASSWORD], check=True, capture_output=True)
    path.chmod(0o644)
    return path


# -- the task manager's world: what customers hand over, and the servers it comes from ---------------


@pytest.fixture(scope="module")
def exports(work_dir, problem_dir):
    """The crash as customers hand it over: a problem-dir archive on a web server, in an import directory
    and on the FTP drop; a text file that is no core; a symlink out of the import directory."""
    root = world_readable_dir(tempfile.mkdtemp(prefix="manager-exports-", dir=work_dir))
    archive = abrt_archive(problem_dir)
    places = {name: world_readable_dir(root / name) for name in ("http", "import", "ftp", "outside")}
    for place in places.values():
        (place / "problem.tar.xz").write_bytes(archive)
        (place / "problem.tar.xz").chmod(0o644)
    (places["http"] / "notes.txt").write_text("the customer's notes, not a core\n")
    (places["import"] / "escape.tar.xz").symlink_to(places["outside"] / "problem.tar.xz")
    (places["ftp"] / "<b>odd.tar.xz").write_bytes(archive)
    return types.SimpleNamespace(root=root, md5=hashlib.md5(archive).hexdigest(), http=places["http"],
                                 import_=places["import"], ftp=places["ftp"], outside=places["outside"])


@pytest.fixture(scope="module")
def loopback(exports):
    """A real web server, FTP drop and mail server on loopback, over the `exports`."""
    servers = types.SimpleNamespace(http=FileServer(exports.http), ftp=FtpDrop(exports.ftp, DROP_USER, DROP_PASSWORD),
                                    mail=MailSink())
    yield servers
    servers.http.close()
    servers.ftp.close()
    servers.mail.close()


@pytest.fixture(scope="module")
def manager(start_server, users, exports, loopback):
    return start_server(**manager_settings(users, exports, loopback))


@pytest.fixture
def engineer(manager):
    return Engineer(manager, ENGINEER, ENGINEER_PASSWORD)


def _build_depends():
    """debian/control's Build-Depends as package names (no versions or alternatives: ours have none)."""
    control = (ROOT / "debian" / "control").read_text()
    field = re.search(r"^Build-Depends:(.*(?:\n .*)*)", control, re.M)[1]
    return [re.sub(r"\s*\(.*\)", "", entry).strip() for entry in field.replace("\n", " ").split(",") if entry.strip()]


@pytest.fixture(scope="session")
def debian_package(tmp_path_factory):
    """The .deb made by dpkg-buildpackage in a fresh bookworm that has only build-essential and the
    Build-Depends (a missing one fails the build there, as on a buildd)."""
    top = tmp_path_factory.mktemp("dpkg-buildpackage")
    root = fresh_debian("bookworm", top / "build-root")
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", "build-essential", *_build_depends()]):
        ran = subprocess.run(in_root(root, *argv), capture_output=True, text=True, timeout=1800)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    tree = root / "build" / "retrace-server"  # dpkg-buildpackage writes the .deb into the tree's parent
    tree.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(source_tree_tar(top / "source.tar"))], cwd=tree, check=True)
    ran = subprocess.run(in_root(root, "sh", "-c", "cd /build/retrace-server && dpkg-buildpackage -us -uc -b"),
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    package = top / f"retrace-server_{__version__}_all.deb"
    shutil.copy(root / "build" / package.name, package)
    shutil.rmtree(root, ignore_errors=True)
    return package
